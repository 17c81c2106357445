"""pipeline.store: reading cells written with extract.cellformat."""

from __future__ import annotations

import hashlib
import os
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from gla.extract import cellformat as cf
from gla.pipeline.errors import UserError
from gla.pipeline.store import Store


def _write(store, model, dataset, split, n, c, *, parts=1, ft=True, dtype="float32", seed=0,
           names=None, id_prefix=None):
    rng = np.random.default_rng(seed)
    zs = rng.standard_normal((n, c)).astype(np.float32)
    fts = rng.standard_normal((n, c)).astype(np.float32) if ft else None
    y = rng.integers(0, c, n).astype(np.int32)
    ids = [f"{id_prefix or split}-{i}" for i in range(n)]
    meta = {"class_names": names or [f"k{i}" for i in range(c)]}
    bounds = np.linspace(0, n, parts + 1).astype(int)
    tables = [
        cf.build_table(ids[a:b], split, y[a:b], zs[a:b], None if fts is None else fts[a:b],
                       metadata=meta, dtype=dtype)
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    cf.write_split(cf.cell_dir(store, model, dataset), split, tables)
    return y, zs, fts


def test_cells_lists_only_sealed_cells(tmp_path):
    _write(tmp_path, "m1", "d1", "val", 10, 3)
    _write(tmp_path, "m2", "d1", "test", 10, 3)
    # A cell with a part but no manifest (an interrupted write) is not a cell.
    half = cf.cell_dir(tmp_path, "m3", "d1")
    gen = cf.new_generation()
    part = cf.write_part(half, "val", 0, cf.build_table(["a"], "val", np.zeros(1), np.zeros((1, 3))), gen)
    cf.seal_split(half, "val", [part], gen)  # sealed but never committed by a cell record
    s = Store(tmp_path)
    assert s.cells() == [("m1", "d1"), ("m2", "d1")]
    assert Store(tmp_path / "nothing").cells() == []


def test_read_split_round_trip_multi_part(tmp_path):
    y, zs, ft = _write(tmp_path, "m", "d", "test", 1000, 7, parts=3)
    s = Store(tmp_path)
    info = s.cell_info("m", "d")
    assert info.num_classes == 7 and info.has_ft
    assert info.class_names == tuple(f"k{i}" for i in range(7))
    assert info.splits["test"].rows == 1000 and len(info.splits["test"].files) == 3
    d = s.read_split("m", "d", "test", columns=("label", "zs", "ft", "sample_id"))
    assert d.zs.dtype == np.float32 and d.zs.shape == (1000, 7)
    np.testing.assert_array_equal(d.zs, zs)
    np.testing.assert_array_equal(d.ft, ft)
    np.testing.assert_array_equal(d.labels, y)
    assert d.labels.dtype == np.int32
    assert d.sample_ids.to_pylist()[:2] == ["test-0", "test-1"]


def test_batches_are_arrow_views_split_reads_are_fresh_and_float16_upcast(tmp_path):
    y, zs, _ = _write(tmp_path, "m", "d", "test", 50, 4, ft=False)
    s = Store(tmp_path)
    d = s.read_split("m", "d", "test")
    assert d.ft is None
    assert d.zs.flags.writeable and d.zs.flags.c_contiguous
    np.testing.assert_array_equal(d.zs, zs)
    (b,) = list(s.iter_split("m", "d", "test"))
    assert not b.zs.flags.writeable  # zero-copy view of the Arrow buffer
    np.testing.assert_array_equal(b.zs, zs)
    _write(tmp_path, "m", "h", "test", 50, 4, ft=False, dtype="float16")
    assert s.split_info("m", "h", "test").logit_dtype == "halffloat"
    d16 = s.read_split("m", "h", "test")
    assert d16.zs.dtype == np.float32
    np.testing.assert_array_equal(d16.zs, zs.astype(np.float16).astype(np.float32))


def test_iter_split_batches_bounded_and_located(tmp_path):
    y, zs, ft = _write(tmp_path, "m", "d", "test", 1003, 5, parts=2)
    s = Store(tmp_path)
    batches = list(s.iter_split("m", "d", "test", batch_rows=100))
    assert max(len(b) for b in batches) <= 100
    np.testing.assert_array_equal(np.concatenate([b.zs for b in batches]), zs)
    np.testing.assert_array_equal(np.concatenate([b.ft for b in batches]), ft)
    np.testing.assert_array_equal(np.concatenate([b.labels for b in batches]), y)
    info = s.split_info("m", "d", "test")
    # file + row_offset of a batch point at the same row as locate_row on the split
    row = 0
    for b in batches:
        f, r = Store.locate_row(info, row)
        assert (f, r) == (b.file, b.row_offset)
        row += len(b)


def test_unlisted_parts_are_ignored(tmp_path):
    y, zs, _ = _write(tmp_path, "m", "d", "test", 20, 3)
    cell = cf.cell_dir(tmp_path, "m", "d")
    cf.write_part(cell, "test", 7, cf.build_table(["x"], "test", np.zeros(1), np.ones((1, 3))), cf.new_generation())
    d = Store(tmp_path).read_split("m", "d", "test")
    assert len(d) == 20
    np.testing.assert_array_equal(d.zs, zs)


def test_missing_split_names_present_ones(tmp_path):
    _write(tmp_path, "m", "d", "test", 20, 3)
    _write(tmp_path, "m", "d", "extra", 20, 3)
    with pytest.raises(UserError, match=r"split 'val' not found \(splits present: extra, test\)"):
        Store(tmp_path).split_info("m", "d", "val")


def test_inconsistent_splits_are_refused(tmp_path):
    _write(tmp_path, "m", "d", "val", 20, 3)
    _write(tmp_path, "m", "d", "test", 20, 4)
    with pytest.raises(UserError, match="column zs has width"):
        Store(tmp_path).cell_info("m", "d")
    _write(tmp_path, "m", "e", "val", 20, 3)
    _write(tmp_path, "m", "e", "test", 20, 3, ft=False)
    with pytest.raises(UserError, match="column ft present in split 'val'"):
        Store(tmp_path).cell_info("m", "e")
    _write(tmp_path, "m", "f", "val", 20, 3)
    _write(tmp_path, "m", "f", "test", 20, 3, names=["a", "b", "c"])
    with pytest.raises(UserError, match="class names differ"):
        Store(tmp_path).cell_info("m", "f")


def test_manifest_listing_missing_part(tmp_path):
    _write(tmp_path, "m", "d", "test", 20, 3)
    _part(tmp_path, "test", 0).unlink()
    with pytest.raises(UserError, match=r"part-test\.[0-9a-f]{12}-00000.parquet: missing, but .*_split-test\..* lists it"):
        Store(tmp_path).split_info("m", "d", "test")


def test_bad_names_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="not usable as a folder name"):
        Store(tmp_path).cell_path("a/b", "d")


def test_class_counts_round_trip_and_validation(tmp_path):
    s = Store(tmp_path)
    assert s.read_class_counts("d") is None
    s.write_class_counts("d", np.array([5, 0, 7]), ["a", "b", "c"])
    cc = s.read_class_counts("d")
    np.testing.assert_array_equal(cc.counts, [5, 0, 7])
    assert cc.class_names == ("a", "b", "c")
    t = pq.read_table(s.counts_path("d"))
    assert t.schema.field("class_index").type == pa.int32()
    assert t.schema.field("count").type == pa.int64()
    # rows out of order are put back in class order
    pq.write_table(pa.table({"class_index": pa.array([1, 0], pa.int32()),
                             "count": pa.array([3, 9], pa.int64())}), s.counts_path("d"))
    np.testing.assert_array_equal(s.read_class_counts("d").counts, [9, 3])
    pq.write_table(pa.table({"class_index": pa.array([0, 2], pa.int32()),
                             "count": pa.array([3, 9], pa.int64())}), s.counts_path("d"))
    with pytest.raises(UserError, match="class_index must be 0..C-1"):
        s.read_class_counts("d")


def test_content_key_tracks_inputs(tmp_path):
    _write(tmp_path, "m", "d", "val", 20, 3)
    _write(tmp_path, "m", "d", "test", 20, 3)
    s = Store(tmp_path)
    k0 = s.content_key("m", "d")
    assert s.content_key("m", "d") == k0
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "summary.parquet").write_bytes(b"x")
    assert s.content_key("m", "d") == k0  # results are outputs, not inputs
    _write(tmp_path, "m", "d", "test", 20, 3)  # same content, rewritten: fresh write_id
    k1 = s.content_key("m", "d")
    assert k1 != k0
    s.write_class_counts("d", np.array([1, 2, 3]))
    k2 = s.content_key("m", "d")
    assert k2 != k1
    s.write_class_counts("d", np.array([1, 2, 4]))
    k3 = s.content_key("m", "d")
    assert k3 != k2
    _write(tmp_path, "m2", "d", "test", 20, 3)  # another cell does not matter
    assert s.content_key("m", "d") == k3


def test_store_pickles(tmp_path):
    s = pickle.loads(pickle.dumps(Store(tmp_path)))
    assert s.root == tmp_path


def test_parts_of_a_split_must_agree_on_every_logit_column(tmp_path):
    """A later part whose ft width differs is refused up front, naming that part."""
    cell = cf.cell_dir(tmp_path, "m", "d")
    rng = np.random.default_rng(0)
    t0 = cf.build_table(["a", "b"], "test", np.zeros(2), rng.standard_normal((2, 3)),
                        rng.standard_normal((2, 3)))
    t1 = cf.build_table(["c", "d"], "test", np.zeros(2), rng.standard_normal((2, 3)),
                        rng.standard_normal((2, 4)))
    cf.write_split(cell, "test", [t0, t1])
    with pytest.raises(UserError, match=r"part-test\.\w+-00001.parquet: columns differ from part-test\.\w+-00000"):
        Store(tmp_path).split_info("m", "d", "test")


def test_malformed_manifest_entry_is_a_user_error(tmp_path):
    _write(tmp_path, "m", "d", "test", 20, 3)
    cf.manifest_file(cf.cell_dir(tmp_path, "m", "d"), "test").write_text('{"parts": [{"rows": 20}]}')
    with pytest.raises(UserError, match=r"_split-test\.\w+\.json: unreadable manifest"):
        Store(tmp_path).split_info("m", "d", "test")


def test_replacing_a_split_never_exposes_half_written_parts(tmp_path, monkeypatch):
    """A crash while re-importing leaves the old split readable and intact."""
    _write(tmp_path, "m", "d", "test", 20, 3)
    cell = cf.cell_dir(tmp_path, "m", "d")
    before = Store(tmp_path).read_split("m", "d", "test")
    snap = _snapshot(cell)
    real = cf.commit_cell

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(cf, "commit_cell", crash)
    table = pq.read_table(_part(tmp_path, "test", 0))
    with pytest.raises(OSError):
        cf.write_split(cell, "test", [table.slice(0, 5)])
    monkeypatch.setattr(cf, "commit_cell", real)
    after = Store(tmp_path).read_split("m", "d", "test")
    assert np.array_equal(before.zs, after.zs) and np.array_equal(before.labels, after.labels)
    # every file of the old generation is byte for byte as it was (the new one lies beside)
    now = _snapshot(cell)
    assert {k: now[k] for k in snap} == snap


def _part(store, split, index, model="m", dataset="d"):
    info = Store(store).split_info(model, dataset, split)
    return info.files[index]


def _snapshot(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_splits_sharing_a_prefix_never_touch_each_other(tmp_path):
    """Importing split val never deletes or reads the parts of split val-hard (files are
    found through the cell record and manifests only, never by a name pattern)."""
    _write(tmp_path, "m", "d", "val-hard", 20, 3)
    cell = cf.cell_dir(tmp_path, "m", "d")
    hard = {f.name: f.read_bytes() for f in Store(tmp_path).split_info("m", "d", "val-hard").files}
    _write(tmp_path, "m", "d", "val", 10, 3, id_prefix="v")
    _write(tmp_path, "m", "d", "val", 12, 3, id_prefix="v")  # replaced: its old parts go
    assert {f.name: f.read_bytes() for f in Store(tmp_path).split_info("m", "d", "val-hard").files} == hard
    assert Store(tmp_path).split_info("m", "d", "val").rows == 12
    parts = sorted(p.name for p in cell.glob("part-*"))
    assert len(parts) == 2 and sum(n.startswith("part-val-hard.") for n in parts) == 1


def test_manifest_records_checksum_size_rows(tmp_path):
    _write(tmp_path, "m", "d", "test", 30, 3, parts=2)
    cell = cf.cell_dir(tmp_path, "m", "d")
    doc = cf.read_manifest(cell, "test")
    for e in doc["parts"]:
        f = cell / e["file"]
        assert e["size"] == f.stat().st_size and e["rows"] == pq.ParquetFile(f).metadata.num_rows
        assert e["sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()
    assert sum(e["rows"] for e in doc["parts"]) == doc["rows"] == 30


def _flip_logit_bytes(path):
    """Overwrite some logit bytes in place: same size, still a readable Parquet file."""
    data = bytearray(path.read_bytes())
    meta = pq.ParquetFile(path).metadata
    col = [meta.row_group(0).column(i) for i in range(meta.num_columns)
           if meta.row_group(0).column(i).path_in_schema.startswith("zs")][0]
    start = col.data_page_offset + 64
    data[start : start + 16] = bytes(16)
    return bytes(data)


def test_part_overwritten_in_place_is_caught(tmp_path):
    """Same size, new bytes: caught through the mtime + sha256 check, and with the mtime
    put back (bit rot, ``touch -r``) through the Parquet page checksums on the read."""
    _write(tmp_path, "m", "d", "test", 200, 5)
    f = _part(tmp_path, "test", 0)
    st = f.stat()
    f.write_bytes(_flip_logit_bytes(f))
    with pytest.raises(UserError, match=rf"{f.name}: checksum differs from .*_split-test"):
        Store(tmp_path).split_info("m", "d", "test")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime as sealed
    with pytest.raises(UserError, match=rf"{f.name}: unreadable Parquet part"):
        Store(tmp_path).read_split("m", "d", "test")
    with pytest.raises(UserError, match=rf"{f.name}: checksum differs"):  # full verification
        Store(tmp_path, verify=True).split_info("m", "d", "test")


def test_truncated_or_deleted_part_changes_the_fast_path(tmp_path):
    """content_key (the no-change fast path) stats every part: truncated or deleted parts
    are errors naming the file; a touched part changes the key."""
    _write(tmp_path, "m", "d", "test", 50, 3)
    s = Store(tmp_path)
    k0 = s.content_key("m", "d")
    f = _part(tmp_path, "test", 0)
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    assert s.content_key("m", "d") != k0
    f.write_bytes(f.read_bytes()[:-10])
    with pytest.raises(UserError, match=rf"{f.name}: \d+ bytes, but .* records"):
        s.content_key("m", "d")
    f.unlink()
    with pytest.raises(UserError, match=rf"{f.name}: missing"):
        s.content_key("m", "d")


def test_corrupt_cell_record_or_manifest_is_one_line(tmp_path):
    _write(tmp_path, "m", "d", "test", 20, 3)
    cell = cf.cell_dir(tmp_path, "m", "d")
    m = cf.manifest_file(cell, "test")
    m.write_text("{not json")
    with pytest.raises(UserError, match=rf"{m.name}: unreadable record"):
        Store(tmp_path).split_info("m", "d", "test")
    (cell / cf.CELL_RECORD).write_bytes(b"\x00\x01")
    with pytest.raises(UserError, match=r"_cell.json: unreadable record"):
        Store(tmp_path).cell_info("m", "d")
