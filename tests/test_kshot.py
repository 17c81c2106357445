"""k-shot sweeps: kshot@k columns at extraction, few-shot GLA with temperatures in analysis.

References: temperatures by scipy's brentq on mean max-softmax = accuracy; logits of a
head on the frozen tower by plain open_clip; GLA composed by hand.
"""

from __future__ import annotations

import numpy as np
import pytest
from fixtures_tiny_clip import tiny_clip_fixture  # noqa: F401
from gla.analyze import kshot
from gla.analyze.priors import estimate_pretrain_prior
from gla.pipeline import publication
from scipy.optimize import brentq
from scipy.special import softmax


def _temperature(z, y):
    acc = np.mean(z.argmax(1) == y)
    return float(np.exp(brentq(lambda lt: softmax(z / np.exp(lt), axis=1).max(1).mean() - acc,
                               np.log(1e-3), np.log(1e3), xtol=1e-12)))


def _world(rng, n, c, scale):
    y = np.arange(n) % c
    z = rng.normal(size=(n, c)) * scale
    z[np.arange(n), y] += 2.0 * scale
    return y, z.astype(np.float32)


def test_few_shot_gla_matches_a_hand_computation():
    rng = np.random.default_rng(0)
    c = 5
    y_fit, zs_fit = _world(rng, 100, c, 3.0)
    zs_fit += np.log(np.array([0.5, 0.2, 0.15, 0.1, 0.05]), dtype=np.float32) * 3
    fts = {k: _world(rng, 100, c, 0.3 * k)[1] for k in (1, 4)}
    y_ev, zs_ev = _world(rng, 400, c, 3.0)
    ft_ev = {k: _world(rng, 400, c, 0.3 * k)[1] for k in (1, 4)}
    fit = kshot.fit_kshot(zs_fit, y_fit, fts)
    assert fit.t_zs == pytest.approx(_temperature(zs_fit, y_fit), rel=1e-6)
    for k in fts:
        assert fit.t_ft[k] == pytest.approx(_temperature(fts[k], y_fit), rel=1e-6)
    tallies = kshot.evaluate_kshot([(zs_ev[:150], {k: v[:150] for k, v in ft_ev.items()}, y_ev[:150]),
                                    (zs_ev[150:], {k: v[150:] for k, v in ft_ev.items()}, y_ev[150:])], fit)
    table = kshot.kshot_table("m", "d", "test", fit, tallies)
    assert table.height == 2 * 6 and sorted(set(table["shots"])) == [1, 4]
    pi_p = estimate_pretrain_prior(zs_fit, y_fit, "gla", temperature=_temperature(zs_fit, y_fit)).prior
    for k in (1, 4):
        g = zs_ev / _temperature(zs_fit, y_fit) + ft_ev[k] / _temperature(fts[k], y_fit) \
            - np.log(1.0 / c) - np.log(pi_p)
        want = float(np.mean(g.argmax(1) == y_ev))
        got = table.filter((table["shots"] == k) & (table["method"] == "gla"))["accuracy"].item()
        assert got == pytest.approx(want, abs=1e-12)
        ft_acc = table.filter((table["shots"] == k) & (table["method"] == "ft"))["accuracy"].item()
        assert ft_acc == pytest.approx(float(np.mean(ft_ev[k].argmax(1) == y_ev)))
    assert kshot.shots_of("kshot@16") == 16 and kshot.shots_of("wiseft@0.5") is None


@pytest.mark.torch
def test_kshot_columns_and_table_from_images(tiny_clip, tmp_path):
    pytest.importorskip("open_clip")
    import open_clip
    import polars as pl
    import pyarrow.parquet as pq
    import torch
    from gla.extract import cellformat as cf
    from gla.extract.run import extract_cell
    from gla.pipeline.analysis import analyze_store
    from PIL import Image
    from safetensors.torch import load_file, save_file

    tc = tiny_clip
    pre = load_file(str(tc.checkpoint))
    torch.manual_seed(5)
    w, b = torch.randn(3, 32), torch.randn(3)
    head_only = tmp_path / "k1.safetensors"  # the pretrained tower + a new head
    save_file({**{k: v.contiguous() for k, v in pre.items() if k.startswith("visual.")},
               "head.weight": w, "head.bias": b}, str(head_only),
              metadata={"format": "gla-ft/1", "arch": tc.arch, "num_classes": "3", "normalize": "true"})
    spec = tc.model_spec(finetuned={"imgs": str(tc.finetuned)},
                         kshot={"imgs": {1: str(head_only), 2: str(tc.finetuned)}})
    ds = {"name": "imgs", "kind": "imagefolder", "root": str(tc.images),
          "splits": {"val": {"per_class": 2}, "test": {"rest": True}}}
    extract_cell(tmp_path / "s", spec, ds, {"batch_size": 4, "num_workers": 0, "shard_rows": 5}, progress=False)
    cell = cf.cell_dir(tmp_path / "s", "tiny", "imgs")
    parts = [pq.read_table(cell / p["file"]) for p in cf.read_manifest(cell, "test")["parts"]]

    def col(name):
        return np.concatenate([np.asarray(t.column(name).combine_chunks().flatten()).reshape(t.num_rows, -1)
                               for t in parts])

    ids = sum((t.column("sample_id").to_pylist() for t in parts), [])
    open_clip.add_model_config(tc.config)
    model, _, preprocess = open_clip.create_model_and_transforms(tc.arch, pretrained=str(tc.checkpoint))
    model.eval()
    with torch.no_grad():
        x = torch.stack([preprocess(Image.open(tc.images / i).convert("RGB")) for i in ids])
        ref = (torch.nn.functional.normalize(model.encode_image(x), dim=-1) @ w.T + b).numpy()
    np.testing.assert_allclose(col("kshot@1"), ref, atol=1e-4, rtol=0)
    np.testing.assert_allclose(col("kshot@2"), col("ft"), atol=1e-5, rtol=0)
    assert cf.table_metadata(parts[0].schema)["kshot"].keys() == {"1", "2"}

    analyze_store(tmp_path / "s")
    k = publication.read_table(tmp_path / "s", "kshot")
    assert sorted(set(k["shots"])) == [1, 2] and k.height == 12
    assert (k["temperature_zs"] > 0).all() and (k["temperature_ft"] > 0).all()
    acc_ft1 = k.filter((pl.col("shots") == 1) & (pl.col("method") == "ft"))["accuracy"].item()
    labels = np.concatenate([t.column("label").to_numpy() for t in parts])
    assert acc_ft1 == pytest.approx(float(np.mean(ref.argmax(1) == labels)))


