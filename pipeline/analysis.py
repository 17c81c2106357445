"""Analyse cells of a store: fit priors on the fit split, stream the eval split, build tables.

``analyze_cell(store, model, dataset, options)`` is a pure top-level function of
picklable arguments (a store path or ``Store``, two names, a frozen ``AnalyzeOptions``),
so a Dask worker can run it. The fit split is loaded whole (it is small: tens of samples
per class); the eval split is streamed in row batches through ``analyze.cell.evaluate``
and reduced with mergeable tallies, so memory does not grow with the eval split's size.

Bad input raises ``UserError`` with one line naming the file and column.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gla.analyze.priors import parse_temperature
from gla.analyze.schema import TABLES
from gla.pipeline.errors import UserError
from gla.pipeline.store import DEFAULT_BATCH_ROWS, SplitData, SplitInfo, Store


@dataclass(frozen=True)
class AnalyzeOptions:
    """What ``gla analyze`` does per cell (mirrors the config's ``[analysis]`` table)."""

    fit_split: str = "val"
    eval_split: str = "test"
    estimators: tuple[str, ...] = ("gla",)  # first = primary
    temperature: str | float | None = None  # None | "confidence" | "nll" | a number
    smoothing: float = 0.0
    target_prior: str | None = None  # path to a (C,) prior file
    allow_fit_on_eval: bool = False
    batch_rows: int = DEFAULT_BATCH_ROWS  # eval rows per streamed batch
    threads: int = 0  # evaluation threads per cell; 0 = min(2, cpu count)

    @classmethod
    def from_mapping(cls, d: dict[str, Any] | None, **overrides: Any) -> AnalyzeOptions:
        """From a config dict (``Config.analysis.model_dump()``); "none"/"" mean unset."""
        d = {**(d or {}), **overrides}
        known = {f for f in cls.__dataclass_fields__}
        kw = {k: v for k, v in d.items() if k in known}
        if "estimators" in kw:
            est = kw["estimators"]
            kw["estimators"] = (est,) if isinstance(est, str) else tuple(est)
        if "temperature" in kw:
            try:
                kw["temperature"] = parse_temperature(kw["temperature"])
            except ValueError as e:
                raise UserError(f"analysis.{e}") from None
        if kw.get("target_prior") in ("", None):
            kw["target_prior"] = None
        else:
            kw["target_prior"] = os.fspath(kw["target_prior"])
        return cls(**kw)

    def fingerprint(self) -> str:
        """Hash of everything that changes results (not batch_rows/threads)."""
        d = asdict(self)
        d.pop("batch_rows")
        d.pop("threads")
        if self.target_prior:
            try:
                with open(self.target_prior, "rb") as f:
                    d["target_prior_sha"] = hashlib.sha256(f.read()).hexdigest()
            except OSError:
                d["target_prior_sha"] = "missing"
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class CellResult:
    model: str
    dataset: str
    tables: dict[str, Any]  # {name in analyze.schema.TABLES: polars DataFrame}
    key: str  # content key of the cell's inputs + options fingerprint
    diagnostics: dict[str, Any] = field(default_factory=dict)

    @property
    def summary(self) -> Any:
        return self.tables.get("summary")

    @property
    def per_class(self) -> Any:
        return self.tables.get("per_class")

    @property
    def priors(self) -> Any:
        return self.tables.get("priors")

    @property
    def calibration(self) -> Any:
        return self.tables.get("calibration")


# --------------------------------------------------------------------------- validation


def _check_finite(x: np.ndarray, locate, column: str) -> None:
    """Raise on NaN/Inf. Fast path: one float32 reduction; the exact scan only on failure."""
    if np.isfinite(np.add.reduce(x.reshape(-1))):
        return
    bad = ~np.isfinite(x)
    if not bad.any():  # the sum overflowed on huge but finite values
        return
    r, c = (int(v) for v in np.argwhere(bad)[0])
    f, rr = locate(r)
    raise UserError(f"{f}: column {column} has NaN/Inf (row {rr}, class {c})")


def _check_labels(y: np.ndarray, c: int, locate, split: str, allow_unknown: bool) -> None:
    lo = -1 if allow_unknown else 0
    if len(y) == 0:
        return
    mn, mx = int(y.min()), int(y.max())
    if mn >= lo and mx < c:
        return
    bad = np.flatnonzero((y < lo) | (y >= c))
    r = int(bad[0])
    f, rr = locate(r)
    if int(y[r]) == -1:
        raise UserError(
            f"{f}: column label is -1 (unknown) at row {rr}; split {split!r} needs labels"
        )
    raise UserError(f"{f}: column label {int(y[r])} at row {rr} is out of range [0, {c - 1}]")


def _check_sample_ids(store: Store, model: str, dataset: str, splits: Iterable[str]) -> None:
    """Sample ids must be present and unique across the cell's splits.

    Only a 64-bit hash per row is kept (8 bytes, not the strings), so a multi-million-row
    cell stays within a worker's memory; rows whose hashes collide are re-read and compared
    as strings, so a hash collision is never reported as a duplicate.
    """
    import polars as pl
    import pyarrow as pa

    splits = list(dict.fromkeys(splits))
    hashes = []
    for split in splits:
        for f, ids in store.read_sample_ids(model, dataset, split):
            col = pl.Series(ids.cast(pa.string()))
            if col.null_count():
                raise UserError(f"{f}: column sample_id is missing (null) at row {int(col.is_null().arg_true()[0])}")
            hashes.append(col.hash(seed=0).to_numpy())
    if not hashes:
        return
    h = np.concatenate(hashes)
    hs = np.sort(h)
    suspects = np.unique(hs[1:][hs[1:] == hs[:-1]])
    if suspects.size == 0:
        return
    seen: dict[str, tuple[Path, int]] = {}  # id -> (part file, row in it)
    row = 0
    for split in splits:
        for f2, ids in store.read_sample_ids(model, dataset, split):
            n = len(ids)
            for r2 in np.flatnonzero(np.isin(h[row : row + n], suspects)).tolist():
                sid = ids[r2].as_py()
                if sid in seen:
                    f1, r1 = seen[sid]
                    where = f"rows {r1} and {r2}" if f1 == f2 else f"row {r1} and {f2} row {r2}"
                    raise UserError(f"{f1}: column sample_id has duplicate id {sid!r} ({where})")
                seen[sid] = (f2, r2)
            row += n


def _load_target_prior(path: str, c: int) -> np.ndarray:
    from gla.pipeline.importer import load_array

    arr, where = load_array(path, "target prior", 1)
    if arr.dtype.kind not in "iuf":
        raise UserError(f"{where}: target prior must be numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if len(arr) != c:
        raise UserError(f"{where}: target prior has {len(arr)} values but the cell has {c} classes")
    if not np.isfinite(arr).all() or (arr <= 0).any():
        raise UserError(f"{where}: target prior values must be finite and > 0")
    return arr / arr.sum()


# --------------------------------------------------------------------------- one cell


def _analysis_options(options: AnalyzeOptions, target_prior: np.ndarray | None):
    from gla.analyze.cell import AnalysisOptions

    return AnalysisOptions(
        estimators=tuple(options.estimators),
        temperature=options.temperature,
        smoothing=float(options.smoothing),
        target_prior=target_prior,
    )


def _merge(total: dict | None, part: dict) -> dict:
    if total is None:
        return dict(part)
    return {m: total[m].merge(part[m]) for m in total}


def _threads(options: AnalyzeOptions) -> int:
    if options.threads and options.threads > 0:
        return int(options.threads)
    return max(1, min(2, os.cpu_count() or 1))


def _stream_eval(
    batches: Iterator[SplitData], fitted, aopts, info: SplitInfo, split: str, threads: int
) -> tuple[dict, int, int]:
    """Validate and tally the eval split batch by batch; at most threads+1 batches in memory.

    Returns (tallies, rows read, rows with unknown label -1, which evaluate skips).
    ``analyze.cell.evaluate`` already scans every chunk for NaN/Inf (max/min); only when it
    refuses a chunk do we re-scan it to name the file, column and row.
    """
    from gla.analyze.cell import evaluate

    c = info.num_classes

    def work(b: SplitData) -> tuple[dict, int]:
        def locate(r: int, b=b):
            return b.file, b.row_offset + r

        _check_labels(b.labels, c, locate, split, allow_unknown=True)
        unknown = int(np.count_nonzero(b.labels < 0))
        if unknown == len(b):
            return {}, unknown
        try:
            return evaluate([(b.zs, b.ft, b.labels, b.extra)], fitted, aopts), unknown
        except ValueError as e:
            _check_finite(b.zs, locate, "zs")
            if b.ft is not None:
                _check_finite(b.ft, locate, "ft")
            for col, x in b.extra.items():
                _check_finite(x, locate, col)
            raise UserError(f"{b.file}: {e}") from None

    total, n, unknown = None, 0, 0

    def add(res):
        nonlocal total, unknown
        tallies, u = res
        unknown += u
        if tallies:
            total = _merge(total, tallies)

    if threads <= 1:
        for b in batches:
            n += len(b)
            add(work(b))
        return total, n, unknown
    # Results are merged in batch order, so the figures do not depend on thread timing.
    with ThreadPoolExecutor(threads, thread_name_prefix="gla-eval") as ex:
        pending: deque = deque()
        try:
            for b in batches:
                n += len(b)
                pending.append(ex.submit(work, b))
                while len(pending) > threads:
                    add(pending.popleft().result())
            while pending:
                add(pending.popleft().result())
        finally:
            for fut in pending:
                fut.cancel()
    return total, n, unknown


def analyze_cell(
    store: Store | str | os.PathLike, model: str, dataset: str, options: AnalyzeOptions | None = None
) -> CellResult:
    """Fit priors on ``options.fit_split``, evaluate every method on ``options.eval_split``."""
    from gla.analyze.cell import build_tables, fit_priors

    options = options or AnalyzeOptions()
    store = store if isinstance(store, Store) else Store(store)
    t0, c0 = time.perf_counter(), time.process_time()
    fit_split, eval_split = options.fit_split, options.eval_split
    if fit_split == eval_split and not options.allow_fit_on_eval:
        raise UserError(
            f"--fit-split and --eval-split are both {fit_split!r}: fitting priors on the eval "
            "split leaks; pass --allow-fit-on-eval to do it anyway"
        )
    if not options.estimators:
        raise UserError("--estimator: give at least one estimator")
    info = store.cell_info(model, dataset)
    # Key of the inputs as found before reading anything (a rewrite during the run changes it).
    key = hashlib.sha256(
        f"{store.content_key(model, dataset)}:{options.fingerprint()}".encode()
    ).hexdigest()[:24]
    c = info.num_classes
    fit_info = store.split_info(model, dataset, fit_split)
    eval_info = store.split_info(model, dataset, eval_split)
    if eval_info.rows == 0:
        raise UserError(f"{eval_info.files[0]}: split {eval_split!r} has no rows")
    if fit_info.rows == 0:
        raise UserError(f"{fit_info.files[0]}: split {fit_split!r} has no rows")

    counts_obj = store.read_class_counts(dataset)
    counts = None
    if counts_obj is not None:
        if len(counts_obj.counts) != c:
            raise UserError(
                f"{counts_obj.path}: column count has {len(counts_obj.counts)} classes but cell "
                f"{model}/{dataset} has {c}"
            )
        counts = counts_obj.counts
        empty = np.flatnonzero(counts + options.smoothing == 0)
        if len(empty):  # log π_s would be −inf; name the counts file and the option, not the fit split
            k = int(empty[0])
            raise UserError(
                f"{counts_obj.path}: column count is 0 for class {k} ({info.class_names[k]!r}); "
                "log π_s is -inf: pass --smoothing > 0"
            )
    target = _load_target_prior(options.target_prior, c) if options.target_prior else None

    _check_sample_ids(store, model, dataset, (fit_split, eval_split))

    # ---- fit split: loaded whole (zs + labels only)
    from gla.analyze.priors import LABEL_FREE

    labelled = any(e not in LABEL_FREE for e in options.estimators)
    fit = store.read_split(model, dataset, fit_split, columns=("label", "zs"), info=fit_info)

    def fit_locate(r: int):
        return Store.locate_row(fit_info, r)

    _check_labels(fit.labels, c, fit_locate, fit_split, allow_unknown=not labelled)
    if labelled:
        present = np.bincount(fit.labels, minlength=c)
        missing = np.flatnonzero(present == 0)
        if len(missing):
            k = int(missing[0])
            where = fit_info.files[0] if len(fit_info.files) == 1 else fit_info.files[0].parent
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise UserError(
                f"{where}: column label has no sample of class {k} ({info.class_names[k]!r}){more} "
                f"in fit split {fit_split!r}; every class needs at least one"
            )
    aopts = _analysis_options(options, target)
    t1, c1 = time.perf_counter(), time.process_time()
    try:
        fitted = fit_priors(fit.zs, fit.labels, c, class_counts=counts, options=aopts)
    except (KeyError, ValueError) as e:
        _check_finite(fit.zs, fit_locate, "zs")  # name file, row and class if that was it
        raise UserError(f"{fit_info.files[0]}: prior fit failed: {e}") from None
    del fit
    t2, c2 = time.perf_counter(), time.process_time()

    # ---- eval split: streamed
    batches = store.iter_split(
        model, dataset, eval_split, columns=("label", "zs", "ft", *eval_info.extra_logits),
        batch_rows=options.batch_rows, info=eval_info,
    )
    tallies, n_eval, n_unknown = _stream_eval(
        batches, fitted, aopts, info, eval_split, _threads(options)
    )
    if tallies is None:
        raise UserError(
            f"{eval_info.files[0]}: column label is -1 (unknown) in every row of eval split "
            f"{eval_split!r}; evaluation needs labels"
        )
    t3, c3 = time.perf_counter(), time.process_time()
    tables = build_tables(
        model, dataset, eval_split, list(info.class_names), fitted, tallies, class_counts=counts
    )
    diag = {
        "fit_rows": fit_info.rows,
        "eval_rows": n_eval,
        "eval_rows_unlabelled": n_unknown,
        "classes": c,
        "has_ft": info.has_ft,
        "seconds": {"read_fit+checks": t1 - t0, "fit": t2 - t1, "eval": t3 - t2,
                    "tables": time.perf_counter() - t3},
        # process CPU time (all threads): robust to other load on a shared machine
        "cpu_seconds": {"read_fit+checks": c1 - c0, "fit": c2 - c1, "eval": c3 - c2,
                        "tables": time.process_time() - c3},
        "estimates": {
            name: {"iterations": est.iterations, "objective": est.objective,
                   "converged": est.converged, "message": est.message}
            for name, est in fitted.estimates.items()
        },
    }
    return CellResult(model, dataset, tables, key, diag)


# --------------------------------------------------------------------------- many cells


def select_cells(store: Store, only=None) -> list[tuple[str, str]]:
    """The store's cells that ``only`` (``--only`` text, a list of them, or a CellFilter) keeps."""
    from gla.pipeline.config import CellFilter

    cells = store.cells()
    if not cells:
        raise UserError(f"{store.logits_dir}: no cells (import or extract logits first)")
    filt = only if isinstance(only, CellFilter) else CellFilter(only)
    chosen = [(m, d) for m, d in cells if filt.keeps(m, d)]
    if not chosen:
        have = ", ".join(f"model={m},dataset={d}" for m, d in cells)
        raise UserError(f"--only matched no cell (cells: {have})")
    return chosen


class AnalyzeResults(list):
    """The CellResults of ``analyze_store`` (a list) plus ``.run``: what the incremental
    run did (``pipeline.incremental.AnalyzeSummary``: analysed, unchanged, removed...)."""

    run: Any = None


def analyze_store(
    store: Store | str | os.PathLike,
    options: AnalyzeOptions | None = None,
    only=None,
    *,
    compute: Any = None,
    runner: Any = None,
    force: bool = False,
    log: Any = None,
    load_results: bool = True,
) -> AnalyzeResults:
    """Analyse the selected cells and rebuild results/*.parquet, incrementally.

    Cells whose inputs and options are unchanged since their cached results are not
    recomputed; the others fan out on the runner (``compute``: a Dask LocalCluster, an
    existing cluster, or in-process for little work; see ``pipeline.runner``). The
    combined tables are rebuilt from the per-cell caches (cells not selected keep their
    last results; cells deleted from logits/ drop out). Holds the store lock. If any cell
    fails, raises ``UserError`` naming it and leaves the tables untouched (the other
    cells' new results stay cached). Returns the selected cells' results (read back from
    their caches; ``load_results=False`` skips that and returns an empty list with ``.run``).
    """
    from gla.pipeline.incremental import analyze_cells, load_cache
    from gla.pipeline.lock import store_lock

    store = store if isinstance(store, Store) else Store(store)
    options = options or AnalyzeOptions()
    cells = select_cells(store, only)
    with store_lock(store.root, "gla analyze"):
        run = analyze_cells(store, options, cells=cells, runner=runner, compute=compute,
                            force=force, strict=True, log=log)
    if run.failed:
        first = run.failed[0]
        more = f" (and {len(run.failed) - 1} more failed cell(s))" if len(run.failed) > 1 else ""
        msg = first.error if first.user else f"cell {first.key}: {first.error}"
        raise UserError(msg + more)
    out = AnalyzeResults()
    for m, d in cells if load_results else []:
        cache = load_cache(store.root, m, d)
        tables = {n: cache[n] for n in TABLES if cache.get(n) is not None}
        out.append(CellResult(m, d, tables, cache["key"], cache.get("diagnostics") or {}))
    out.run = run
    return out
