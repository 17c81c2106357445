"""Extraction stage: logits equal direct open_clip computations; determinism and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("open_clip")
pytestmark = pytest.mark.torch

from fixtures_tiny_clip import CLASSES, make_images, make_webdataset, tiny_clip_fixture  # noqa: E402, F401
from gla.extract import cellformat as cf  # noqa: E402
from gla.extract.errors import ExtractError  # noqa: E402
from gla.extract.run import extract_cell, generation  # noqa: E402

OPTS = {"batch_size": 4, "num_workers": 0, "shard_rows": 5, "image_embeddings": True}


def folder_ds(root, name="imgs", **kw):
    spec = {"name": name, "kind": "imagefolder", "root": str(root), "splits": {}}
    spec.update(kw)
    return spec


def read_cell(store, model="tiny", dataset="imgs") -> dict[str, pa.Table]:
    cell = cf.cell_dir(store, model, dataset)
    out = {}
    for s in cf.sealed_splits(cell):
        m = cf.read_manifest(cell, s)
        out[s] = pa.concat_tables([pq.read_table(cell / p["file"]) for p in m["parts"]])
    return out


def current_part(cell, split: str, index: int):
    """Part ``index`` of a split's current generation (named by the cell record's key)."""
    gen = generation(cf.read_cell_record(cell)["cell_key"])
    return cell / cf.part_name(split, index, gen)


def snapshot(folder) -> dict[str, str]:
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def arr(table: pa.Table, col: str) -> np.ndarray:
    return np.asarray(table.column(col).combine_chunks().flatten()).reshape(table.num_rows, -1)


def direct_reference(tc, image_paths, class_names, templates=("a photo of a {}.",)):
    """zs via plain open_clip calls (independent of extract's code paths)."""
    import open_clip
    import torch
    from open_clip.zero_shot_classifier import build_zero_shot_classifier
    from PIL import Image

    open_clip.add_model_config(tc.config)
    model, _, preprocess = open_clip.create_model_and_transforms(tc.arch, pretrained=str(tc.checkpoint))
    model.eval()
    tok = open_clip.get_tokenizer(tc.arch)
    with torch.no_grad():
        w = build_zero_shot_classifier(model, tok, class_names, list(templates), num_classes_per_batch=2)
        x = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in image_paths])
        f = model.encode_image(x, normalize=True)
        return (model.logit_scale.exp() * f @ w).numpy(), x


def test_zs_and_ft_match_direct_open_clip(tiny_clip, tmp_path):
    tc = tiny_clip
    spec = tc.model_spec(finetuned={"imgs": str(tc.finetuned)})
    info = extract_cell(tmp_path / "s", spec, folder_ds(tc.images), OPTS, progress=False)
    assert info["status"] == "written" and info["images"] == 12
    t = read_cell(tmp_path / "s")["test"]
    ids = t.column("sample_id").to_pylist()
    assert ids == sorted(ids)  # dataset order = class folder, then file name
    assert t.column("label").to_pylist() == [i // 4 for i in range(12)]
    ref, x = direct_reference(tc, [tc.images / i for i in ids], CLASSES)
    np.testing.assert_allclose(arr(t, "zs"), ref, atol=1e-4, rtol=0)

    import open_clip
    import torch
    from safetensors.torch import load_file

    sd = load_file(str(tc.finetuned))
    m = open_clip.create_model(tc.arch)
    m.visual.load_state_dict({k[7:]: v for k, v in sd.items() if k.startswith("visual.")})
    m.eval()
    with torch.no_grad():
        f = torch.nn.functional.normalize(m.visual(x), dim=-1)
        ft_ref = (f @ sd["head.weight"].T + sd["head.bias"]).numpy()
    np.testing.assert_allclose(arr(t, "ft"), ft_ref, atol=1e-4, rtol=0)
    meta = cf.table_metadata(t.schema)
    assert meta["class_names"] == CLASSES
    assert meta["model"]["checkpoint_sha256"] == cf.file_sha256(tc.checkpoint)
    assert meta["finetuned"]["layout"] == "gla-ft/1"
    emb = arr(t, "image_emb")
    assert emb.dtype == np.float16 and emb.shape == (12, 32)
    np.testing.assert_allclose(np.linalg.norm(emb.astype(np.float32), axis=1), 1, atol=2e-3)

    # WiSE-FT layout of the same weights gives the same ft logits
    spec_w = tc.model_spec(finetuned={"imgs": str(tc.wise_ft)})
    extract_cell(tmp_path / "w", spec_w, folder_ds(tc.images), OPTS, progress=False)
    tw = read_cell(tmp_path / "w")["test"]
    np.testing.assert_array_equal(arr(tw, "ft"), arr(t, "ft"))
    assert cf.table_metadata(tw.schema)["finetuned"]["layout"] == "wise-ft"


def test_openai_templates_head_matches_open_clip(tiny_clip):
    import open_clip
    import torch
    from gla.extract.models import load_model
    from gla.extract.templates import load_templates
    from gla.extract.zeroshot import compute_head
    from open_clip.zero_shot_classifier import build_zero_shot_classifier

    templates = load_templates("openai-imagenet")
    assert len(templates) == 80 and templates[0] == "a bad photo of a {}."
    loaded = load_model(tiny_clip.model_spec(), device="cpu")
    head = compute_head(loaded, CLASSES, templates)
    with torch.no_grad():
        ref = build_zero_shot_classifier(loaded.model, loaded.tokenizer, CLASSES,
                                         open_clip.OPENAI_IMAGENET_TEMPLATES, num_classes_per_batch=1)
    np.testing.assert_allclose(head, ref.T.numpy(), atol=1e-5)


def test_two_runs_identical_and_complete_cell_skipped(tiny_clip, tmp_path):
    tc = tiny_clip
    ds = folder_ds(tc.images, splits={"val": {"per_class": 1}, "test": {"rest": True}})
    spec = tc.model_spec(finetuned={"imgs": str(tc.finetuned)})
    a = extract_cell(tmp_path / "a", spec, ds, {**OPTS, "num_workers": 1}, progress=True)
    b = extract_cell(tmp_path / "b", spec, ds, OPTS, progress=False)
    assert a["status"] == b["status"] == "written"
    ta, tb = read_cell(tmp_path / "a"), read_cell(tmp_path / "b")
    assert set(ta) == {"val", "test"} and ta["val"].num_rows == 3 and ta["test"].num_rows == 9
    for s in ta:
        assert ta[s].equals(tb[s], check_metadata=True)
    again = extract_cell(tmp_path / "a", spec, ds, OPTS, progress=False)
    assert again["status"] == "skipped"
    # new templates make the cell stale: zs is re-derived from the stored image
    # embeddings (no image encoded), matching a fresh extraction up to float16 rounding
    tfile = tmp_path / "t.txt"
    tfile.write_text("# two\na photo of a {}.\na drawing of a {}.\n")
    new_spec = {**spec, "templates": str(tfile)}
    redo = extract_cell(tmp_path / "a", new_spec, ds, OPTS, progress=False)
    assert redo["status"] == "rezeroed" and redo["images"] == 0 and redo["rows"] == 12
    fresh = extract_cell(tmp_path / "c", new_spec, ds, OPTS, progress=False)
    assert fresh["status"] == "written" and fresh["cell_key"] == redo["cell_key"]
    assert extract_cell(tmp_path / "a", new_spec, ds, OPTS, progress=False)["status"] == "skipped"
    ta, tc_ = read_cell(tmp_path / "a"), read_cell(tmp_path / "c")
    for s in ta:
        za = np.asarray(ta[s].column("zs").combine_chunks().flatten())
        zc = np.asarray(tc_[s].column("zs").combine_chunks().flatten())
        assert not np.allclose(za, np.asarray(tb[s].column("zs").combine_chunks().flatten()))
        np.testing.assert_allclose(za, zc, atol=0.05)
        assert ta[s].column("ft").equals(tc_[s].column("ft"))


def test_resume_after_deleting_parts_gives_identical_table(tiny_clip, tmp_path):
    tc = tiny_clip
    spec = tc.model_spec()
    extract_cell(tmp_path / "s", spec, folder_ds(tc.images), OPTS, progress=False)
    before = read_cell(tmp_path / "s")["test"]
    cell = cf.cell_dir(tmp_path / "s", "tiny", "imgs")
    current_part(cell, "test", 2).unlink()  # damaged parts of a sealed cell are rebuilt
    current_part(cell, "test", 1).unlink()
    info = extract_cell(tmp_path / "s", spec, folder_ds(tc.images), OPTS, progress=False)
    assert info["parts_written"] == 2 and info["images"] == 7
    assert read_cell(tmp_path / "s")["test"].equals(before, check_metadata=True)


KILL_SCRIPT = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from gla.extract import cellformat as cf
import gla.extract.run as run
real = cf.write_part
count = [0]
def write_then_die(*a, **k):
    out = real(*a, **k)
    count[0] += 1
    if count[0] == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return out
cf.write_part = write_then_die
run.extract_cell({store!r}, {spec!r}, {ds!r}, {opts!r}, progress=False)
"""


def test_sigkill_mid_run_then_resume_is_identical(tiny_clip, tmp_path):
    tc = tiny_clip
    spec, ds = tc.model_spec(finetuned={"imgs": str(tc.finetuned)}), folder_ds(tc.images)
    opts = {**OPTS, "shard_rows": 3, "num_workers": 1}
    script = KILL_SCRIPT.format(tests=str(Path(__file__).parent), store=str(tmp_path / "k"),
                                spec=spec, ds=ds, opts=opts)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    cell = cf.cell_dir(tmp_path / "k", "tiny", "imgs")
    assert cf.read_manifest(cell, "test") is None  # never half-sealed
    assert len(list(cell.glob("part-test.*.parquet"))) == 2
    info = extract_cell(tmp_path / "k", spec, ds, opts, progress=False)
    assert info["parts_written"] == 2  # 4 parts of 3 rows; 2 survived the kill
    extract_cell(tmp_path / "u", spec, ds, opts, progress=False)
    assert read_cell(tmp_path / "k")["test"].equals(read_cell(tmp_path / "u")["test"], check_metadata=True)
    assert not list(cell.glob(".*.tmp"))


def test_shards_together_equal_one_run(tiny_clip, tmp_path):
    tc = tiny_clip
    spec = tc.model_spec(finetuned={"imgs": str(tc.finetuned)})
    ds = folder_ds(tc.images, splits={"val": {"per_class": 2}, "test": {"rest": True}})
    opts = {**OPTS, "shard_rows": 2}
    first = extract_cell(tmp_path / "sh", spec, ds, opts, shard=(0, 2), progress=False)
    assert first["status"] == "partial" and first["sealed"] == []
    second = extract_cell(tmp_path / "sh", spec, ds, opts, shard=(1, 2), progress=False)
    assert second["status"] == "written" and set(second["sealed"]) == {"val", "test"}
    assert first["images"] + second["images"] == 12
    extract_cell(tmp_path / "one", spec, ds, opts, progress=False)
    a, b = read_cell(tmp_path / "sh"), read_cell(tmp_path / "one")
    for s in ("val", "test"):
        assert a[s].equals(b[s], check_metadata=True)
    with pytest.raises(ExtractError, match="shard"):
        extract_cell(tmp_path / "sh", spec, ds, opts, shard=(2, 2), progress=False)


def test_corrupt_and_missing_images_raise_or_skip(tiny_clip, tmp_path):
    tc = tiny_clip
    root = make_images(tmp_path / "imgs", per_class=2)
    bad = root / "dog" / "001.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(ExtractError, match=r"dog/001\.png: cannot read image"):
        extract_cell(tmp_path / "s", tc.model_spec(), folder_ds(root), OPTS, progress=False)
    cell = cf.cell_dir(tmp_path / "s", "tiny", "imgs")
    assert cf.sealed_splits(cell) == []
    info = extract_cell(tmp_path / "s", tc.model_spec(), folder_ds(root), {**OPTS, "on_error": "skip"},
                        progress=False)
    assert info["status"] == "written" and info["skipped_images"] == 1
    t = read_cell(tmp_path / "s")["test"]
    assert "dog/001.png" not in t.column("sample_id").to_pylist() and t.num_rows == 5
    skipped_file = cf.read_manifest(cell, "test")["skipped_file"]
    skipped = json.loads((cell / skipped_file).read_text())["skipped"]
    assert [s["sample_id"] for s in skipped] == ["dog/001.png"]
    assert "cannot read image" in skipped[0]["error"]
    assert not list(cell.glob(".skipped-*"))

    # a manifest naming a file that does not exist
    man = tmp_path / "m.csv"
    man.write_text("path,label\nimgs/cat/000.png,cat\nimgs/cat/nope.png,cat\n")
    with pytest.raises(ExtractError, match=r"nope\.png: cannot read image: file not found"):
        extract_cell(tmp_path / "s2", tc.model_spec(),
                     {"name": "m", "kind": "manifest", "root": str(man), "class_names": ["cat", "dog"]},
                     OPTS, progress=False)


def test_bad_config_inputs_are_clear(tiny_clip, tmp_path):
    tc = tiny_clip
    with pytest.raises(ExtractError, match="class_names has 2 names but the dataset has 3 classes"):
        extract_cell(tmp_path / "s", tc.model_spec(), folder_ds(tc.images, class_names=["a", "b"]),
                     OPTS, progress=False)
    with pytest.raises(ExtractError, match="not found"):
        extract_cell(tmp_path / "s", tc.model_spec(pretrained=str(tmp_path / "none.safetensors")),
                     folder_ds(tc.images), OPTS, progress=False)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(ExtractError, match=r"cannot load .*junk\.safetensors"):
        extract_cell(tmp_path / "s", tc.model_spec(pretrained=str(junk)), folder_ds(tc.images), OPTS,
                     progress=False)
    # a checkpoint of another architecture
    from safetensors.torch import load_file, save_file

    sd = load_file(str(tc.checkpoint))
    sd["visual.proj"] = sd["visual.proj"][:, :16].contiguous()
    other = tmp_path / "other.safetensors"
    save_file(sd, str(other))
    with pytest.raises(ExtractError, match=r"cannot load .*other\.safetensors.*size mismatch for visual\.proj"):
        extract_cell(tmp_path / "s", tc.model_spec(pretrained=str(other)), folder_ds(tc.images), OPTS,
                     progress=False)
    with pytest.raises(ExtractError, match="not an open_clip architecture"):
        extract_cell(tmp_path / "s", {**tc.model_spec(model_config=""), "arch": "no-such-arch"},
                     folder_ds(tc.images), OPTS, progress=False)


def _ft_file(tc, path, *, arch=None, num_classes=3, width=32, shift_visual=False):
    import torch
    from safetensors.torch import load_file, save_file

    sd = load_file(str(tc.finetuned))
    if shift_visual:  # an encoder of another shape
        sd["visual.proj"] = torch.zeros(64, 16)
    sd["head.weight"] = torch.zeros(num_classes, width)
    sd["head.bias"] = torch.zeros(num_classes)
    save_file(sd, str(path), metadata={"format": "gla-ft/1", "arch": arch or tc.arch,
                                       "num_classes": str(num_classes), "normalize": "true"})
    return path


def test_wrong_finetuned_checkpoints_are_refused(tiny_clip, tmp_path):
    tc = tiny_clip
    cases = [
        (_ft_file(tc, tmp_path / "a.safetensors", arch="ViT-B-32"), "made for arch 'ViT-B-32'"),
        (_ft_file(tc, tmp_path / "b.safetensors", num_classes=5), "has 5 classes, the dataset has 3"),
        (_ft_file(tc, tmp_path / "c.safetensors", shift_visual=True), "does not fit the image encoder"),
    ]
    junk = tmp_path / "d.safetensors"
    junk.write_bytes(b"\x00" * 40)
    cases.append((junk, "not a readable safetensors file"))
    import torch

    pickled = tmp_path / "module.pt"  # a whole pickled module, not a state dict
    torch.save(torch.nn.Linear(2, 3), pickled)
    cases.append((pickled, "is not a torch state dict"))
    for path, msg in cases:
        spec = tc.model_spec(finetuned={"imgs": str(path)})
        with pytest.raises(ExtractError, match=msg) as e:
            extract_cell(tmp_path / "s", spec, folder_ds(tc.images), OPTS, progress=False)
        assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_gla_ft_torch_file_equals_safetensors(tiny_clip, tmp_path):
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    tc = tiny_clip
    with safe_open(str(tc.finetuned), framework="pt") as f:
        meta = f.metadata()
    pt = tmp_path / "ft.pt"
    torch.save({"state_dict": load_file(str(tc.finetuned)), "metadata": meta}, pt)
    extract_cell(tmp_path / "a", tc.model_spec(finetuned={"imgs": str(tc.finetuned)}),
                 folder_ds(tc.images), OPTS, progress=False)
    extract_cell(tmp_path / "b", tc.model_spec(finetuned={"imgs": str(pt)}),
                 folder_ds(tc.images), OPTS, progress=False)
    np.testing.assert_array_equal(arr(read_cell(tmp_path / "a")["test"], "ft"),
                                  arr(read_cell(tmp_path / "b")["test"], "ft"))


def test_manifest_and_webdataset_kinds_match_imagefolder(tiny_clip, tmp_path):
    tc = tiny_clip
    extract_cell(tmp_path / "s", tc.model_spec(), folder_ds(tc.images), OPTS, progress=False)
    ref = read_cell(tmp_path / "s")["test"]
    ref_zs = arr(ref, "zs")
    ids = ref.column("sample_id").to_pylist()

    man = tmp_path / "man.csv"
    rows = ["path,label,split"] + [
        f"{tc.images / i},{i.split('/')[0]},{'val' if n % 4 == 0 else 'test'}" for n, i in enumerate(ids)]
    man.write_text("\n".join(rows) + "\n")
    ds = {"name": "man", "kind": "manifest", "root": str(man), "class_names": CLASSES}
    extract_cell(tmp_path / "s", tc.model_spec(), ds, OPTS, progress=False)
    got = read_cell(tmp_path / "s", dataset="man")
    assert set(got) == {"val", "test"} and got["val"].num_rows == 3
    # other batches, so equal up to float rounding
    np.testing.assert_allclose(arr(got["test"], "zs"), ref_zs[[n % 4 != 0 for n in range(12)]], atol=1e-5)
    np.testing.assert_array_equal(got["val"].column("label").to_pylist(), [0, 1, 2])

    # Parquet manifest with integer labels
    pq.write_table(pa.table({"path": [str(tc.images / i) for i in ids],
                             "label": [i // 4 for i in range(12)]}), tmp_path / "man.parquet")
    ds = {"name": "manpq", "kind": "manifest", "root": str(tmp_path / "man.parquet"), "class_names": CLASSES}
    extract_cell(tmp_path / "s", tc.model_spec(), ds, OPTS, progress=False)
    np.testing.assert_array_equal(arr(read_cell(tmp_path / "s", dataset="manpq")["test"], "zs"), ref_zs)

    shards = make_webdataset(tmp_path / "wds", tc.images)
    ds = {"name": "wds", "kind": "webdataset", "root": shards, "class_names": CLASSES}
    extract_cell(tmp_path / "s", tc.model_spec(), ds, OPTS, progress=False)
    w = read_cell(tmp_path / "s", dataset="wds")["test"]
    assert w.column("sample_id").to_pylist()[:2] == ["shard-000.tar/000000", "shard-000.tar/000001"]
    assert w.column("label").to_pylist() == [i // 4 for i in range(12)]
    np.testing.assert_array_equal(arr(w, "zs"), ref_zs)


def test_head_cache_hit_skips_text_tower(tiny_clip, tmp_path, monkeypatch):
    import gla.extract.zeroshot as zs

    tc = tiny_clip
    calls = []
    real = zs._encode_prompts
    monkeypatch.setattr(zs, "_encode_prompts", lambda *a: calls.append(1) or real(*a))
    extract_cell(tmp_path / "s", tc.model_spec(), folder_ds(tc.images), OPTS, progress=False)
    assert calls == [1]
    heads = list((tmp_path / "s" / "cache" / "heads").glob("*.npy"))
    assert len(heads) == 1
    # another dataset with the same classes: the cached head, no text tower
    monkeypatch.setattr(zs, "_encode_prompts", lambda *a: pytest.fail("text tower called"))
    extract_cell(tmp_path / "s", tc.model_spec(), folder_ds(tc.images, name="again"), OPTS, progress=False)
    a = read_cell(tmp_path / "s")["test"]
    b = read_cell(tmp_path / "s", dataset="again")["test"]
    np.testing.assert_array_equal(arr(a, "zs"), arr(b, "zs"))


def test_from_embeddings_new_templates_without_images(tiny_clip, tmp_path):
    import shutil

    from gla.extract.reembed import rezero_cell

    tc = tiny_clip
    images = tmp_path / "imgs"
    shutil.copytree(tc.images, images)
    spec = tc.model_spec(finetuned={"imgs": str(tc.finetuned)})
    extract_cell(tmp_path / "s", spec, folder_ds(images), OPTS, progress=False)
    old = read_cell(tmp_path / "s")["test"]
    tfile = tmp_path / "t.txt"
    tfile.write_text("a blurry photo of a {}.\nart of the {}.\n")
    new_spec = {**spec, "templates": str(tfile)}
    # reference: a full extraction from images with the new templates
    extract_cell(tmp_path / "ref", new_spec, folder_ds(images), OPTS, progress=False)
    ref = read_cell(tmp_path / "ref")["test"]
    shutil.rmtree(images)  # no images needed from here on
    info = rezero_cell(tmp_path / "s", new_spec, folder_ds(images))
    assert info["status"] == "written" and info["rows"] == 12
    got = read_cell(tmp_path / "s")["test"]
    np.testing.assert_allclose(arr(got, "zs"), arr(ref, "zs"), atol=2e-2)
    assert not np.allclose(arr(got, "zs"), arr(old, "zs"), atol=1e-2)
    np.testing.assert_array_equal(arr(got, "ft"), arr(old, "ft"))
    np.testing.assert_array_equal(arr(got, "image_emb"), arr(old, "image_emb"))
    assert cf.table_metadata(got.schema)["cell_key"] == cf.table_metadata(ref.schema)["cell_key"]
    assert rezero_cell(tmp_path / "s", new_spec, folder_ds(images))["status"] == "skipped"
    with pytest.raises(ExtractError, match="has 2 names"):
        rezero_cell(tmp_path / "s", new_spec, folder_ds(images, class_names=["a", "b"]))
    # A reordering of the same names would remap the labels in an extraction: refused.
    with pytest.raises(ExtractError, match="reorders the classes"):
        rezero_cell(tmp_path / "s", new_spec, folder_ds(images, class_names=CLASSES[::-1]))
    assert read_cell(tmp_path / "s")["test"].equals(got, check_metadata=True)


def test_extract_never_imports_pipeline():
    import ast

    for path in Path(__file__).resolve().parent.parent.joinpath("extract").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for n in names:
                top = n.removeprefix("gla.").split(".")[0]
                assert top not in ("pipeline", "analyze"), f"{path} imports {n}"


def test_killed_workers_leave_no_tmp(tiny_clip, tmp_path):
    """Atomic writes: no visible part until it is complete (temporary names start with '.')."""
    tc = tiny_clip
    extract_cell(tmp_path / "s", tc.model_spec(), folder_ds(tc.images), OPTS, progress=False)
    cell = cf.cell_dir(tmp_path / "s", "tiny", "imgs")
    assert all(not p.name.endswith(".tmp") for p in cell.iterdir())
    assert os.path.exists(cf.manifest_file(cell, "test"))


def test_precision_and_device_options(tiny_clip, tmp_path):
    import torch
    from gla.extract.models import effective_precision, resolve_device

    tc = tiny_clip
    assert effective_precision("bf16", "cpu") == "fp32"  # autocast only on CUDA
    assert effective_precision("fp16", "cuda:0") == "fp16"
    with pytest.raises(ExtractError, match="precision"):
        effective_precision("fp8", "cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == "cpu"
        with pytest.raises(ExtractError, match="CUDA is not available"):
            resolve_device("cuda")
    extract_cell(tmp_path / "a", tc.model_spec(), folder_ds(tc.images), OPTS, progress=False)
    extract_cell(tmp_path / "b", tc.model_spec(), folder_ds(tc.images), {**OPTS, "precision": "bf16"},
                 progress=False)
    a, b = read_cell(tmp_path / "a")["test"], read_cell(tmp_path / "b")["test"]
    if not torch.cuda.is_available():
        assert a.equals(b, check_metadata=True)  # the same cell: fp32 on a CPU
        assert cf.table_metadata(b.schema)["precision"] == "fp32"


def test_indexed_cuda_device_becomes_current(monkeypatch):
    """Pinned memory goes to the current CUDA device: a rank's cuda:<k> must be it."""
    import torch
    from gla.extract.run import use_cuda_device

    calls = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(torch.device(d)))
    use_cuda_device("cpu")
    use_cuda_device("cuda")  # no index: whatever is current stays
    assert calls == []
    use_cuda_device("cuda:1")
    assert calls == [torch.device("cuda", 1)]


def test_from_embeddings_killed_mid_split_resumes(tiny_clip, tmp_path, monkeypatch):
    import shutil

    from gla.extract.reembed import rezero_cell

    tc = tiny_clip
    spec = tc.model_spec(finetuned={"imgs": str(tc.finetuned)})
    extract_cell(tmp_path / "a", spec, folder_ds(tc.images), OPTS, progress=False)  # 3 parts
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    tfile = tmp_path / "t.txt"
    tfile.write_text("art of the {}.\n")
    new_spec = {**spec, "templates": str(tfile)}
    rezero_cell(tmp_path / "b", new_spec, folder_ds(tc.images))

    real, calls = cf.write_part, []

    def die_on_second(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed (simulated)")
        return real(*a, **k)

    cell = cf.cell_dir(tmp_path / "a", "tiny", "imgs")
    old = read_cell(tmp_path / "a")
    monkeypatch.setattr(cf, "write_part", die_on_second)
    with pytest.raises(KeyboardInterrupt):
        rezero_cell(tmp_path / "a", new_spec, folder_ds(tc.images))
    monkeypatch.setattr(cf, "write_part", real)
    # the old generation is still the cell, whole (the new one is swapped in once sealed)
    now = read_cell(tmp_path / "a")
    assert set(now) == set(old) and all(now[s].equals(old[s], check_metadata=True) for s in old)
    info = rezero_cell(tmp_path / "a", new_spec, folder_ds(tc.images))
    assert info["status"] == "written" and info["rows"] == 12
    assert read_cell(tmp_path / "a")["test"].equals(read_cell(tmp_path / "b")["test"], check_metadata=True)
    assert not list(cell.glob(".rezero-*"))
    assert rezero_cell(tmp_path / "a", new_spec, folder_ds(tc.images))["status"] == "skipped"


def test_failed_reextraction_leaves_the_old_cell_byte_for_byte(tiny_clip, tmp_path):
    """A changed model that fails to load writes nothing: the sealed cell stays as it was."""
    tc = tiny_clip
    extract_cell(tmp_path / "s", tc.model_spec(), folder_ds(tc.images), OPTS, progress=False)
    cell = cf.cell_dir(tmp_path / "s", "tiny", "imgs")
    before = snapshot(cell)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(ExtractError):
        extract_cell(tmp_path / "s", tc.model_spec(pretrained=str(broken)), folder_ds(tc.images),
                     OPTS, progress=False)
    assert snapshot(cell) == before


FAULT_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
import gla.extract.run as run
run.extract_cell({store!r}, {spec!r}, {ds!r}, {opts!r}, progress=False)
"""


@pytest.mark.parametrize("point", ["part-written:2", "split-sealed"])
def test_reextraction_killed_keeps_old_generation_readable(tiny_clip, tmp_path, point):
    """kill -9 while a changed cell is re-extracted: the old generation stays the cell,
    byte for byte, until the new one is sealed and swapped in; a rerun finishes it."""
    from gla.extract.records import FAULT_ENV

    tc = tiny_clip
    ds = folder_ds(tc.images)
    extract_cell(tmp_path / "s", tc.model_spec(), ds, OPTS, progress=False)
    cell = cf.cell_dir(tmp_path / "s", "tiny", "imgs")
    before, old = snapshot(cell), read_cell(tmp_path / "s")
    spec = tc.model_spec(finetuned={"imgs": str(tc.finetuned)})  # a new input: full extraction
    script = FAULT_SCRIPT.format(tests=str(Path(__file__).parent), store=str(tmp_path / "s"),
                                 spec=spec, ds=ds, opts=OPTS)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, FAULT_ENV: point})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    now = snapshot(cell)
    assert {k: now[k] for k in before} == before
    assert all(read_cell(tmp_path / "s")[s].equals(old[s], check_metadata=True) for s in old)
    info = extract_cell(tmp_path / "s", spec, ds, OPTS, progress=False)
    assert info["status"] == "written"
    extract_cell(tmp_path / "u", spec, ds, OPTS, progress=False)
    assert read_cell(tmp_path / "s")["test"].equals(read_cell(tmp_path / "u")["test"], check_metadata=True)
    assert sorted(p.name for p in cell.iterdir()) == sorted(p.name for p in cf.cell_dir(tmp_path / "u", "tiny", "imgs").iterdir())
