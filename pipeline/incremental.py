"""Incremental analysis: per-cell result caches keyed by the content of their inputs.

Every cell's analysis outputs are cached under
``<store>/results/cells/<model>/<dataset>/``: one Parquet file per result table the
analysis returned (any table of ``pipeline.results``) plus ``key.json``, written last.
The key hashes everything the outputs depend on:

- the cell's inputs: each sealed split's manifest ``write_id`` and row count (a rewrite
  of a split always gets a fresh ``write_id``) and the dataset's class-counts file
  (``Store.content_key``);
- the analysis options (canonical JSON; a target-prior file by its content hash);
- the schema version, this cache's format version and a hash of the analysis code
  (``analyze/*.py`` and the pipeline modules of ``pipeline.provenance.CODE_FILES``).

A rerun computes the keys (reads a few small JSON files per cell, no logits), skips
every cell whose cache carries its key and recomputes only the rest, fanned out over
the runner. The combined tables ``<store>/results/<table>.parquet`` are then rebuilt
from the current caches, each written to a temporary file and renamed (never
half-written); if the set of cell keys is unchanged and the tables exist, they are left
alone, so a no-change rerun does no work. Cells whose logits were deleted drop out:
their caches are removed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq
from gla.extract import cellformat as cf
from gla.extract import records
from gla.extract.records import IntegrityError
from gla.pipeline import provenance, results
from gla.pipeline.cell_analysis import CellResult, StoreAnalysisOptions, analyze_cell
from gla.pipeline.errors import UserError
from gla.pipeline.runner import CellError, ComputeOptions, Runner
from gla.pipeline.store import Store

CACHE_VERSION = 1
KEY_FILE = "key.json"
COMBINED_FILE = "_combined.json"  # in results/cells/: which cell caches the tables hold

Cell = tuple[str, str]
# What analyses one cell: analyze_cell, or a stand-in returning {table name: DataFrame}.
AnalyzeFn = Callable[[Store, str, str, Any], "CellResult | Mapping[str, pl.DataFrame]"]
Log = Callable[[str], None]


# --------------------------------------------------------------------------- keys


def code_version() -> str:
    """Cache format, store schema and analysis code (``provenance.code_version``): a
    change to any invalidates every cache."""
    return f"{CACHE_VERSION}.{cf.SCHEMA_VERSION}.{provenance.code_version()}"


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

    Options that know their own fingerprint (``StoreAnalysisOptions.fingerprint()``: leaves
    out batch size and threads, which do not change results) provide it."""
    if callable(getattr(options, "fingerprint", None)):
        return f"{type(options).__name__}:{options.fingerprint()}"
    plain = _plain(options)
    if isinstance(plain, dict):
        tp = plain.get("target_prior")
        if isinstance(tp, str) and tp and Path(tp).is_file():
            plain = {**plain, "target_prior": f"{tp}#sha256={cf.file_sha256(tp)[:16]}"}
    return json.dumps(plain, sort_keys=True, default=str)


def analysis_key(store: Store, model: str, dataset: str, options_fp: str) -> str:
    """The content key of one cell's analysis outputs (code, inputs, options)."""
    h = hashlib.sha256()
    h.update(f"code={code_version()}\n".encode())
    h.update(f"inputs={store.content_key(model, dataset)}\n".encode())
    h.update(f"options={options_fp}\n".encode())
    return h.hexdigest()[:24]


# --------------------------------------------------------------------------- cache files


def cache_dir(store_root: str | Path, model: str, dataset: str) -> Path:
    return Path(store_root) / "results" / "cells" / model / dataset


def read_key(store_root: str | Path, model: str, dataset: str) -> dict[str, Any] | None:
    """A cell cache's key record; None when absent or unreadable (the cell is then
    analysed again: rebuilding a cache is always safe)."""
    try:
        return records.read_json(cache_dir(store_root, model, dataset) / KEY_FILE)
    except IntegrityError:
        return None


def _cache_complete(store_root: str | Path, cell: Cell, doc: dict[str, Any] | None) -> bool:
    """Every table the key record lists matches its record (size; sha256 if touched)."""
    if not doc:
        return False
    d = cache_dir(store_root, *cell)
    seals = doc.get("seals") or {}
    try:
        for f in doc.get("files", []):
            records.check_file(d / f, seals.get(f, {}), d / KEY_FILE)
    except IntegrityError:
        return False
    return True


def is_current(store_root: str | Path, model: str, dataset: str, key: str) -> bool:
    doc = read_key(store_root, model, dataset)
    return bool(doc) and doc.get("key") == key and _cache_complete(store_root, (model, dataset), doc)


def write_cell_cache(
    store_root: str | Path, model: str, dataset: str, key: str,
    tables: Mapping[str, pl.DataFrame], info: dict[str, Any],
) -> Path:
    """Write a cell's tables, then its key (last). The old key goes first, so a crash
    in between leaves no key that vouches for tables it does not describe."""
    d = cache_dir(store_root, model, dataset)
    d.mkdir(parents=True, exist_ok=True)
    (d / KEY_FILE).unlink(missing_ok=True)
    files = []
    for name in results.ordered(tables):
        cf.atomic_write_table(d / f"{name}.parquet", tables[name].to_arrow())
        files.append(f"{name}.parquet")
    for old in d.glob("*.parquet"):  # tables this analysis no longer returns
        if old.name not in files:
            old.unlink(missing_ok=True)
    seals = {f: records.file_record(d / f) for f in files}
    doc = {"key": key, "model": model, "dataset": dataset, "files": files, "seals": seals,
           "written": time.time(), **info}
    records.write_json(d / KEY_FILE, doc)
    return d


def load_cache(store_root: str | Path, model: str, dataset: str) -> dict[str, Any]:
    """A cell's cached tables (``tables``: name -> polars), key and diagnostics."""
    doc = read_key(store_root, model, dataset)
    if doc is None:
        raise UserError(f"{cache_dir(store_root, model, dataset)}: no cached results")
    d = cache_dir(store_root, model, dataset)
    tables = {f[: -len(".parquet")]: pl.read_parquet(d / f) for f in doc.get("files", [])}
    return {"key": doc.get("key"), "diagnostics": doc.get("diagnostics") or {}, "tables": tables}


# --------------------------------------------------------------------------- one cell (worker side)


def cell_tables(result: CellResult | Mapping[str, pl.DataFrame]) -> dict[str, pl.DataFrame]:
    """The ``{table name: DataFrame}`` of a cell's analysis (a CellResult or a plain dict)."""
    tables = result.tables if isinstance(result, CellResult) else result
    return {k: v for k, v in tables.items() if v is not None}


@dataclass(frozen=True)
class CellTask:
    """One cell to analyse (picklable; the worker computes and writes its cache)."""

    store: str
    model: str
    dataset: str
    key: str
    options: StoreAnalysisOptions
    analyze_fn: AnalyzeFn | None = None

    @property
    def name(self) -> str:
        return f"{self.model}/{self.dataset}"


def run_cell_task(task: CellTask) -> dict[str, Any]:
    """Analyse one cell and write its cache. Runs inside a Dask worker (or in-process)."""
    t0 = time.perf_counter()
    fn = task.analyze_fn or analyze_cell
    result = fn(Store(task.store), task.model, task.dataset, task.options)
    tables = cell_tables(result)
    if tables.get("summary") is None:
        raise RuntimeError("analysis returned no summary table")
    seconds = time.perf_counter() - t0
    diagnostics = result.diagnostics if isinstance(result, CellResult) else {}
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
    failed: list[CellError] = field(default_factory=list)
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


def _combined_table(store_root: str | Path, name: str, cells: Sequence[Cell]) -> pl.DataFrame | None:
    """One combined table from the cells' caches; None for an optional table no cell has."""
    files = [cache_dir(store_root, m, d) / f"{name}.parquet" for m, d in sorted(cells)]
    files = [f for f in files if f.exists()]
    if not files:
        return None if results.is_optional(name) else results.empty(name)
    # Lazy scans collected together: polars reads the files in parallel.
    return pl.concat([pl.scan_parquet(f) for f in files], how="diagonal_relaxed").collect()


def _cached_table_names(store_root: str | Path, cells: Sequence[Cell]) -> list[str]:
    names = set(results.TABLES)
    for c in cells:
        names.update(f[: -len(".parquet")] for f in (read_key(store_root, *c) or {}).get("files", []))
    return results.ordered(names)


def combine(store_root: str | Path, cells: Sequence[Cell], keys: dict[Cell, str], *, force: bool = False) -> bool:
    """Rebuild the combined tables from the cells' caches. Returns False when the set of
    cell keys is the one the current tables were built from (nothing written)."""
    res = Path(store_root) / "results"
    marker = res / "cells" / COMBINED_FILE
    doc = {"version": CACHE_VERSION, "cells": {f"{m}/{d}": keys[(m, d)] for m, d in sorted(cells)}}
    if not force and marker.exists():
        try:
            old = json.loads(marker.read_text())
        except ValueError:
            old = None
        if old == doc and all(_readable(res / f"{n}.parquet") for n in results.CONTRACT):
            return False
    marker.unlink(missing_ok=True)
    # All tables go to temporary files first; only when every one is written are they
    # renamed into place, so a failure leaves the previous tables untouched.
    staged: dict[Path, Path | None] = {}
    res.mkdir(parents=True, exist_ok=True)
    try:
        for name in _cached_table_names(store_root, cells):
            df = _combined_table(store_root, name, cells)
            target = res / f"{name}.parquet"
            if df is None:
                staged[target] = None
                continue
            tmp = res / f".{name}.parquet.{os.getpid()}.staged"
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


def _rows(store: Store, model: str, dataset: str) -> int:
    return sum(store.split_rows(model, dataset).values())


def _check_selection(store: Store, live: list[Cell], cells: Sequence[Cell] | None) -> None:
    if not live:
        raise UserError(f"{store.root}: no logit cells (logits/<model>/<dataset>/ with a sealed split)")
    unknown = sorted(set(cells or []) - set(live))
    if unknown:
        raise UserError(
            f"{store.root}: no logit cell {unknown[0][0]}/{unknown[0][1]} (cells present: "
            + ", ".join(f"{m}/{d}" for m, d in live[:8])
            + (" …)" if len(live) > 8 else ")")
        )


def _plan(store: Store, options: Any, selected: set[Cell], live: list[Cell], force: bool,
          analyze_fn: AnalyzeFn | None, summary: AnalyzeSummary) -> tuple[dict[Cell, str], list[CellTask]]:
    """The selected cells' keys, and a task for each whose cache is not current."""
    fp = options_fingerprint(options)
    keys = {c: analysis_key(store, c[0], c[1], fp) for c in live if c in selected}
    todo = []
    for c in live:
        if c not in selected:
            continue
        if force or not is_current(store.root, c[0], c[1], keys[c]):
            todo.append(CellTask(str(store.root), c[0], c[1], keys[c], options, analyze_fn))
        else:
            summary.cached.append(c)
    return keys, todo


def _compute(store: Store, todo: list[CellTask], runner: Runner | None,
             compute: ComputeOptions | None, log: Log | None, summary: AnalyzeSummary) -> None:
    """Run the tasks on the runner (no cluster for a little work); record the outcomes."""
    own = runner is None
    r = Runner(compute, log=log) if own else runner
    small = len(todo) <= 1 or sum(_rows(store, t.model, t.dataset) for t in todo) < SMALL_ROWS
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


def _included(root: Path, live: list[Cell], selected: set[Cell], keys: dict[Cell, str],
              summary: AnalyzeSummary) -> dict[Cell, str]:
    """Cells whose caches go into the tables: selected ones that are current, and the
    last results of cells not selected."""
    included: dict[Cell, str] = {}
    for c in live:
        if c in selected:
            if is_current(root, c[0], c[1], keys[c]):
                included[c] = keys[c]
            else:
                summary.left_out.append(c)
            continue
        doc = read_key(root, *c)
        if _cache_complete(root, c, doc):
            included[c] = str(doc.get("key"))
            summary.not_selected.append(c)
        else:
            summary.left_out.append(c)
    return included


def _log_outcome(summary: AnalyzeSummary, selection_given: bool, log: Log) -> None:
    for err in summary.failed:
        log(f"cell {err.key} failed: {err.error}")
    if summary.not_selected and selection_given:
        log(f"{len(summary.not_selected)} cell(s) not selected keep their last results")
    failed = {e.key for e in summary.failed}
    never = [c for c in summary.left_out if f"{c[0]}/{c[1]}" not in failed]
    if never:
        log(
            f"{len(never)} cell(s) have no results yet and are not in the tables ("
            + ", ".join(f"{m}/{d}" for m, d in never[:5])
            + (" …)" if len(never) > 5 else ")")
        )


def analyze_cells(
    store: Store | str | os.PathLike,
    options: StoreAnalysisOptions,
    *,
    cells: Sequence[Cell] | None = None,
    runner: Runner | None = None,
    compute: ComputeOptions | None = None,
    force: bool = False,
    strict: bool = False,
    analyze_fn: AnalyzeFn | None = None,
    log: Log | None = None,
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
    t0 = time.perf_counter()
    store = store if isinstance(store, Store) else Store(store)
    live = store.cells()
    _check_selection(store, live, cells)
    summary = AnalyzeSummary(cells=list(live))
    summary.removed = prune_stale(store.root, live)
    selected = set(live if cells is None else cells)
    keys, todo = _plan(store, options, selected, live, force, analyze_fn, summary)
    if todo:
        _compute(store, todo, runner, compute, log, summary)
    included = _included(store.root, live, selected, keys, summary)
    if not (strict and summary.failed):
        summary.tables_written = combine(store.root, list(included), included, force=force)
    summary.seconds = time.perf_counter() - t0
    if log is not None:
        _log_outcome(summary, cells is not None, log)
    return summary
