"""``gla import``: bring-your-own logits and training counts."""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from gla.pipeline.cli import main
from gla.pipeline.store import Store

C = 5


def _snapshot(root):
    """Bytes of every file under root (to prove a failed command wrote nothing)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


def _gla(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def arrays(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "in"
    d.mkdir()
    out = {}
    for split, n in (("val", 20), ("test", 60)):
        y = np.tile(np.arange(C), n // C)
        zs = rng.standard_normal((n, C)).astype(np.float32)
        ft = rng.standard_normal((n, C)).astype(np.float32)
        np.save(d / f"y_{split}.npy", y)
        np.save(d / f"zs_{split}.npy", zs)
        np.save(d / f"ft_{split}.npy", ft)
        out[split] = (y, zs, ft)
    (d / "names.txt").write_text("\n".join(f"name{i}" for i in range(C)) + "\n")
    return d, out


def _import(capsys, store, d, split, model="m", dataset="d", ft=True, extra=()):
    args = ["import", "--store", store, "--model", model, "--dataset", dataset, "--split", split,
            "--labels", d / f"y_{split}.npy", "--zs", d / f"zs_{split}.npy"]
    if ft:
        args += ["--ft", d / f"ft_{split}.npy"]
    return _gla(capsys, *args, *extra)


def test_import_npy_round_trip(tmp_path, capsys, arrays):
    d, data = arrays
    store = tmp_path / "S"
    assert _import(capsys, store, d, "val", extra=["--classnames", d / "names.txt"])[0] == 0
    assert _import(capsys, store, d, "test")[0] == 0
    s = Store(store)
    assert s.cells() == [("m", "d")]
    info = s.cell_info("m", "d")
    assert info.class_names == tuple(f"name{i}" for i in range(C))  # kept from the val import
    assert info.has_ft and set(info.splits) == {"val", "test"}
    for split in ("val", "test"):
        got = s.read_split("m", "d", split, columns=("label", "zs", "ft", "sample_id"))
        y, zs, ft = data[split]
        np.testing.assert_array_equal(got.labels, y)
        np.testing.assert_array_equal(got.zs, zs)
        np.testing.assert_array_equal(got.ft, ft)
        assert got.sample_ids.to_pylist() == [f"{split}-{i}" for i in range(len(y))]
        t = pq.read_table(info.splits[split].files[0])
        assert t.column("split").to_pylist() == [split] * len(y)
        assert t.schema.field("label").type == pa.int32()


def test_class_names_default_and_shared_across_models(tmp_path, capsys, arrays):
    d, _ = arrays
    store = tmp_path / "S"
    assert _import(capsys, store, d, "val", model="a", ft=False)[0] == 0
    assert Store(store).cell_info("a", "d").class_names == tuple(f"class_{i}" for i in range(C))
    assert _import(capsys, store, d, "val", model="b", dataset="e", ft=False,
                   extra=["--classnames", d / "names.txt"])[0] == 0
    # a new model on dataset e reuses e's class names
    assert _import(capsys, store, d, "val", model="c", dataset="e", ft=False)[0] == 0
    assert Store(store).cell_info("c", "e").class_names[0] == "name0"


def test_import_npz_parquet_and_ids(tmp_path, capsys, arrays):
    d, data = arrays
    y, zs, ft = data["test"]
    np.savez(d / "all.npz", labels=y, zs=zs, ft=ft)
    np.savez(d / "one.npz", zs)
    pq.write_table(pa.table({"label": y, "zs": pa.FixedSizeListArray.from_arrays(
        pa.array(zs.reshape(-1)), C)}), d / "list.parquet")
    pq.write_table(pa.table({f"c{k}": ft[:, k] for k in range(C)}), d / "cols.parquet")
    pq.write_table(pa.table({"zs": pa.array(list(zs)), "other": np.zeros(len(y))}),
                   d / "varlist.parquet")
    (d / "ids.txt").write_text("\n".join(f"img{i:03d}" for i in range(len(y))))
    store = tmp_path / "S"
    code, out, err = _gla(capsys, "import", "--store", store, "--model", "m", "--dataset", "d",
                          "--split", "test", "--labels", f"{d / 'all.npz'}:labels",
                          "--zs", d / "list.parquet", "--ft", d / "cols.parquet",
                          "--sample-ids", d / "ids.txt")
    assert code == 0, err
    got = Store(store).read_split("m", "d", "test", columns=("label", "zs", "ft", "sample_id"))
    np.testing.assert_array_equal(got.zs, zs)
    np.testing.assert_array_equal(got.ft, ft)
    np.testing.assert_array_equal(got.labels, y)
    assert got.sample_ids.to_pylist()[:2] == ["img000", "img001"]
    code, _, err = _gla(capsys, "import", "--store", store, "--model", "m2", "--dataset", "d",
                        "--split", "test", "--labels", f"{d / 'list.parquet'}:label",
                        "--zs", d / "one.npz")
    assert code == 0, err
    np.testing.assert_array_equal(Store(store).read_split("m2", "d", "test").zs, zs)
    code, _, err = _gla(capsys, "import", "--store", store, "--model", "m3", "--dataset", "d",
                        "--split", "test", "--labels", d / "y_test.npy",
                        "--zs", d / "varlist.parquet")
    assert code == 0, err
    np.testing.assert_array_equal(Store(store).read_split("m3", "d", "test").zs, zs)


def test_float16_input_kept_float16_and_read_as_float32(tmp_path, capsys, arrays):
    d, data = arrays
    y, zs, _ = data["test"]
    np.save(d / "zs16.npy", zs.astype(np.float16))
    store = tmp_path / "S"
    code, _, err = _gla(capsys, "import", "--store", store, "--model", "m", "--dataset", "d",
                        "--split", "test", "--labels", d / "y_test.npy", "--zs", d / "zs16.npy")
    assert code == 0, err
    s = Store(store)
    assert s.split_info("m", "d", "test").logit_dtype == "halffloat"
    got = s.read_split("m", "d", "test").zs
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, zs.astype(np.float16).astype(np.float32))


def test_reimport_replaces_only_that_split(tmp_path, capsys, arrays):
    d, data = arrays
    store = tmp_path / "S"
    _import(capsys, store, d, "val")
    _import(capsys, store, d, "test")
    val_files = {k: v for k, v in _snapshot(store).items() if "val" in k}
    key = Store(store).content_key("m", "d")
    np.save(d / "zs_test.npy", data["test"][1] + 1)
    assert _import(capsys, store, d, "test")[0] == 0
    after = _snapshot(store)
    assert {k: v for k, v in after.items() if "val" in k} == val_files
    np.testing.assert_array_equal(Store(store).read_split("m", "d", "test").zs, data["test"][1] + 1)
    assert Store(store).content_key("m", "d") != key


def test_train_counts_npy_and_csv(tmp_path, capsys, arrays):
    d, _ = arrays
    store = tmp_path / "S"
    _import(capsys, store, d, "val", extra=["--classnames", d / "names.txt"])
    np.save(d / "counts.npy", np.array([500, 120, 50, 10, 1]))
    code, out, err = _gla(capsys, "import", "--store", store, "--dataset", "d",
                          "--train-counts", d / "counts.npy")
    assert code == 0, err
    cc = Store(store).read_class_counts("d")
    np.testing.assert_array_equal(cc.counts, [500, 120, 50, 10, 1])
    assert cc.class_names[0] == "name0"  # taken from the dataset's cells
    (d / "counts.csv").write_text("class_index,count\n3,4\n0,10\n1,2\n2,0\n4,9\n")
    assert _gla(capsys, "import", "--store", store, "--dataset", "d",
                "--train-counts", d / "counts.csv")[0] == 0
    np.testing.assert_array_equal(Store(store).read_class_counts("d").counts, [10, 2, 0, 4, 9])
    (d / "nohead.csv").write_text("0,1\n1,2\n")
    assert _gla(capsys, "import", "--store", tmp_path / "T", "--dataset", "x",
                "--train-counts", d / "nohead.csv")[0] == 0
    np.testing.assert_array_equal(Store(tmp_path / "T").read_class_counts("x").counts, [1, 2])


def _bad_inputs(d, data):
    """(name, files to write, argv after 'import --store S', expected fragment of the message)."""
    y, zs, ft = data["test"]
    nan = zs.copy()
    nan[7, 2] = np.nan
    np.save(d / "nan.npy", nan)
    np.save(d / "wide.npy", np.zeros((len(y), C + 1), np.float32))
    np.save(d / "y_bad.npy", np.where(np.arange(len(y)) == 3, C, y))
    np.save(d / "y_short.npy", y[:-1])
    np.save(d / "y_frac.npy", y + 0.5)
    np.save(d / "zs1d.npy", zs[:, 0])
    np.savez(d / "two.npz", a=zs, b=zs)
    (d / "names4.txt").write_text("a\nb\nc\nd\n")
    (d / "dup_ids.txt").write_text("\n".join(["x"] * len(y)))
    (d / "val_ids.txt").write_text("\n".join(["val-0"] + [f"t{i}" for i in range(1, len(y))]))
    np.save(d / "neg.npy", np.array([1, -1, 3, 4, 5]))
    np.save(d / "c4.npy", np.array([1, 2, 3, 4]))
    (d / "bad.csv").write_text("class_index,count\n0,1\n1,x\n")
    (d / "hi.csv").write_text("class_index,count\n0,1\n9,2\n")
    base = ["--model", "m", "--dataset", "d", "--split", "test"]
    good_y, good_zs = ["--labels", d / "y_test.npy"], ["--zs", d / "zs_test.npy"]
    return [
        ("nan", [*base, *good_y, "--zs", d / "nan.npy"], "nan.npy: zs logits have NaN/Inf (first at row 7, class 2)"),
        ("ft width", [*base, *good_y, *good_zs, "--ft", d / "wide.npy"], "wide.npy: ft logits have 6 columns but zs has 5"),
        ("label range", [*base, "--labels", d / "y_bad.npy", *good_zs], "y_bad.npy: label 5 at row 3 is out of range"),
        ("label count", [*base, "--labels", d / "y_short.npy", *good_zs], "y_short.npy: 59 labels but"),
        ("label frac", [*base, "--labels", d / "y_frac.npy", *good_zs], "y_frac.npy: labels must be integers"),
        ("zs 1d", [*base, *good_y, "--zs", d / "zs1d.npy"], "zs1d.npy: zs logits must be 2-D"),
        ("npz keys", [*base, *good_y, "--zs", d / "two.npz"], "two.npz: holds 2 arrays (a, b)"),
        ("npz key", [*base, *good_y, "--zs", f"{d / 'two.npz'}:c"], "two.npz: key c not found"),
        ("missing file", [*base, *good_y, "--zs", d / "nope.npy"], "nope.npy: file not found"),
        ("names", [*base, *good_y, *good_zs, "--ft", d / "ft_test.npy", "--classnames", d / "names4.txt"], "names4.txt: 4 class names but zs has 5 columns"),
        ("width vs split", [*base, *good_y, "--zs", d / "wide.npy", "--ft", d / "wide.npy"], "wide.npy: zs logits have 6 columns but split 'val'"),
        ("ft presence", [*base, *good_y, *good_zs], "--ft: split 'val' of m/d has ft logits"),
        ("dup ids", [*base, *good_y, *good_zs, "--ft", d / "ft_test.npy", "--sample-ids", d / "dup_ids.txt"], "dup_ids.txt: sample id 'x' appears twice"),
        ("ids across splits", [*base, *good_y, *good_zs, "--ft", d / "ft_test.npy", "--sample-ids", d / "val_ids.txt"], "sample id 'val-0' is already used in"),
        ("bad split name", ["--model", "m", "--dataset", "d", "--split", "a/b", *good_y, *good_zs], "--split: split name 'a/b' is not usable"),
        ("missing zs", [*base, *good_y], "--zs is required"),
        ("counts neg", ["--dataset", "d", "--train-counts", d / "neg.npy"], "neg.npy: counts must be >= 0 (class 1)"),
        ("counts C", ["--dataset", "d", "--train-counts", d / "c4.npy"], "c4.npy: 4 counts but the cells of dataset d have 5 classes"),
        ("counts csv", ["--dataset", "d", "--train-counts", d / "bad.csv"], "bad.csv: line 3: expected integers"),
        ("counts range", ["--dataset", "d", "--train-counts", d / "hi.csv"], "hi.csv: column class_index has 9, out of range [0, 4]"),
        ("counts + zs", ["--dataset", "d", "--train-counts", d / "c4.npy", *good_zs], "--train-counts cannot be combined with --zs"),
    ]


def test_bad_inputs_exit_2_one_line_nothing_written(tmp_path, capsys, arrays):
    d, data = arrays
    store = tmp_path / "S"
    assert _import(capsys, store, d, "val")[0] == 0
    before = _snapshot(store)
    for name, argv, fragment in _bad_inputs(d, data):
        code, out, err = _gla(capsys, "import", "--store", store, *argv)
        assert code == 2, (name, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1, (name, err)
        assert fragment in lines[0], (name, lines[0])
        assert _snapshot(store) == before, name


def test_out_of_range_numbers_are_one_line_errors_not_warnings(tmp_path, capsys, arrays):
    """Values that would overflow a cast (float64 → float32 logits, float → int labels or
    counts) are refused before the cast: one line on stderr, no numpy warning, no traceback."""
    d, data = arrays
    y, zs, _ = data["test"]
    store = tmp_path / "S"
    assert _import(capsys, store, d, "val")[0] == 0
    before = _snapshot(store)
    big = zs.astype(np.float64)
    big[4, 1] = 1e300
    np.save(d / "big.npy", big)
    np.save(d / "y_huge.npy", np.where(np.arange(len(y)) == 2, 1e30, y))
    np.save(d / "c_nan.npy", np.array([1.0, np.nan, 2, 3, 4]))
    (d / "inf.csv").write_text("class_index,count\n0,1\n1,inf\n")
    base = ["--model", "m", "--dataset", "d", "--split", "test"]
    cases = [
        ([*base, "--labels", d / "y_test.npy", "--zs", d / "big.npy"],
         "big.npy: zs logits exceed the float32 range (first at row 4, class 1)"),
        ([*base, "--labels", d / "y_huge.npy", "--zs", d / "zs_test.npy"],
         "y_huge.npy: labels must be finite integers within ±2^53 (value 1e+30 at row 2)"),
        (["--dataset", "d", "--train-counts", d / "c_nan.npy"],
         "c_nan.npy: counts must be finite integers within ±2^53 (value nan at row 1)"),
        (["--dataset", "d", "--train-counts", d / "inf.csv"],
         "inf.csv: line 3: column count must be an integer"),
    ]
    for argv, fragment in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # pytest would otherwise swallow a numpy warning
            code, _, err = _gla(capsys, "import", "--store", store, *argv)
        assert code == 2, (argv, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and fragment in lines[0], (argv, err)
        assert _snapshot(store) == before, argv
