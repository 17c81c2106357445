"""Shifted sets at extraction: deterministic corruptions, class subsets, the source's head rows."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

pytest.importorskip("open_clip")
pytestmark = pytest.mark.torch

from fixtures_tiny_clip import CLASSES, tiny_clip_fixture  # noqa: E402, F401
from gla.extract import cellformat as cf  # noqa: E402
from gla.extract.corruptions import CorruptedReader  # noqa: E402
from gla.extract.datasets import FileReader, build_source  # noqa: E402
from gla.extract.errors import ExtractError  # noqa: E402
from gla.extract.run import extract_cell  # noqa: E402

OPTS = {"batch_size": 4, "num_workers": 0, "shard_rows": 5}


def _ds(tc, name="imgs", **kw):
    return {"name": name, "kind": "imagefolder", "root": str(tc.images), "splits": {}, **kw}


def _read(store, dataset):
    cell = cf.cell_dir(store, "tiny", dataset)
    t = pq.read_table(cell / cf.read_manifest(cell, "test")["parts"][0]["file"])
    parts = [pq.read_table(cell / p["file"]) for p in cf.read_manifest(cell, "test")["parts"]]
    ids = sum((p.column("sample_id").to_pylist() for p in parts), [])
    out = {c: np.concatenate([np.asarray(p.column(c).combine_chunks().flatten()).reshape(p.num_rows, -1)
                              for p in parts]) for c in ("zs", "ft") if c in t.column_names}
    return ids, out, cf.table_metadata(t.schema)


def test_corruptions_are_deterministic_and_what_they_say(tiny_clip):
    from PIL import Image, ImageFilter

    path = sorted((tiny_clip.images / "cat").glob("*.png"))[0]
    x = np.asarray(Image.open(path).convert("RGB"))
    inv = np.asarray(CorruptedReader(FileReader(), "invert")(str(path)))
    np.testing.assert_array_equal(inv, 255 - x)
    blur = np.asarray(CorruptedReader(FileReader(), "blur", 2)(str(path)))
    radius = 0.5 * 2 * max(x.shape[:2]) / 28  # severity 2, relative to a 28-pixel image
    ref = np.asarray(Image.open(path).convert("RGB").filter(ImageFilter.GaussianBlur(radius)))
    np.testing.assert_array_equal(blur, ref)
    noisy = CorruptedReader(FileReader(), "noise", 2)
    a, b = np.asarray(noisy(str(path)), np.float64), np.asarray(noisy(str(path)), np.float64)
    np.testing.assert_array_equal(a, b)  # seeded by the image reference
    d = a - x
    assert 0.1 * 255 < d.std() < 0.2 * 255  # σ = 0.16·255 before clipping
    with pytest.raises(ExtractError, match="corruption = 'melt'"):
        CorruptedReader(FileReader(), "melt")


def test_subset_keeps_the_source_head_rows_and_images(tiny_clip, tmp_path):
    tc = tiny_clip
    model = tc.model_spec(finetuned={"imgs": str(tc.finetuned), "sub": str(tc.finetuned)})
    extract_cell(tmp_path / "s", model, _ds(tc), OPTS, progress=False)
    sub = _ds(tc, "sub", classes=[2, 0], evaluate_with="imgs")
    src = build_source(sub)
    assert src.class_names == [CLASSES[2], CLASSES[0]]
    assert sorted(set(src.splits["test"].labels.tolist())) == [0, 1]
    extract_cell(tmp_path / "s", model, sub, OPTS, progress=False)
    ids_full, full, _ = _read(tmp_path / "s", "imgs")
    ids_sub, part, _ = _read(tmp_path / "s", "sub")
    rows = [ids_full.index(i) for i in ids_sub]
    assert {i.split("/")[0] for i in ids_sub} == {CLASSES[2], CLASSES[0]}
    for col in ("zs", "ft"):  # the same numbers as the source's columns 2 and 0
        np.testing.assert_allclose(part[col], full[col][rows][:, [2, 0]], atol=1e-5, rtol=0)


def test_corrupted_cell_differs_and_reruns_identically(tiny_clip, tmp_path):
    tc = tiny_clip
    model = tc.model_spec()
    a = extract_cell(tmp_path / "a", model, _ds(tc, corruption="noise", severity=3), OPTS, progress=False)
    b = extract_cell(tmp_path / "b", model, _ds(tc, corruption="noise", severity=3), OPTS, progress=False)
    clean = extract_cell(tmp_path / "c", model, _ds(tc), OPTS, progress=False)
    assert a["cell_key"] == b["cell_key"] != clean["cell_key"]
    _, xa, meta = _read(tmp_path / "a", "imgs")
    _, xb, _ = _read(tmp_path / "b", "imgs")
    _, xc, _ = _read(tmp_path / "c", "imgs")
    np.testing.assert_array_equal(xa["zs"], xb["zs"])
    assert not np.allclose(xa["zs"], xc["zs"], atol=1e-3)
    assert meta["dataset"]["corruption"] == "noise" and meta["dataset"]["severity"] == 3
