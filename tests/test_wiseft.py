"""WiSE-FT as a model variant: wiseft@α logits are extra columns of the same cell.

The references are independent: the pretrained and fine-tuned weights are read back from
their files and mixed by hand, the zero-shot head comes from open_clip's own
``build_zero_shot_classifier``, and the mixed model is plain open_clip.
"""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

pytest.importorskip("open_clip")
pytestmark = pytest.mark.torch

from fixtures_tiny_clip import CLASSES, tiny_clip_fixture  # noqa: E402, F401
from gla.extract import cellformat as cf  # noqa: E402
from gla.extract.errors import ExtractError  # noqa: E402
from gla.extract.run import extract_cell  # noqa: E402

OPTS = {"batch_size": 4, "num_workers": 0, "shard_rows": 5}


def _dataset(tc):
    return {"name": "imgs", "kind": "imagefolder", "root": str(tc.images),
            "splits": {"val": {"per_class": 1}, "test": {"rest": True}}}


def _column(cell, split, col):
    m = cf.read_manifest(cell, split)
    parts = [pq.read_table(cell / p["file"]) for p in m["parts"]]
    ids = sum((t.column("sample_id").to_pylist() for t in parts), [])
    x = np.concatenate([np.asarray(t.column(col).combine_chunks().flatten()).reshape(t.num_rows, -1)
                        for t in parts])
    return ids, x


def _brute_force(tc, ids, alpha):
    """Logits of θ = (1 − α)·θ_zs + α·θ_ft built from the raw files, in plain open_clip."""
    import open_clip
    import torch
    from open_clip.zero_shot_classifier import build_zero_shot_classifier
    from PIL import Image
    from safetensors.torch import load_file

    open_clip.add_model_config(tc.config)
    model, _, preprocess = open_clip.create_model_and_transforms(tc.arch, pretrained=str(tc.checkpoint))
    model.eval()
    pre, ft = load_file(str(tc.checkpoint)), load_file(str(tc.finetuned))
    mixed = {k[len("visual."):]: (1 - alpha) * pre[k] + alpha * ft[k] for k in pre if k.startswith("visual.")}
    model.visual.load_state_dict(mixed)
    with torch.no_grad():
        text = build_zero_shot_classifier(model, open_clip.get_tokenizer(tc.arch), CLASSES,
                                          ["a photo of a {}."], num_classes_per_batch=3)
        w = (1 - alpha) * model.logit_scale.exp() * text.T + alpha * ft["head.weight"]
        b = alpha * ft["head.bias"]
        x = torch.stack([preprocess(Image.open(tc.images / i).convert("RGB")) for i in ids])
        f = torch.nn.functional.normalize(model.visual(x), dim=-1)
        return (f @ w.T + b).numpy()


def test_wiseft_columns_interpolate_between_zs_and_ft(tiny_clip, tmp_path):
    tc = tiny_clip
    spec = tc.model_spec(finetuned={"imgs": str(tc.finetuned)}, wiseft_alphas=[0.5, 0, 1])
    info = extract_cell(tmp_path / "s", spec, _dataset(tc), OPTS, progress=False)
    assert info["status"] == "written"
    cell = cf.cell_dir(tmp_path / "s", "tiny", "imgs")
    ids, zs = _column(cell, "test", "zs")
    _, ft = _column(cell, "test", "ft")
    _, w0 = _column(cell, "test", "wiseft@0")
    _, w1 = _column(cell, "test", "wiseft@1")
    _, w5 = _column(cell, "test", "wiseft@0.5")
    np.testing.assert_allclose(w0, zs, atol=1e-4, rtol=0)
    np.testing.assert_allclose(w1, ft, atol=1e-4, rtol=0)
    np.testing.assert_allclose(w5, _brute_force(tc, ids, 0.5), atol=1e-4, rtol=0)
    assert not np.allclose(w5, zs, atol=1e-2) and not np.allclose(w5, ft, atol=1e-2)
    meta = cf.table_metadata(pq.read_schema(cell / cf.read_manifest(cell, "test")["parts"][0]["file"]))
    assert meta["extra_logits"] == ["wiseft@0", "wiseft@0.5", "wiseft@1"]
    assert meta["wiseft_alphas"] == [0.0, 0.5, 1.0]

    # the same cell without α keeps its old key (no column, no re-extraction elsewhere)
    plain = extract_cell(tmp_path / "p", tc.model_spec(finetuned={"imgs": str(tc.finetuned)}),
                         _dataset(tc), OPTS, progress=False)
    assert plain["cell_key"] != info["cell_key"]
    pcell = cf.cell_dir(tmp_path / "p", "tiny", "imgs")
    schema = pq.read_schema(pcell / cf.read_manifest(pcell, "test")["parts"][0]["file"])
    assert cf.extra_logit_columns(schema) == [] and "extra_logits" not in cf.table_metadata(schema)


def test_wiseft_rows_in_summary(tiny_clip, tmp_path):
    from gla.pipeline.analysis import analyze_store
    from gla.pipeline.cell_analysis import StoreAnalysisOptions

    tc = tiny_clip
    spec = tc.model_spec(finetuned={"imgs": str(tc.finetuned)}, wiseft_alphas=[0, 1])
    extract_cell(tmp_path / "s", spec, _dataset(tc), OPTS, progress=False)
    res = analyze_store(tmp_path / "s", StoreAnalysisOptions(), compute=None)
    summary = res[0].summary
    rows = {r["method"]: r for r in summary.iter_rows(named=True)}
    assert {"zs", "ft", "gla", "wiseft@0", "wiseft@1"} <= set(rows)
    # wiseft@0 is the zero-shot model, wiseft@1 the fine-tuned one
    assert rows["wiseft@0"]["accuracy"] == pytest.approx(rows["zs"]["accuracy"])
    assert rows["wiseft@1"]["accuracy"] == pytest.approx(rows["ft"]["accuracy"])
    assert rows["wiseft@0"]["nll"] == pytest.approx(rows["zs"]["nll"], rel=1e-4)


def test_wiseft_needs_normalised_head_and_alpha_in_range(tiny_clip):
    import torch
    from gla.extract.finetuned import load_finetuned, wiseft_model
    from gla.extract.models import load_model

    loaded = load_model(tiny_clip.model_spec(), device="cpu")
    ft, _ = load_finetuned(tiny_clip.finetuned, loaded.model, loaded.arch, len(CLASSES))
    w = torch.zeros(len(CLASSES), 32)
    with pytest.raises(ExtractError, match=r"outside \[0, 1\]"):
        wiseft_model(ft, loaded.model, w, 0.0, 1.5)
    ft.normalize = False
    with pytest.raises(ExtractError, match="unnormalised"):
        wiseft_model(ft, loaded.model, w, 0.0, 0.5)


def test_config_refuses_alpha_out_of_range(tmp_path):
    from gla.pipeline.config import load_config
    from gla.pipeline.errors import UserError

    cfg = tmp_path / "c.toml"
    cfg.write_text('store = "s"\n[[models]]\nname = "m"\narch = "a"\npretrained = "none"\nwiseft_alphas = [0.5, 2.0]\n')
    with pytest.raises(UserError, match=r"wiseft_alphas.*\[0, 1\]"):
        load_config(cfg)
