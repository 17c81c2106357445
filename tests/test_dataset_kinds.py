"""Every dataset kind in the registry passes the same contract (open_clip-style,
registry-driven): labelled splits with unique ids, the class names in label order, a
reader that decodes every reference, a per-class cap, a stable identity, and a
fingerprint that sees added and overwritten files."""

from __future__ import annotations

import csv
import io
import os
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PIL")

from gla.extract.datasets import KINDS, build_source, dataset_fingerprint  # noqa: E402
from gla.extract.errors import ExtractError  # noqa: E402

CLASSES = ["ant", "bee", "cow"]
PER_CLASS = 4


def _png(c: int, i: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (5, 5), (c * 80, i * 10, 7)).save(buf, format="PNG")
    return buf.getvalue()


def _folder(root: Path) -> Path:
    for c, name in enumerate(CLASSES):
        d = root / name / "nested"  # nested: found recursively
        d.mkdir(parents=True)
        for i in range(PER_CLASS):
            (d / f"{name}{i}.png").write_bytes(_png(c, i))
    return root


def build_imagefolder(tmp: Path) -> dict:
    return {"kind": "imagefolder", "root": str(_folder(tmp / "imgs"))}


def build_manifest(tmp: Path) -> dict:
    _folder(tmp / "imgs")
    with open(tmp / "imgs" / "m.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        for name in CLASSES:
            for i in range(PER_CLASS):
                w.writerow([f"{name}/nested/{name}{i}.png", name])
    return {"kind": "manifest", "root": str(tmp / "imgs" / "m.csv")}


def build_webdataset(tmp: Path) -> dict:
    (tmp / "wds").mkdir()
    with tarfile.open(tmp / "wds" / "shard-0.tar", "w") as tar:
        for c in range(len(CLASSES)):
            for i in range(PER_CLASS):
                for ext, data in (("png", _png(c, i)), ("cls", str(c).encode())):
                    info = tarfile.TarInfo(f"s{c}{i}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return {"kind": "webdataset", "root": str(tmp / "wds" / "*.tar"), "class_names": CLASSES}


def _hf_dataset():
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    images = [Image.open(io.BytesIO(_png(c, i))) for c in range(len(CLASSES)) for i in range(PER_CLASS)]
    labels = [c for c in range(len(CLASSES)) for _ in range(PER_CLASS)]
    features = datasets.Features({"img": datasets.Image(), "y": datasets.ClassLabel(names=CLASSES)})
    return datasets.Dataset.from_dict({"img": images, "y": labels}, features=features)


def build_huggingface(tmp: Path) -> dict:
    import datasets

    ds = _hf_dataset()
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp / "hf"))
    return {"kind": "huggingface", "root": str(tmp / "hf"), "pool": "test", "image_column": "img",
            "label_column": "y"}


def build_fashion_mnist(tmp: Path) -> dict:
    from gla.extract import sources

    try:
        sources.load_fashion_mnist("test")
    except sources.SourceError:
        pytest.skip("Fashion-MNIST IDX files not present (make data)")
    return {"kind": "fashion-mnist", "pool": "test"}


def build_animal_mnist(tmp: Path) -> dict:
    from gla.extract import sources

    try:
        sources.animal_mnist_dir()
    except sources.SourceError:
        pytest.skip("animal-mnist not installed (make data)")
    return {"kind": "animal-mnist", "pool": "test"}


BUILDERS = {
    "imagefolder": build_imagefolder,
    "manifest": build_manifest,
    "webdataset": build_webdataset,
    "huggingface": build_huggingface,
    "fashion-mnist": build_fashion_mnist,
    "animal-mnist": build_animal_mnist,
}
FILE_KINDS = ("imagefolder", "manifest", "webdataset", "huggingface")


@pytest.fixture(autouse=True)
def _hf_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def test_every_kind_has_a_contract_builder():
    assert set(BUILDERS) == set(KINDS)


@pytest.mark.parametrize("kind", list(KINDS))
def test_kind_contract(kind, tmp_path):
    spec = {"name": "d", "seed": 3, **BUILDERS[kind](tmp_path)}
    src = build_source({**spec, "splits": {"val": {"per_class": 2}, "test": {"rest": True}}})
    c = len(src.class_names)
    assert c >= 2 and len(set(src.class_names)) == c
    ids = [s for sp in src.splits.values() for s in sp.sample_ids]
    assert len(ids) == len(set(ids))
    val = src.splits["val"]
    assert np.bincount(val.labels, minlength=c).tolist() == [2] * c
    for sp in src.splits.values():
        assert sp.labels.dtype == np.int64 and ((sp.labels >= 0) & (sp.labels < c)).all()
    for ref in val.refs[:3]:  # the reader decodes what the listing references
        im = src.reader(ref)
        assert im.mode == "RGB" and im.size[0] > 0
        assert src.reader.describe(ref)
    # the same spec lists the same way; a cap of one per class gives one per class
    again = build_source({**spec, "splits": {"val": {"per_class": 2}, "test": {"rest": True}}})
    assert again.identity == src.identity
    capped = build_source({**spec, "limit_per_class": 1})
    assert np.bincount(capped.splits["test"].labels, minlength=c).tolist() == [1] * c
    partial = {**spec, "class_folders": CLASSES[:2], "class_names": ["a", "b"]}
    if kind == "webdataset":  # class indices: a mapping has nothing to map
        with pytest.raises(ExtractError, match="mapping needs named classes"):
            build_source({**spec, "class_folders": ["0", "1", "2"], "class_names": CLASSES})
    elif kind in FILE_KINDS:  # real class names are matched by name, never by position
        assert src.class_names == CLASSES
        with pytest.raises(ExtractError, match="does not match|not in class_names"):
            build_source(partial)


@pytest.mark.parametrize("kind", FILE_KINDS)
def test_fingerprint_sees_added_and_overwritten_files(kind, tmp_path):
    spec = {"name": "d", **BUILDERS[kind](tmp_path)}
    fp0 = dataset_fingerprint(spec)
    assert fp0 and dataset_fingerprint(spec) == fp0
    root = Path(spec["root"])
    if kind == "webdataset":
        target = root.parent / "shard-0.tar"
        (root.parent / "shard-1.tar").write_bytes(target.read_bytes())  # an added shard
    elif kind == "huggingface":
        target = next((root / "test").glob("*.arrow"))
    else:
        folder = root if kind == "imagefolder" else root.parent
        target = folder / "ant" / "nested" / "ant0.png"
        (folder / "bee" / "nested" / "deeper").mkdir()
        (folder / "bee" / "nested" / "deeper" / "new.png").write_bytes(_png(1, 9))
    fp1 = dataset_fingerprint(spec)
    if kind not in ("manifest", "huggingface"):  # a manifest lists its files itself
        assert fp1 != fp0
    # the same name overwritten in place (same size, new content and mtime)
    data = target.read_bytes()
    time.sleep(0.01)
    target.write_bytes(data[::-1] if kind == "imagefolder" else data)
    os.utime(target, ns=(time.time_ns(), time.time_ns()))
    assert dataset_fingerprint(spec) != fp1
    assert build_source(spec).identity["files"] == dataset_fingerprint(spec)


def test_huggingface_parquet_and_errors(tmp_path):
    ds = _hf_dataset()
    (tmp_path / "pq").mkdir()
    ds.to_parquet(str(tmp_path / "pq" / "train-00000.parquet"))
    spec = {"name": "h", "kind": "huggingface", "root": str(tmp_path / "pq"), "image_column": "img",
            "label_column": "y"}
    src = build_source(spec)
    t = src.splits["test"]
    assert src.class_names == CLASSES and t.labels.tolist() == [c for c in range(3) for _ in range(PER_CLASS)]
    ref_pixels = np.asarray(src.reader(t.refs[5]))
    from PIL import Image

    assert np.array_equal(ref_pixels, np.asarray(Image.open(io.BytesIO(_png(1, 1))).convert("RGB")))
    # renamed through a mapping of the ClassLabel names
    m = build_source({**spec, "class_folders": ["cow", "ant", "bee"], "class_names": ["Cow", "Ant", "Bee"]})
    assert m.class_names == ["Cow", "Ant", "Bee"] and m.splits["test"].labels[0] == 1
    with pytest.raises(ExtractError, match="image_column.*unknown column 'image' \\(did you mean 'img'\\?\\)"):
        build_source({**spec, "image_column": "image"})
    with pytest.raises(ExtractError, match="partial|not among its classes: 'ape'"):
        build_source({**spec, "class_names": ["ape", "bee", "cow"]})
    saved = tmp_path / "hf"
    import datasets

    datasets.DatasetDict({"train": ds, "val": ds}).save_to_disk(str(saved))
    with pytest.raises(ExtractError, match="holds the splits train, val: set pool"):
        build_source({**spec, "root": str(saved)})
    with pytest.raises(ExtractError, match="unknown split 'tset'"):
        build_source({**spec, "root": str(saved), "pool": "tset"})
