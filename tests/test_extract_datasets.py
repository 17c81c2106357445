"""Dataset kinds and split drawing (no model needed except the built-in-set smoke test)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("PIL")

from gla.extract.datasets import KINDS, build_source  # noqa: E402
from gla.extract.errors import ExtractError  # noqa: E402


def make_folder(root, counts=(6, 5, 7), stem=""):
    from PIL import Image

    for ci, n in enumerate(counts):
        d = root / f"class{ci}"
        d.mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (4, 4), (ci * 50, i, 0)).save(d / f"{stem}{i:02d}.png")
        (d / "notes.txt").write_text("not an image")
    return root


def ds(root, **kw):
    spec = {"name": "d", "kind": "imagefolder", "root": str(root), "seed": 0, "splits": {}}
    spec.update(kw)
    return spec


def test_registry_has_the_documented_kinds():
    assert set(KINDS) == {"imagefolder", "manifest", "webdataset", "huggingface", "fashion-mnist",
                          "animal-mnist"}


def test_drawn_splits_are_balanced_disjoint_ordered_and_seeded(tmp_path):
    root = make_folder(tmp_path / "f")
    splits = {"val": {"per_class": 2}, "test": {"rest": True}, "extra": {"count": 3}}
    s = build_source(ds(root, splits=splits))
    assert list(s.splits) == ["val", "test", "extra"]  # config order
    val, test, extra = (s.splits[k] for k in ("val", "test", "extra"))
    assert np.bincount(val.labels).tolist() == [2, 2, 2]
    assert len(extra) == 3 and len(test) == 18 - 6 - 3
    all_ids = val.sample_ids + test.sample_ids + extra.sample_ids
    assert len(set(all_ids)) == 18  # disjoint, covering the pool
    for sp in (val, test, extra):
        assert sp.sample_ids == sorted(sp.sample_ids)  # pool order kept
        for sid, y in zip(sp.sample_ids, sp.labels, strict=True):
            assert sid.startswith(f"class{y}/")
    again = build_source(ds(root, splits=splits))
    assert again.splits["val"].sample_ids == val.sample_ids and again.identity == s.identity
    other = build_source(ds(root, splits=splits, seed=1))
    assert other.splits["val"].sample_ids != val.sample_ids
    assert other.identity != s.identity


def test_limit_class_names_and_errors(tmp_path):
    root = make_folder(tmp_path / "f")
    s = build_source(ds(root, limit_per_class=3))
    assert list(s.splits) == ["test"] and len(s.splits["test"]) == 9
    # the same names in another order reorder the labels
    s = build_source(ds(root, class_names=["class2", "class0", "class1"]))
    t = s.splits["test"]
    assert s.class_names == ["class2", "class0", "class1"]
    for sid, y in zip(t.sample_ids, t.labels, strict=True):
        assert sid.split("/")[0] == s.class_names[y]
    # other names are never applied by position: a list must name the folders
    with pytest.raises(ExtractError, match=r"3 not among its classes: 'a'.*3 of its classes not named"):
        build_source(ds(root, class_names=["a", "b", "c"]))
    with pytest.raises(ExtractError, match="1 of its classes not named: 'class2'"):
        build_source(ds(root, class_names=["class0", "class1"]))
    # an explicit mapping renames (and orders) them
    s = build_source(ds(root, class_folders=["class2", "class0", "class1"], class_names=["c", "a", "b"]))
    assert s.class_names == ["c", "a", "b"]
    for sid, y in zip(s.splits["test"].sample_ids, s.splits["test"].labels, strict=True):
        assert {"class2": "c", "class0": "a", "class1": "b"}[sid.split("/")[0]] == s.class_names[y]
    with pytest.raises(ExtractError, match="per_class = 6 but class 'class1' has only 5"):
        build_source(ds(root, splits={"val": {"per_class": 6}}))
    with pytest.raises(ExtractError, match="kind: unknown dataset kind 'nope'"):
        build_source(ds(root, kind="nope"))
    with pytest.raises(ExtractError, match="is not a folder"):
        build_source(ds(tmp_path / "missing"))


def test_explicit_split_roots(tmp_path):
    a = make_folder(tmp_path / "a", (2, 2, 2))
    b = make_folder(tmp_path / "b", (1, 1, 1), stem="b")
    s = build_source(ds("", splits={"train": {"root": str(a)}, "test": {"root": str(b)}}))
    assert [len(s.splits[k]) for k in ("train", "test")] == [6, 3]
    assert s.class_names == ["class0", "class1", "class2"]
    # roots with the same layout give the same relative ids: refused before any work
    c = make_folder(tmp_path / "c", (1, 1, 1))
    with pytest.raises(ExtractError, match="splits 'train' and 'test' both have the sample id 'class0/00.png'"):
        build_source(ds("", splits={"train": {"root": str(a)}, "test": {"root": str(c)}}))


def test_manifest_errors_name_file_and_column(tmp_path):
    m = tmp_path / "m.csv"
    m.write_text("file,label\na.png,0\n")
    with pytest.raises(ExtractError, match=r"m\.csv has no column 'path'"):
        build_source({"name": "m", "kind": "manifest", "root": str(m)})
    m.write_text("path,label\na.png,0\nb.png,1\n")
    with pytest.raises(ExtractError, match="integer labels: give class_names"):
        build_source({"name": "m", "kind": "manifest", "root": str(m)})
    with pytest.raises(ExtractError, match="outside 0..0"):
        build_source({"name": "m", "kind": "manifest", "root": str(m), "class_names": ["x"]})
    m.write_text("path,label\na.png,cat\nb.png,\n")
    s = build_source({"name": "m", "kind": "manifest", "root": str(m)})
    assert s.class_names == ["cat"] and s.splits["test"].labels.tolist() == [0, -1]
    assert s.splits["test"].refs[0] == str(tmp_path / "a.png")


def test_builtin_fashion_mnist_pool_and_splits():
    from gla.extract import sources

    try:
        sources.load_fashion_mnist("test")
    except sources.SourceError:
        pytest.skip("Fashion-MNIST IDX files not present (make data)")
    spec = {"name": "fashion", "kind": "fashion-mnist", "pool": "test", "seed": 0,
            "splits": {"val": {"per_class": 20}, "test": {"rest": True}}}
    s = build_source(spec)
    assert s.class_names[0] == "t-shirt" and len(s.class_names) == 10
    assert len(s.splits["val"]) == 200 and len(s.splits["test"]) == 9800
    assert np.bincount(s.splits["val"].labels).tolist() == [20] * 10
    img = s.reader(s.splits["val"].refs[0])
    assert img.mode == "RGB" and img.size == (28, 28)


def test_animal_mnist_end_to_end_with_tiny_model(tmp_path, request):
    pytest.importorskip("open_clip")
    from gla.extract import sources

    try:
        sources.load_animal_mnist("test")
    except sources.SourceError:
        pytest.skip("animal-mnist not installed")
    from fixtures_tiny_clip import make_tiny_clip
    from gla.extract import cellformat as cf
    from gla.extract.run import extract_cell

    tc = make_tiny_clip(tmp_path / "tc")
    spec = {"name": "animals", "kind": "animal-mnist", "pool": "test", "seed": 3, "limit_per_class": 3,
            "splits": {"val": {"per_class": 1}, "test": {"rest": True}}}
    info = extract_cell(tmp_path / "s", tc.model_spec(), spec,
                        {"batch_size": 8, "num_workers": 0, "shard_rows": 16}, progress=False)
    assert info["status"] == "written" and info["images"] == 30
    cell = cf.cell_dir(tmp_path / "s", "tiny", "animals")
    assert cf.read_manifest(cell, "val")["rows"] == 10 and cf.read_manifest(cell, "test")["rows"] == 20


def test_gla_extract_without_torch_is_a_clear_error(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    (tmp_path / "run.toml").write_text(
        'store = "s"\n[[models]]\nname = "m"\narch = "ViT-B-32"\npretrained = "none"\n'
        '[[datasets]]\nname = "d"\nkind = "imagefolder"\nroot = "imgs"\n')
    code = (
        "import sys\n"
        "for m in ('torch', 'torchvision', 'open_clip'):\n"
        "    sys.modules[m] = None\n"
        "from gla.pipeline.cli import main\n"
        "sys.exit(main(['extract', 'run.toml']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(repo)}, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "gla extract: error: gla extract needs torch and open_clip: pip install 'gla-pipeline[extract]'"]
