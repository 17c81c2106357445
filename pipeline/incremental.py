"""Incremental analysis: per-cell result caches keyed by the content of their inputs.

Every cell's analysis outputs are cached under
``<store>/results/cells/<model>/<dataset>/`` as ``summary``, ``per_class``, ``priors``
and ``calibration`` Parquet tables plus ``key.json``, written last. The key hashes
everything the outputs depend on:

- the cell's inputs: each sealed split's manifest ``write_id`` and row count (a rewrite
  of a split always gets a fresh ``write_id``) and the dataset's class-counts file
  (``Store.content_key``);
- the analysis options (canonical JSON; a target-prior file by its content hash);
- the schema version, this cache's format version and a hash of the analysis code
  (``analyze/*.py``, ``pipeline/analysis.py``, ``pipeline/store.py``,
  ``pipeline/incremental.py``).

A rerun computes the keys (reads a few small JSON files per cell, no logits), skips
every cell whose cache carries its key and recomputes only the rest, fanned out over
the runner. The combined tables ``<store>/results/{summary,per_class,priors,calibration}.parquet``
are then rebuilt from the current caches, each written to a temporary file and renamed
(never half-written); if the set of cell keys is unchanged and the tables exist, they
are left alone, so a no-change rerun does no work. Cells whose logits were deleted
drop out: their caches are removed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gla.analyze import schema
from gla.analyze.schema import CONTRACT, TABLES
from gla.extract import cellformat as cf
from gla.pipeline.errors import UserError

CACHE_VERSION = 1
KEY_FILE = "key.json"
COMBINED_FILE = "_combined.json"  # in results/cells/: which cell caches the tables hold
_CODE_FILES = ("pipeline/analysis.py", "pipeline/store.py", "pipeline/incremental.py")

Cell = tuple[str, str]


# --------------------------------------------------------------------------- keys


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Hash of the code the cached outputs depend on (changes invalidate every cache)."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256(f"cache={CACHE_VERSION};schema={cf.SCHEMA_VERSION}".encode())
    files = sorted((root / "analyze").glob("*.py")) + [root / f for f in _CODE_FILES]
    for f in files:
        with contextlib.suppress(OSError):
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def _plain(obj: Any) -> Any:
    """Options as plain JSON-able data, canonical (sorted keys, tuples as lists)."""
    if hasattr(obj, "model_dump"):
        obj = obj.model_dump()
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy arrays and scalars
        return obj.tolist()
    return obj


def options_fingerprint(options: Any) -> str:
    """Canonical JSON of the options; a target-prior file enters by its content hash.

    Options that know their own fingerprint (``AnalyzeOptions.fingerprint()``: leaves out
    batch size and threads, which do not change results) provide it."""
    if callable(getattr(options, "fingerprint", None)):
        return f"{type(options).__name__}:{options.fingerprint()}"
    plain = _plain(options)
    if isinstance(plain, dict):
        tp = plain.get("target_prior")
        if isinstance(tp, str) and tp and Path(tp).is_file():
            plain = {**plain, "target_prior": f"{tp}#sha256={cf.file_sha256(tp)[:16]}"}
    return json.dumps(plain, sort_keys=True, default=str)


def cell_key(store: Any, model: str, dataset: str, options_fp: str) -> str:
    """The content key of one cell's analysis outputs."""
    h = hashlib.sha256()
    h.update(f"code={code_version()}\n".encode())
    h.update(f"inputs={store.content_key(model, dataset)}\n".encode())
    h.update(f"options={options_fp}\n".encode())
    return h.hexdigest()[:24]


# --------------------------------------------------------------------------- cache files


def cache_dir(store_root: str | Path, model: str, dataset: str) -> Path:
    return Path(store_root) / "results" / "cells" / model / dataset


def read_key(store_root: str | Path, model: str, dataset: str) -> dict[str, Any] | None:
    path = cache_dir(store_root, model, dataset) / KEY_FILE
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def is_current(store_root: str | Path, model: str, dataset: str, key: str) -> bool:
    doc = read_key(store_root, model, dataset)
    if not doc or doc.get("key") != key:
        return False
    d = cache_dir(store_root, model, dataset)
    return all((d / f).exists() for f in doc.get("files", []))


def write_cell_cache(
    store_root: str | Path, model: str, dataset: str, key: str, tables: dict[str, Any], info: dict
) -> Path:
    """Write a cell's tables, then its key (last). The old key goes first, so a crash
    in between leaves no key that vouches for tables it does not describe."""
    d = cache_dir(store_root, model, dataset)
    d.mkdir(parents=True, exist_ok=True)
    (d / KEY_FILE).unlink(missing_ok=True)
    files = []
    for name in TABLES:
        df = tables.get(name)
        target = d / f"{name}.parquet"
        if df is None:
            target.unlink(missing_ok=True)
            continue
        cf.atomic_write_table(target, df.to_arrow() if hasattr(df, "to_arrow") else df)
        files.append(target.name)
    doc = {"key": key, "model": model, "dataset": dataset, "files": files, "written": time.time(), **info}
    cf.atomic_write_bytes(d / KEY_FILE, json.dumps(doc, indent=1, sort_keys=True).encode())
    return d


def load_cache(store_root: str | Path, model: str, dataset: str) -> dict[str, Any]:
    """A cell's cached tables (polars; missing ones None), key and diagnostics."""
    import polars as pl

    doc = read_key(store_root, model, dataset)
    if doc is None:
        raise UserError(f"{cache_dir(store_root, model, dataset)}: no cached results")
    d = cache_dir(store_root, model, dataset)
    out: dict[str, Any] = {"key": doc.get("key"), "diagnostics": doc.get("diagnostics") or {}}
    for name in TABLES:
        f = d / f"{name}.parquet"
        out[name] = pl.read_parquet(f) if f.exists() else None
    return out


# --------------------------------------------------------------------------- one cell (worker side)


def result_tables(result: Any) -> dict[str, Any]:
    """The tables of a cell's analysis: a {name: DataFrame} dict, or an object with
    ``.tables`` (CellResult), attributes or a tuple in ``TABLES`` order."""
    if hasattr(result, "tables"):
        result = result.tables
    if isinstance(result, tuple | list):
        return dict(zip(TABLES, result, strict=False))
    if isinstance(result, dict):
        return {k: result.get(k) for k in TABLES}
    return {k: getattr(result, k, None) for k in TABLES}


@dataclass(frozen=True)
class CellTask:
    """One cell to analyse (picklable; the worker computes and writes its cache)."""

    store: str
    model: str
    dataset: str
    key: str
    options: Any
    analyze_fn: Callable[..., Any] | None = None

    @property
    def name(self) -> str:
        return f"{self.model}/{self.dataset}"


def run_cell_task(task: CellTask) -> dict[str, Any]:
    """Analyse one cell and write its cache. Runs inside a Dask worker (or in-process)."""
    t0 = time.perf_counter()
    fn = task.analyze_fn
    if fn is None:
        from gla.pipeline.analysis import analyze_cell as fn
    from gla.pipeline.store import Store

    result = fn(Store(task.store), task.model, task.dataset, task.options)
    tables = result_tables(result)
    if tables.get("summary") is None:
        raise RuntimeError("analysis returned no summary table")
    seconds = time.perf_counter() - t0
    diagnostics = getattr(result, "diagnostics", None) or {}
    diagnostics = json.loads(json.dumps(diagnostics, default=str))  # plain JSON
    write_cell_cache(task.store, task.model, task.dataset, task.key, tables,
                     {"seconds": seconds, "diagnostics": diagnostics})
    return {"key": task.key, "seconds": seconds, "rows": int(tables["summary"].height)}


# --------------------------------------------------------------------------- the matrix


@dataclass
class AnalyzeSummary:
    cells: list[Cell] = field(default_factory=list)  # live cells considered
    computed: list[Cell] = field(default_factory=list)
    cached: list[Cell] = field(default_factory=list)
    failed: list[Any] = field(default_factory=list)  # runner.CellError
    removed: list[Cell] = field(default_factory=list)  # stale caches dropped
    left_out: list[Cell] = field(default_factory=list)  # live cells not in the tables
    not_selected: list[Cell] = field(default_factory=list)  # in the tables with their last results
    tables_written: bool = False
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def line(self) -> str:
        parts = [
            f"{len(self.cells)} cell(s)",
            f"{len(self.computed)} analysed",
            f"{len(self.cached)} unchanged",
        ]
        if self.failed:
            parts.append(f"{len(self.failed)} failed")
        if self.removed:
            parts.append(f"{len(self.removed)} stale removed")
        parts.append("tables rebuilt" if self.tables_written else "tables unchanged")
        return ", ".join(parts) + f" ({self.seconds:.2f} s)"


def prune_stale(store_root: str | Path, live: Sequence[Cell]) -> list[Cell]:
    """Remove caches of cells that no longer exist under logits/."""
    base = Path(store_root) / "results" / "cells"
    if not base.is_dir():
        return []
    keep = set(live)
    removed = []
    for mdir in sorted(p for p in base.iterdir() if p.is_dir()):
        for ddir in sorted(p for p in mdir.iterdir() if p.is_dir()):
            if (mdir.name, ddir.name) not in keep:
                shutil.rmtree(ddir, ignore_errors=True)
                removed.append((mdir.name, ddir.name))
        with contextlib.suppress(OSError):
            mdir.rmdir()  # only if empty
    return removed


def combine(store_root: str | Path, cells: Sequence[Cell], keys: dict[Cell, str], *, force: bool = False) -> bool:
    """Rebuild the combined tables from the cells' caches. Returns False when the set of
    cell keys is the one the current tables were built from (nothing written)."""
    import polars as pl

    results = Path(store_root) / "results"
    marker = results / "cells" / COMBINED_FILE
    doc = {"version": CACHE_VERSION, "cells": {f"{m}/{d}": keys[(m, d)] for m, d in sorted(cells)}}
    if not force and marker.exists():
        try:
            old = json.loads(marker.read_text())
        except ValueError:
            old = None
        if old == doc and all(_readable(results / f"{n}.parquet") for n in CONTRACT):
            return False
    marker.unlink(missing_ok=True)
    # All tables go to temporary files first; only when every one is written are they
    # renamed into place, so a failure leaves the previous tables untouched.
    staged: dict[Path, Path | None] = {}
    results.mkdir(parents=True, exist_ok=True)
    try:
        for name in TABLES:
            files = [cache_dir(store_root, m, d) / f"{name}.parquet" for m, d in sorted(cells)]
            files = [f for f in files if f.exists()]
            target = results / f"{name}.parquet"
            if not files:
                if schema.table(name).optional:
                    staged[target] = None
                    continue
                df = schema.empty(name)
            else:
                # Lazy scans collected together: polars reads the files in parallel.
                df = pl.concat([pl.scan_parquet(f) for f in files], how="diagonal_relaxed").collect()
            tmp = results / f".{name}.parquet.{os.getpid()}.staged"
            staged[target] = tmp
            df.write_parquet(tmp)
        for target, tmp in staged.items():
            if tmp is None:
                target.unlink(missing_ok=True)
            else:
                os.replace(tmp, target)
    finally:
        for tmp in staged.values():
            if tmp is not None:
                tmp.unlink(missing_ok=True)
    cf.atomic_write_bytes(marker, json.dumps(doc, indent=1, sort_keys=True).encode())
    return True


def _readable(path: Path) -> bool:
    """The file exists and has a valid Parquet footer (cheap: reads the footer only)."""
    import pyarrow.parquet as pq

    try:
        pq.read_metadata(path)
    except Exception:  # noqa: BLE001 - missing, truncated or not Parquet: rebuild it
        return False
    return True


def _with_threads(options: Any, threads: int) -> Any:
    """On a cluster a cell uses its worker's threads (not its own pool of min(2, cores))."""
    if dataclasses.is_dataclass(options) and "threads" in {f.name for f in dataclasses.fields(options)}:
        if not getattr(options, "threads", 0):
            return dataclasses.replace(options, threads=threads)
    return options


SMALL_ROWS = 200_000  # less work than this (rows to analyse) is not worth starting a cluster


def _rows(store_root: Path, model: str, dataset: str) -> int:
    cell = cf.cell_dir(store_root, model, dataset)
    return sum(int((cf.read_manifest(cell, s) or {}).get("rows", 0)) for s in cf.sealed_splits(cell))


def analyze_cells(
    store: Any,
    options: Any,
    *,
    cells: Sequence[Cell] | None = None,
    runner: Any = None,
    compute: Any = None,
    force: bool = False,
    strict: bool = False,
    analyze_fn: Callable[..., Any] | None = None,
    log: Callable[[str], None] | None = None,
) -> AnalyzeSummary:
    """Bring the store's results up to date: analyse the selected cells whose key changed.

    ``cells`` selects the cells to bring up to date (default: every cell). The combined
    tables then hold, for every live cell, its cache: the current one for selected
    cells (a selected cell that failed is left out: its old results describe other
    inputs or options) and the latest one for cells not selected. With ``strict`` a
    failure leaves the combined tables untouched (the successful cells' caches are
    kept, so a rerun after the fix recomputes only the failed cells).

    ``runner`` (a ``pipeline.runner.Runner``) or ``compute`` (its options) runs the
    cells; no cluster starts when nothing needs computing, nor for a little work when
    the worker count was left to the runner.
    """
    from gla.pipeline.runner import CellError, Runner
    from gla.pipeline.store import Store

    t0 = time.perf_counter()
    store = store if hasattr(store, "content_key") else Store(store)
    root = Path(store.root)
    live = store.cells()
    summary = AnalyzeSummary(cells=list(live))
    if not live:
        raise UserError(f"{root}: no logit cells (logits/<model>/<dataset>/ with a sealed split)")
    unknown = sorted(set(cells or []) - set(live))
    if unknown:
        raise UserError(
            f"{root}: no logit cell {unknown[0][0]}/{unknown[0][1]} (cells present: "
            + ", ".join(f"{m}/{d}" for m, d in live[:8])
            + (" …)" if len(live) > 8 else ")")
        )
    summary.removed = prune_stale(root, live)
    selected = set(live if cells is None else cells)
    fp = options_fingerprint(options)
    keys = {c: cell_key(store, c[0], c[1], fp) for c in live if c in selected}
    todo = []
    for c in live:
        if c not in selected:
            continue
        if force or not is_current(root, c[0], c[1], keys[c]):
            todo.append(CellTask(str(root), c[0], c[1], keys[c], options, analyze_fn))
        else:
            summary.cached.append(c)
    if todo:
        own = runner is None
        r = Runner(compute, log=log) if own else runner
        small = len(todo) <= 1 or sum(_rows(root, t.model, t.dataset) for t in todo) < SMALL_ROWS
        if not r.runs_here(small):
            todo = [dataclasses.replace(t, options=_with_threads(t.options, r.opts.threads_per_worker)) for t in todo]
        try:
            outcomes = r.map(run_cell_task, todo, key=lambda t: t.name, description="analyse", small=small)
        finally:
            if own:
                r.close()
        for task, out in outcomes:
            if isinstance(out, CellError):
                summary.failed.append(out)
            else:
                summary.computed.append((task.model, task.dataset))
    included: dict[Cell, str] = {}
    for c in live:
        if c in selected:
            if is_current(root, c[0], c[1], keys[c]):
                included[c] = keys[c]
            else:
                summary.left_out.append(c)
            continue
        doc = read_key(root, c[0], c[1])
        if doc and all((cache_dir(root, *c) / f).exists() for f in doc.get("files", [])):
            included[c] = str(doc.get("key"))
            summary.not_selected.append(c)
        else:
            summary.left_out.append(c)
    if not (strict and summary.failed):
        summary.tables_written = combine(root, list(included), included, force=force)
    summary.seconds = time.perf_counter() - t0
    if log is not None:
        for err in summary.failed:
            log(f"cell {err.key} failed: {err.error}")
        if summary.not_selected and cells is not None:
            log(f"{len(summary.not_selected)} cell(s) not selected keep their last results")
        never = [c for c in summary.left_out if f"{c[0]}/{c[1]}" not in {e.key for e in summary.failed}]
        if never:
            log(
                f"{len(never)} cell(s) have no results yet and are not in the tables ("
                + ", ".join(f"{m}/{d}" for m, d in never[:5])
                + (" …)" if len(never) > 5 else ")")
            )
    return summary
