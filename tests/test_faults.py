"""Fault injection: kill -9 at named points, corrupted parts, caches and manifests,
failing runs over good results, read-only and full stores, concurrent runs.

Every test asserts the store's bytes (a sha256 snapshot of every file), not only exit
codes. Kills use ``GLA_FAULT_KILL=<point>[:n]`` (``extract.records.fault_point``) in a
subprocess, which SIGKILLs itself at that point.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gla.extract import cellformat as cf
from gla.extract import records
from gla.pipeline.store import Store

REPO = Path(__file__).resolve().parents[1]
GLA = [sys.executable, "-m", "gla.pipeline.cli"]


def snapshot(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of every file under ``folder`` (relative path -> digest)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if p.is_file() and not rel.startswith(skip):
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def gla(*args, env=None, check=None) -> subprocess.CompletedProcess:
    e = {**os.environ, "OMP_NUM_THREADS": "1", "POLARS_MAX_THREADS": "1", **(env or {})}
    r = subprocess.run([*GLA, *map(str, args)], capture_output=True, text=True, env=e, timeout=300)
    if check is not None:
        assert r.returncode == check, r.stderr[-3000:]
    return r


def write_arrays(folder: Path, n: int, c: int, seed: int, ft: bool = True) -> dict[str, Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    y = np.concatenate([np.arange(c), rng.integers(0, c, n - c)])
    out = {"labels": folder / "y.npy", "zs": folder / "zs.npy"}
    np.save(out["labels"], y)
    np.save(out["zs"], (rng.standard_normal((n, c)) * 2).astype(np.float32))
    if ft:
        out["ft"] = folder / "ft.npy"
        np.save(out["ft"], (rng.standard_normal((n, c)) * 2).astype(np.float32))
    return out


def import_split(store: Path, model: str, dataset: str, split: str, arrays: dict[str, Path],
                 env=None, check=0) -> subprocess.CompletedProcess:
    args = ["import", "--store", store, "--model", model, "--dataset", dataset, "--split", split,
            "--labels", arrays["labels"], "--zs", arrays["zs"]]
    if "ft" in arrays:
        args += ["--ft", arrays["ft"]]
    return gla(*args, env=env, check=check)


@pytest.fixture
def two_cells(tmp_path) -> Path:
    """A store of two imported cells (val + test each)."""
    store = tmp_path / "S"
    for i, (m, d) in enumerate((("m1", "d"), ("m2", "d"))):
        import_split(store, m, d, "val", write_arrays(tmp_path / f"a{i}v", 40, 5, 10 * i))
        import_split(store, m, d, "test", write_arrays(tmp_path / f"a{i}t", 120, 5, 10 * i + 1))
    return store


# --------------------------------------------------------------------------- import (built aside)


@pytest.mark.parametrize("point", ["part-written", "split-sealed", "cell-committed"])
def test_kill_during_reimport_leaves_old_split_or_new_one(two_cells, tmp_path, point):
    """kill -9 while a split is re-imported: before the cell record is written the old
    generation is the cell, byte for byte; after it, the new one is, whole."""
    cell = cf.cell_dir(two_cells, "m1", "d")
    before = snapshot(cell)
    old = Store(two_cells).read_split("m1", "d", "test")
    new = write_arrays(tmp_path / "new", 120, 5, 99)
    r = import_split(two_cells, "m1", "d", "test", new, env={records.FAULT_ENV: point}, check=None)
    assert r.returncode == -signal.SIGKILL, r.stderr
    got = Store(two_cells).read_split("m1", "d", "test")
    if point == "cell-committed":
        np.testing.assert_array_equal(got.zs, np.load(new["zs"]))
    else:
        np.testing.assert_array_equal(got.zs, old.zs)
        now = snapshot(cell)
        assert {k: now[k] for k in before} == before  # the old files are untouched
    # the next write sweeps what the killed one left
    import_split(two_cells, "m1", "d", "test", new)
    assert len(list(cell.glob("part-*"))) == 2 and len(list(cell.glob("_split-*"))) == 2


def test_import_of_val_leaves_val_hard_alone(tmp_path):
    store = tmp_path / "S"
    import_split(store, "m", "d", "val-hard", write_arrays(tmp_path / "h", 30, 4, 1))
    cell = cf.cell_dir(store, "m", "d")
    hard = {f.name: f.read_bytes() for f in Store(store).split_info("m", "d", "val-hard").files}
    import_split(store, "m", "d", "val", write_arrays(tmp_path / "v", 30, 4, 2))
    import_split(store, "m", "d", "val", write_arrays(tmp_path / "v2", 30, 4, 3))
    assert {f.name: f.read_bytes() for f in Store(store).split_info("m", "d", "val-hard").files} == hard
    assert sorted(Store(store).splits("m", "d")) == ["val", "val-hard"]
    assert len(list(cell.glob("part-*"))) == 2


# --------------------------------------------------------------------------- corrupted inputs


def _overwrite_in_place(path: Path) -> None:
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 32] = bytes(32)
    path.write_bytes(bytes(data))


def test_corrupt_part_stops_analysis_naming_it(two_cells):
    gla("analyze", "--store", two_cells, "--quiet", "--workers", "0", check=0)
    results_before = snapshot(two_cells / "results")
    part = Store(two_cells).split_info("m2", "d", "test").files[0]
    _overwrite_in_place(part)
    r = gla("analyze", "--store", two_cells, "--quiet", "--workers", "0", check=2)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and part.name in lines[0], r.stderr
    assert snapshot(two_cells / "results") == results_before


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_truncated_or_deleted_part_seen_without_force(two_cells, damage):
    gla("analyze", "--store", two_cells, "--quiet", "--workers", "0", check=0)
    results_before = snapshot(two_cells / "results")
    part = Store(two_cells).split_info("m1", "d", "val").files[0]
    if damage == "truncate":
        part.write_bytes(part.read_bytes()[:-100])
    else:
        part.unlink()
    r = gla("analyze", "--store", two_cells, "--quiet", "--workers", "0", check=2)
    assert len(r.stderr.strip().splitlines()) == 1 and part.name in r.stderr, r.stderr
    assert snapshot(two_cells / "results") == results_before


def test_corrupt_manifest_or_cell_record_is_one_line(two_cells):
    gla("analyze", "--store", two_cells, "--quiet", "--workers", "0", check=0)
    results_before = snapshot(two_cells / "results")
    cell = cf.cell_dir(two_cells, "m1", "d")
    manifest = cf.manifest_file(cell, "test")
    manifest.write_text('{"parts": ')
    r = gla("analyze", "--store", two_cells, "--quiet", "--workers", "0", check=2)
    assert len(r.stderr.strip().splitlines()) == 1 and manifest.name in r.stderr, r.stderr
    (cell / cf.CELL_RECORD).write_text("garbage")
    r = gla("analyze", "--store", two_cells, "--quiet", "--workers", "0", check=2)
    assert len(r.stderr.strip().splitlines()) == 1 and cf.CELL_RECORD in r.stderr, r.stderr
    assert snapshot(two_cells / "results") == results_before


def test_corrupt_cell_cache_is_rebuilt(two_cells):
    """An unreadable or damaged per-cell cache is analysed again (always safe), and the
    rebuilt results are the same bytes."""
    gla("analyze", "--store", two_cells, "--quiet", "--workers", "0", check=0)
    results = snapshot(two_cells / "results", skip=("cells",))
    cache = two_cells / "results" / "cells" / "m1" / "d"
    (cache / "key.json").write_text("{broken")
    _overwrite_in_place(cache / "summary.parquet")
    gla("analyze", "--store", two_cells, "--quiet", "--workers", "0", check=0)
    assert snapshot(two_cells / "results", skip=("cells",)) == results
    import polars as pl

    assert pl.read_parquet(cache / "summary.parquet").height > 0
