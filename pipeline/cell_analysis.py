"""One cell of a store, analysed: fit priors on the fit split, stream the eval split.

``analyze_cell(store, model, dataset, options)`` is a pure top-level function of
picklable arguments (a ``Store``, two names, a frozen ``StoreAnalysisOptions``), so a Dask
worker can run it. The fit split is loaded whole (it is small: tens of samples per class);
the eval split is streamed in row batches through ``analyze.cell.evaluate`` and reduced
with mergeable tallies, so memory does not grow with the eval split's size. It returns a
``CellResult`` whose ``tables`` is ``{table name: polars.DataFrame}``; the per-cell cache
and the publication handle those tables generically.

This is the worker layer; the store-wide entry point is ``pipeline.analysis``. Bad input
raises ``UserError`` with one line naming the file and column.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
from gla.analyze import caveats, kshot, predictions
from gla.analyze.cell import (
    FIT_LABEL_DISTRIBUTIONS,
    TEMPERATURE_SCOPES,
    AnalysisOptions,
    FittedPriors,
    build_tables,
    evaluate,
    fit_priors,
)
from gla.analyze.paired import MethodTallies
from gla.analyze.priors import LABEL_FREE, parse_temperature
from gla.analyze.stats import GROUP_AVERAGES, GROUP_SCHEMES
from gla.pipeline import cell_audits, provenance
from gla.pipeline.distshift import (
    ShiftSpec,
    class_map,
    fitted_from_tables,
    read_shift,
    restrict_priors,
    robustness_table,
)
from gla.pipeline.errors import UserError
from gla.pipeline.importer import load_target_prior
from gla.pipeline.store import DEFAULT_BATCH_ROWS, CellInfo, SplitArrays, SplitInfo, Store

Locate = Callable[[int], tuple[Path, int]]


@dataclass(frozen=True)
class StoreAnalysisOptions:
    """What ``gla analyze`` does to each cell of a store: which splits, which estimators,
    which files, and how it reads them (mirrors the config's ``[analysis]`` table).

    ``analyze.cell.AnalysisOptions`` is its arrays-only core (``core()`` builds it)."""

    fit_split: str = "val"
    eval_split: str = "test"
    estimators: tuple[str, ...] = ("gla",)  # first = primary
    temperature: str | float | None = None  # None | "confidence" | "nll" | a number
    smoothing: float = 0.0
    target_prior: str | None = None  # path to a (C,) prior file
    allow_fit_on_eval: bool = False
    batch_rows: int = DEFAULT_BATCH_ROWS  # eval rows per streamed batch
    threads: int = 0  # evaluation threads per cell; 0 = min(2, cpu count)
    # Audits beyond the paper (pipeline/cell_audits.py): π_t estimation/tracking, label issues.
    target_estimators: tuple[str, ...] = ()  # em, bbse
    window_splits: tuple[str, ...] = ()  # eval splits in time order, one window each
    window_memory: float = 0.0  # EM pseudo-counts from the previous window's estimate
    label_issues: bool = False
    label_issue_split: str = ""  # the labelled split audited ("" = the eval split)
    clean_split: str = ""  # clean labelled split the p-values are taken against ("" = fit split)
    fdr: float = 0.1
    # Conventions (docs/conventions.md): the released code's by default, the others by name.
    groups: str = "released"  # head/medium/tail sizes: released (C//3, C//3, rest) | array-split
    shot_accuracy: str = "per-class"  # many/medium/few: per-class mean | pooled
    temperature_scope: str = "each"  # each (zs and ft, own temperatures) | zs
    fit_label_distribution: str = "uniform"  # for label-free estimators: uniform | counts | FILE

    def __post_init__(self) -> None:
        for name, allowed in (("groups", GROUP_SCHEMES), ("shot_accuracy", GROUP_AVERAGES),
                              ("temperature_scope", TEMPERATURE_SCOPES)):
            if getattr(self, name) not in allowed:
                raise UserError(f"analysis.{name}: expected one of {', '.join(allowed)}, "
                                f"got {getattr(self, name)!r}")
        if not isinstance(self.fit_label_distribution, str) or not self.fit_label_distribution:
            raise UserError("analysis.fit_label_distribution: expected uniform, counts or a file, "
                            f"got {self.fit_label_distribution!r}")

    @property
    def fit_label_file(self) -> str | None:
        """The fit label distribution's file, or None for uniform / counts."""
        d = self.fit_label_distribution
        return None if d in FIT_LABEL_DISTRIBUTIONS else d

    @classmethod
    def from_mapping(cls, d: dict[str, Any] | None, **overrides: Any) -> StoreAnalysisOptions:
        """From a config dict (``Config.analysis.model_dump()``); "none"/"" mean unset."""
        d = {**(d or {}), **overrides}
        known = {f for f in cls.__dataclass_fields__}
        kw = {k: v for k, v in d.items() if k in known}
        if "estimators" in kw:
            est = kw["estimators"]
            kw["estimators"] = (est,) if isinstance(est, str) else tuple(est)
        for k in ("target_estimators", "window_splits"):
            if k in kw:
                kw[k] = (kw[k],) if isinstance(kw[k], str) else tuple(kw[k])
        if "temperature" in kw:
            try:
                kw["temperature"] = parse_temperature(kw["temperature"])
            except ValueError as e:
                raise UserError(f"analysis.{e}") from None
        if kw.get("fit_label_distribution") in ("", None):
            kw.pop("fit_label_distribution", None)
        elif "fit_label_distribution" in kw:
            kw["fit_label_distribution"] = os.fspath(kw["fit_label_distribution"])
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
        for key, path in (("target_prior_sha", self.target_prior),
                          ("fit_label_distribution_sha", self.fit_label_file)):
            if path:
                try:
                    with open(path, "rb") as f:
                        d[key] = hashlib.sha256(f.read()).hexdigest()
                except OSError:
                    d[key] = "missing"
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def core(self, target_prior: np.ndarray | None, fit_distribution: np.ndarray | None = None) -> AnalysisOptions:
        """The arrays-only options; ``fit_distribution`` is the loaded fit label file."""
        return AnalysisOptions(
            estimators=tuple(self.estimators),
            temperature=self.temperature,
            smoothing=float(self.smoothing),
            target_prior=target_prior,
            groups=self.groups,
            shot_accuracy=self.shot_accuracy,
            temperature_scope=self.temperature_scope,
            fit_label_distribution=self.fit_label_distribution if fit_distribution is None else fit_distribution,
        )


@dataclass
class CellResult:
    """One cell's analysis: its result tables by name, its input key and diagnostics."""

    model: str
    dataset: str
    tables: dict[str, pl.DataFrame]
    key: str  # content key of the cell's inputs + options fingerprint
    diagnostics: dict[str, Any] = field(default_factory=dict)

    @property
    def summary(self) -> pl.DataFrame:
        return self.tables["summary"]


# --------------------------------------------------------------------------- validation


def _check_finite(x: np.ndarray, locate: Locate, column: str) -> None:
    """Raise on NaN/Inf. Fast path: one float32 reduction; the exact scan only on failure."""
    if np.isfinite(np.add.reduce(x.reshape(-1))):
        return
    bad = ~np.isfinite(x)
    if not bad.any():  # the sum overflowed on huge but finite values
        return
    r, c = (int(v) for v in np.argwhere(bad)[0])
    f, rr = locate(r)
    raise UserError(f"{f}: column {column} has NaN/Inf (row {rr}, class {c})")


def _check_labels(y: np.ndarray, c: int, locate: Locate, split: str, allow_unknown: bool) -> None:
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


def _id_hashes(store: Store, model: str, dataset: str, splits: list[str]) -> np.ndarray:
    hashes = []
    for split in splits:
        for f, ids in store.read_sample_ids(model, dataset, split):
            col = pl.Series(ids.cast(pa.string()))
            if col.null_count():
                raise UserError(f"{f}: column sample_id is missing (null) at row {int(col.is_null().arg_true()[0])}")
            hashes.append(col.hash(seed=0).to_numpy())
    return np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)


def _check_sample_ids(store: Store, model: str, dataset: str, splits: Iterable[str]) -> None:
    """Sample ids must be present and unique across the cell's splits.

    Only a 64-bit hash per row is kept (8 bytes, not the strings), so a multi-million-row
    cell stays within a worker's memory; rows whose hashes collide are re-read and compared
    as strings, so a hash collision is never reported as a duplicate.
    """
    splits = list(dict.fromkeys(splits))
    h = _id_hashes(store, model, dataset, splits)
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


def _load_target_prior(path: str, c: int, what: str = "target prior") -> np.ndarray:
    """A (C,) distribution file (target prior, fit label distribution), normalised."""
    return load_target_prior(path, c, what=what)[0]


def _core(options: StoreAnalysisOptions, c: int, target: np.ndarray | None) -> AnalysisOptions:
    dist = options.fit_label_file
    return options.core(target, None if dist is None else _load_target_prior(dist, c, "fit label distribution"))


def _check_options(options: StoreAnalysisOptions) -> None:
    if options.fit_split == options.eval_split and not options.allow_fit_on_eval:
        raise UserError(
            f"--fit-split and --eval-split are both {options.fit_split!r}: fitting priors on the eval "
            "split leaks; pass --allow-fit-on-eval to do it anyway"
        )
    if not options.estimators:
        raise UserError("--estimator: give at least one estimator")


def cell_class_counts(store: Store, info: CellInfo, smoothing: float) -> np.ndarray | None:
    counts_obj = store.read_class_counts(info.dataset)
    if counts_obj is None:
        return None
    c = info.num_classes
    if len(counts_obj.counts) != c:
        raise UserError(
            f"{counts_obj.path}: column count has {len(counts_obj.counts)} classes but cell "
            f"{info.model}/{info.dataset} has {c}"
        )
    counts = counts_obj.counts
    empty = np.flatnonzero(counts + smoothing == 0)
    if len(empty):  # log π_s would be −inf; name the counts file and the option, not the fit split
        k = int(empty[0])
        raise UserError(
            f"{counts_obj.path}: column count is 0 for class {k} ({info.class_names[k]!r}); "
            "log π_s is -inf: pass --smoothing > 0"
        )
    return counts


# --------------------------------------------------------------------------- fit split


def _ft_own(info: CellInfo, core: AnalysisOptions) -> bool:
    """Whether ft gets a temperature of its own, fitted on the fit split's ft logits."""
    return info.has_ft and core.temperature is not None and core.temperature_scope == "each"


def _refit(info: CellInfo, counts: np.ndarray | None, core: AnalysisOptions, primary: str):
    """Fit the cell's primary prior (and temperatures) on some fit-split rows, as ``_fit``
    does on all of them: what the label-issue audit cross-fits its clean scores with."""
    options = replace(core, estimators=(primary,))
    ft_own = _ft_own(info, core)
    return lambda zs, ft, y: fit_priors(zs, y, info.num_classes, class_counts=counts, options=options,
                                        ft_fit=ft if ft_own else None)


def _fit(store: Store, info: CellInfo, fit_info: SplitInfo, options: StoreAnalysisOptions,
         counts: np.ndarray | None, core: AnalysisOptions) -> FittedPriors:
    """Load the fit split (labels + zs), check it, fit every estimator."""
    c, split = info.num_classes, options.fit_split
    labelled = any(e not in LABEL_FREE for e in options.estimators)
    ft_own = _ft_own(info, core)
    fit = store.read_split(info.model, info.dataset, split, columns=("label", "zs", *(("ft",) if ft_own else ())),
                           info=fit_info)

    def locate(r: int) -> tuple[Path, int]:
        return Store.locate_row(fit_info, r)

    _check_labels(fit.labels, c, locate, split, allow_unknown=not labelled)
    if labelled:
        missing = np.flatnonzero(np.bincount(fit.labels, minlength=c) == 0)
        if len(missing):
            k = int(missing[0])
            where = fit_info.files[0] if len(fit_info.files) == 1 else fit_info.files[0].parent
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise UserError(
                f"{where}: column label has no sample of class {k} ({info.class_names[k]!r}){more} "
                f"in fit split {split!r}; every class needs at least one"
            )
    try:
        return fit_priors(fit.zs, fit.labels, c, class_counts=counts, options=core,
                          ft_fit=fit.ft if ft_own else None)
    except (KeyError, ValueError) as e:
        _check_finite(fit.zs, locate, "zs")  # name file, row and class if that was it
        if ft_own and fit.ft is not None:
            _check_finite(fit.ft, locate, "ft")
        raise UserError(f"{fit_info.files[0]}: prior fit failed: {e}") from None


# --------------------------------------------------------------------------- eval split


def _merge(total: MethodTallies | None, part: MethodTallies) -> MethodTallies:
    return part if total is None else total.merge(part)


def _threads(options: StoreAnalysisOptions) -> int:
    if options.threads and options.threads > 0:
        return int(options.threads)
    return max(1, min(2, os.cpu_count() or 1))


def _tally_batch(b: SplitArrays, fitted: FittedPriors, core: AnalysisOptions, c: int,
                 split: str, kept: predictions.Collector,
                 extent: list[float]) -> tuple[MethodTallies, int]:
    """One batch's tallies and its count of unknown (-1) labels; appends the batch's
    max |zs| to ``extent`` (cosines instead of logits are the cell's warning)."""
    def locate(r: int) -> tuple[Path, int]:
        return b.file, b.row_offset + r

    _check_labels(b.labels, c, locate, split, allow_unknown=True)
    unknown = int(np.count_nonzero(b.labels < 0))
    if unknown == len(b):
        return {}, unknown
    if b.zs.size:
        extent.append(max(float(b.zs.max()), -float(b.zs.min())))  # NaN is refused below
    try:
        preds: dict[str, list] = {}
        tallies = evaluate([(b.zs, b.ft, b.labels, b.extra)], fitted, core, predictions=preds)
        ids = b.sample_ids.to_pylist() if b.sample_ids is not None else None
        kept.add((str(b.file), b.row_offset), ids, b.labels, preds)
        return tallies, unknown
    except ValueError as e:
        _check_finite(b.zs, locate, "zs")
        if b.ft is not None:
            _check_finite(b.ft, locate, "ft")
        for col, x in b.extra.items():
            _check_finite(x, locate, col)
        raise UserError(f"{b.file}: {e}") from None


def _stream_eval(batches: Iterator[SplitArrays], fitted: FittedPriors, core: AnalysisOptions,
                 info: SplitInfo, split: str, threads: int, kept: predictions.Collector,
                 extent: list[float]) -> tuple[MethodTallies | None, int, int]:
    """Validate and tally the eval split batch by batch; at most threads+1 batches in memory.

    Returns (tallies, rows read, rows with unknown label -1, which evaluate skips).
    ``analyze.cell.evaluate`` already scans every chunk for NaN/Inf (max/min); only when it
    refuses a chunk do we re-scan it to name the file, column and row. Results are merged
    in batch order, so the figures do not depend on thread timing.
    """
    total: MethodTallies | None = None
    n = unknown = 0

    def add(res: tuple[MethodTallies, int]) -> None:
        nonlocal total, unknown
        tallies, u = res
        unknown += u
        if tallies:
            total = _merge(total, tallies)

    def work(b: SplitArrays) -> tuple[MethodTallies, int]:
        return _tally_batch(b, fitted, core, info.num_classes, split, kept, extent)

    if threads <= 1:
        for b in batches:
            n += len(b)
            add(work(b))
        return total, n, unknown
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


# --------------------------------------------------------------------------- one cell


class _Clock:
    """Wall and process-CPU seconds per stage (CPU time is robust to a shared machine)."""

    def __init__(self) -> None:
        self.marks = [(time.perf_counter(), time.process_time())]

    def mark(self) -> None:
        self.marks.append((time.perf_counter(), time.process_time()))

    def seconds(self, names: tuple[str, ...]) -> tuple[dict[str, float], dict[str, float]]:
        m = self.marks
        wall = {n: m[i + 1][0] - m[i][0] for i, n in enumerate(names)}
        cpu = {n: m[i + 1][1] - m[i][1] for i, n in enumerate(names)}
        return wall, cpu


def _diagnostics(fit_info: SplitInfo, info: CellInfo, n_eval: int, n_unknown: int,
                 fitted: FittedPriors, clock: _Clock) -> dict[str, Any]:
    wall, cpu = clock.seconds(("read_fit+checks", "fit", "eval", "tables"))
    return {
        "fit_rows": fit_info.rows,
        "eval_rows": n_eval,
        "eval_rows_unlabelled": n_unknown,
        "classes": info.num_classes,
        "has_ft": info.has_ft,
        "seconds": wall,
        "cpu_seconds": cpu,
        "ft_temperature": fitted.ft_temperature,
        "estimates": {
            name: {"iterations": est.iterations, "objective": est.objective,
                   "converged": est.converged, "message": est.message}
            for name, est in fitted.estimates.items()
        },
    }


def _split_infos(store: Store, info: CellInfo, options: StoreAnalysisOptions) -> tuple[SplitInfo, SplitInfo]:
    fit_info = store.split_info(info.model, info.dataset, options.fit_split)
    eval_info = store.split_info(info.model, info.dataset, options.eval_split)
    if eval_info.rows == 0:
        raise UserError(f"{eval_info.files[0]}: split {options.eval_split!r} has no rows")
    if fit_info.rows == 0:
        raise UserError(f"{fit_info.files[0]}: split {options.fit_split!r} has no rows")
    return fit_info, eval_info


def analyze_cell(
    store: Store | str | os.PathLike, model: str, dataset: str,
    options: StoreAnalysisOptions | None = None,
) -> CellResult:
    """Fit priors on ``options.fit_split``, evaluate every method on ``options.eval_split``."""
    options = options or StoreAnalysisOptions()
    store = store if isinstance(store, Store) else Store(store)
    clock = _Clock()
    _check_options(options)
    info = store.cell_info(model, dataset)
    # Key of the inputs as found before reading anything (a rewrite during the run changes it).
    key = hashlib.sha256(
        f"{store.content_key(model, dataset)}:{options.fingerprint()}".encode()
    ).hexdigest()[:24]
    shift = read_shift(store.root, dataset)
    if shift is not None:  # a shifted set: the source cell's priors, no fit of its own
        return _analyze_shifted(store, info, options, shift, key)
    fit_info, eval_info = _split_infos(store, info, options)
    counts = cell_class_counts(store, info, options.smoothing)
    target = _load_target_prior(options.target_prior, info.num_classes) if options.target_prior else None
    _check_sample_ids(store, model, dataset, (options.fit_split, options.eval_split))
    core = _core(options, info.num_classes, target)
    clock.mark()
    fitted = _fit(store, info, fit_info, options, counts, core)
    clock.mark()
    kept = predictions.Collector()  # per-sample predictions: what pairs two runs in gla diff
    extent: list[float] = []
    tallies, n_eval, n_unknown = _evaluate(store, info, options, eval_info, fitted, core, kept, extent)
    clock.mark()
    tables = build_tables(
        model, dataset, options.eval_split, list(info.class_names), fitted, tallies, class_counts=counts,
        options=core,
    )
    tables["predictions"] = kept.table(model, dataset, fitted.primary)
    shots = {k: col for col in eval_info.extra_logits if (k := kshot.shots_of(col)) is not None}
    if shots:
        tables["kshot"] = _kshot_sweep(store, info, options, fit_info, eval_info, shots, fitted.primary)
    tables = cell_audits.merge(tables, cell_audits.run(store, info, options, fitted, fit_info, eval_info,
                                                       _refit(info, counts, core, fitted.primary)))
    tables["provenance"] = provenance.provenance_table(
        model, dataset, estimators=list(fitted.estimates), priors=tables["priors"],
        fit=(options.fit_split, fit_info.rows), evaluated=(options.eval_split, n_eval - n_unknown),
        options=options, meta=eval_info.metadata, sealed=(fit_info.sealed_at, eval_info.sealed_at),
        fingerprint=provenance.dataset_fingerprint(
            ((options.fit_split, fit_info), (options.eval_split, eval_info)), store.counts_path(dataset)),
        ft_temperature=fitted.ft_temperature)
    tables["warnings"] = _warnings(info, eval_info, tables, counts, extent,
                                   unlabelled=options.eval_split if not tallies else None)
    clock.mark()
    return CellResult(model, dataset, tables, key,
                      _diagnostics(fit_info, info, n_eval, n_unknown, fitted, clock))


def _evaluate(store: Store, info: CellInfo, options: StoreAnalysisOptions, eval_info: SplitInfo,
              fitted: FittedPriors, core: AnalysisOptions, kept: predictions.Collector, extent: list[float]):
    """Every method over the streamed eval split: (tallies, rows, unlabelled rows). A split
    with no label at all gives no tallies ({}): only π_t (--target-estimator) can be
    estimated on it, and without that it is refused."""
    batches = store.iter_split(info.model, info.dataset, options.eval_split,
                               columns=("label", "zs", "ft", "sample_id", *eval_info.extra_logits),
                               batch_rows=options.batch_rows, info=eval_info)
    tallies, n_eval, n_unknown = _stream_eval(batches, fitted, core, eval_info, options.eval_split,
                                              _threads(options), kept, extent)
    if tallies is None and not options.target_estimators:
        raise UserError(
            f"{eval_info.files[0]}: column label is -1 (unknown) in every row of eval split "
            f"{options.eval_split!r}; evaluation needs labels (--target-estimator em|bbse "
            "estimates an unlabelled split's label distribution)"
        )
    return tallies or {}, n_eval, n_unknown


def _analyze_shifted(store: Store, info: CellInfo, options: StoreAnalysisOptions, shift: ShiftSpec,
                     key: str) -> CellResult:
    """Score a shifted set with the priors of its source cell (``pipeline.distshift``).

    The source is analysed as alone (primary estimator only: its π_p is the one the
    methods use, so the source's summary is the same as in its own cell), its π_p, π_s and
    temperature are restricted to the shifted set's classes, and the shifted set's eval
    split is streamed with them. Adds a robustness table beside the usual ones.
    """
    model, dataset, split = info.model, info.dataset, options.eval_split
    if read_shift(store.root, shift.source) is not None:
        raise UserError(f"{shift.path}: source {shift.source!r} is itself a shifted set")
    if (model, shift.source) not in store.cells():
        raise UserError(f"{shift.path}: source cell {model}/{shift.source} is not in the store")
    source = analyze_cell(store, model, shift.source, replace(options, estimators=options.estimators[:1]))
    src_info = store.cell_info(model, shift.source)
    m = class_map(shift, info.class_names, src_info.class_names)
    fitted = replace(restrict_priors(fitted_from_tables(source.tables), m),
                     ft_temperature=source.diagnostics["ft_temperature"])
    counts_obj = store.read_class_counts(shift.source)
    counts = None if counts_obj is None else counts_obj.counts[m]
    target = None
    if options.target_prior:
        target = _load_target_prior(options.target_prior, src_info.num_classes)[m]
    eval_info = store.split_info(model, dataset, split)
    if eval_info.rows == 0:
        raise UserError(f"{eval_info.files[0]}: split {split!r} has no rows")
    _check_sample_ids(store, model, dataset, (split,))
    # Nothing is fitted here (the source's priors are used): no fit label distribution.
    core = replace(options, fit_label_distribution="uniform").core(target)
    batches = store.iter_split(model, dataset, split,
                               columns=("label", "zs", "ft", "sample_id", *eval_info.extra_logits),
                               batch_rows=options.batch_rows, info=eval_info)
    kept = predictions.Collector()
    extent: list[float] = []
    tallies, n_eval, n_unknown = _stream_eval(batches, fitted, core, eval_info, split, _threads(options),
                                              kept, extent)
    if tallies is None:
        raise UserError(f"{eval_info.files[0]}: column label is -1 (unknown) in every row of eval split "
                        f"{split!r}; evaluation needs labels")
    tables = build_tables(model, dataset, split, list(info.class_names), fitted, tallies, class_counts=counts,
                          options=core)
    tables["predictions"] = kept.table(model, dataset, fitted.primary)
    tables["robustness"] = robustness_table(tables["summary"], source.tables["summary"], shift.source,
                                            info.num_classes, src_info.num_classes)
    tables["provenance"] = _shifted_provenance(store, info, options, shift.source, src_info, eval_info,
                                               tables["priors"], n_eval - n_unknown, fitted.ft_temperature)
    tables["warnings"] = _warnings(info, eval_info, tables, counts, extent)
    diag = {"fit_rows": 0, "eval_rows": n_eval, "eval_rows_unlabelled": n_unknown,
            "classes": info.num_classes, "has_ft": info.has_ft,
            "evaluated_with": {"source": shift.source, "source_classes": m.tolist()}}
    return CellResult(model, dataset, tables, key, diag)


def _shifted_provenance(store: Store, info: CellInfo, options: StoreAnalysisOptions, source: str,
                        src_info: CellInfo, eval_info: SplitInfo, priors: pl.DataFrame,
                        n_scored: int, ft_temperature: float) -> pl.DataFrame:
    """A shifted set's provenance: fitted on its source's fit split (``<source>/<split>``),
    with the source's training counts; scored on its own eval split."""
    src_fit = src_info.splits[options.fit_split]
    fit_label = f"{source}/{options.fit_split}"
    fingerprint = provenance.dataset_fingerprint(
        ((fit_label, src_fit), (options.eval_split, eval_info)), store.counts_path(source))
    return provenance.provenance_table(
        info.model, info.dataset, estimators=options.estimators[:1], priors=priors,
        fit=(fit_label, src_fit.rows), evaluated=(options.eval_split, n_scored), options=options,
        meta=eval_info.metadata, fingerprint=fingerprint, sealed=(src_fit.sealed_at, eval_info.sealed_at),
        ft_temperature=ft_temperature)


def _warnings(info: CellInfo, eval_info: SplitInfo, tables: dict[str, pl.DataFrame],
              counts: np.ndarray | None, extent: list[float], unlabelled: str | None = None) -> pl.DataFrame:
    """The cell's warnings (``analyze.caveats``) from its tables and what the eval pass saw."""
    summary, per_class = tables["summary"], tables["per_class"]
    per_class = per_class.filter(pl.col("estimator") == summary["estimator"][0]) if summary.height else per_class.clear()
    return caveats.cell_warnings(
        info.model, info.dataset, class_names=list(info.class_names), counts=counts,
        has_ft=info.has_ft, random_init=provenance.is_random_init(eval_info.metadata),
        zs_absmax=max(extent) if extent else None, priors=tables["priors"], per_class=per_class,
        unlabelled_eval=unlabelled)


def _kshot_sweep(store: Store, info: CellInfo, options: StoreAnalysisOptions, fit_info: SplitInfo,
                 eval_info: SplitInfo, shots: dict[int, str], estimator: str) -> pl.DataFrame:
    """Few-shot GLA for every ``kshot@k`` column (``analyze.kshot``): temperatures and π_p
    from the labelled fit split, then one more pass over the eval split."""
    model, dataset = info.model, info.dataset
    fit = store.read_split(model, dataset, options.fit_split, columns=("label", "zs", *shots.values()),
                           info=fit_info)
    if (fit.labels < 0).any():
        raise UserError(f"{fit_info.files[0]}: column label is -1 (unknown); the k-shot sweep's "
                        "temperatures need a labelled fit split")
    try:
        fitted = kshot.fit_kshot(fit.zs, fit.labels, {k: fit.extra[c] for k, c in shots.items()}, estimator,
                                 options.temperature_scope)
    except ValueError as e:
        raise UserError(f"{fit_info.files[0]}: k-shot fit failed: {e}") from None
    batches = store.iter_split(model, dataset, options.eval_split, columns=("label", "zs", *shots.values()),
                               batch_rows=options.batch_rows, info=eval_info)
    chunks = ((b.zs, {k: b.extra[c] for k, c in shots.items()}, b.labels) for b in batches)
    tallies = kshot.evaluate_kshot(chunks, fitted)
    return kshot.kshot_table(model, dataset, options.eval_split, fitted, tallies)
