"""One model × dataset cell: fit priors, evaluate every method chunk by chunk, build tables.

Arrays in, Polars tables out, no I/O. ``evaluate`` consumes an iterator of
(zs, ft | None, labels) chunks and merges :class:`~analyze.stats.Tally` objects, so a cell
of any size is analysed in memory bounded by one chunk.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain

import numpy as np
import polars as pl
from gla.analyze import adjust, intervals, paired, schema, stats
from gla.analyze.priors import (
    ESTIMATORS,
    LABEL_FREE,
    PriorEstimate,
    check_labels,
    check_logits,
    downstream_prior,
    estimate_pretrain_prior,
    resolve_temperature,
)

_EVAL_ROWS = 2048  # rows per sub-block inside a chunk
TEMPERATURE_SCOPES = ("each", "zs")
FIT_LABEL_DISTRIBUTIONS = ("uniform", "counts")


@dataclass
class AnalysisOptions:
    estimators: tuple[str, ...] = ("gla",)  # the first is primary: its π_p feeds the methods
    temperature: str | float | None = None  # None | "confidence" | "nll" | float
    smoothing: float = 0.0  # additive smoothing of training counts for π_s
    target_prior: np.ndarray | None = None  # known π_t of the eval set (default balanced)
    n_bins: int = stats.N_BINS
    estimator_options: dict = field(default_factory=dict)  # extra kwargs, e.g. {"lr": ...}
    # The released code's conventions by default; the others by name (docs/conventions.md).
    groups: str = "released"  # head/medium/tail sizes: "released" (C//3, C//3, rest) | "array-split"
    shot_accuracy: str = "per-class"  # many/medium/few: "per-class" mean | "pooled" over samples
    temperature_scope: str = "each"  # "each": zs and ft by their own temperature | "zs" only
    # Label distribution of the fit split for the label-free estimators: "uniform",
    # "counts" (the fit split's own label counts) or a (C,) array.
    fit_label_distribution: str | np.ndarray = "uniform"

    def __post_init__(self):
        for name, value, allowed in (("groups", self.groups, stats.GROUP_SCHEMES),
                                     ("shot_accuracy", self.shot_accuracy, stats.GROUP_AVERAGES),
                                     ("temperature_scope", self.temperature_scope, TEMPERATURE_SCOPES)):
            if value not in allowed:
                raise ValueError(f"{name}: expected one of {', '.join(allowed)}, got {value!r}")
        d = self.fit_label_distribution
        if isinstance(d, str) and d not in FIT_LABEL_DISTRIBUTIONS:
            raise ValueError(f"fit_label_distribution: expected uniform, counts or an array, got {d!r}")


@dataclass
class FittedPriors:
    pi_p: np.ndarray  # (C,) primary estimate
    estimates: dict[str, PriorEstimate]
    pi_s: np.ndarray  # (C,) downstream training prior
    primary: str
    ft_temperature: float = 1.0  # what the ft logits are divided by (temperature_scope "each")

    @property
    def temperature(self) -> float:
        return self.estimates[self.primary].temperature


def _estimator_names(options: AnalysisOptions) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(options.estimators))
    if not names:
        raise ValueError("analysis needs at least one estimator")
    for n in names:
        if n not in ESTIMATORS:
            raise ValueError(f"unknown estimator {n!r}; choose from {', '.join(ESTIMATORS)}")
    return names


def _fit_label_distribution(options: AnalysisOptions, y: np.ndarray | None, num_classes: int) -> np.ndarray | None:
    """The label distribution handed to the label-free estimators (None = their uniform default)."""
    d = options.fit_label_distribution
    if isinstance(d, str) and d == "uniform":
        return None
    if isinstance(d, str):  # "counts": the fit split's own labels
        if y is None:
            raise ValueError("fit_label_distribution 'counts' needs a labelled fit split")
        n = np.bincount(y, minlength=num_classes)
        if (n == 0).any():
            raise ValueError(f"fit_label_distribution 'counts': class {int(np.flatnonzero(n == 0)[0])} "
                             "has no sample in the fit split")
        return n / n.sum()
    p = np.asarray(d, dtype=np.float64)
    if p.shape != (num_classes,) or not np.isfinite(p).all() or (p <= 0).any():
        raise ValueError(f"fit_label_distribution must be {num_classes} finite values > 0, got shape {p.shape}")
    return p / p.sum()


def fit_priors(zs_fit, y_fit, num_classes: int, class_counts=None, options: AnalysisOptions | None = None,
               ft_fit=None) -> FittedPriors:
    """Estimate π_p with every requested estimator on the fit split, and π_s from counts.

    ``y_fit`` may be None (or all −1) for the label-free estimators only. With ``ft_fit``
    (the fit split's ft logits), a temperature and ``temperature_scope`` "each", ft gets
    its own temperature, fitted by the same rule as zs's (a fixed number: the same number).
    """
    options = options or AnalysisOptions()
    names = _estimator_names(options)
    z = check_logits(zs_fit, "zs logits of the fit split")
    if z.shape[1] != num_classes:
        raise ValueError(f"zs logits of the fit split have {z.shape[1]} columns, expected {num_classes} classes")
    y = None
    if y_fit is not None:
        y = np.asarray(y_fit)
        unknown = int((y < 0).sum()) if y.ndim == 1 else 0
        if unknown == y.size and y.size:
            y = None  # unlabelled fit split: label-free estimators only
        elif unknown:
            raise ValueError(f"fit-split labels: {unknown} of {y.size} rows are unknown (-1)")
        else:
            y = check_labels(y, z.shape[0], num_classes, "fit-split labels")
    dist = _fit_label_distribution(options, y, num_classes)
    estimates = {
        n: estimate_pretrain_prior(z, y, n, temperature=options.temperature, **options.estimator_options,
                                   **({"label_distribution": dist} if n in LABEL_FREE and dist is not None else {}))
        for n in names
    }
    t_ft = 1.0
    if ft_fit is not None and options.temperature is not None and options.temperature_scope == "each":
        f = check_logits(ft_fit, "ft logits of the fit split")
        if f.shape != z.shape:
            raise ValueError(f"ft logits of the fit split have shape {f.shape}, zs {z.shape}")
        t_ft = resolve_temperature(f, y, options.temperature)
    pi_s = downstream_prior(class_counts, num_classes, options.smoothing)
    return FittedPriors(estimates[names[0]].prior, estimates, pi_s, names[0], t_ft)


def evaluate(chunks: Iterable[tuple], fitted: FittedPriors, options: AnalysisOptions | None = None,
             predictions: dict[str, list] | None = None) -> paired.MethodTallies:
    """Merge per-method tallies over (zs, ft | None, labels[, extra]) chunks of the eval split.

    ``extra`` maps further classifiers' logits by name (``wiseft@0.5``): each is scored
    as it is, as a method of that name (no prior, no temperature).

    Rows with label −1 (unknown) are skipped. The zs logits are divided by the primary
    estimate's temperature first, so log π_p is removed in the scale it was fitted in, and
    the ft logits by ``fitted.ft_temperature`` (1 unless temperature_scope is "each").
    Every chunk must agree on whether ft logits exist (that decides the method set).
    Beside each method's tally, the result counts per class the samples every pair of
    methods gets right (``analyze.paired``): the paired comparisons need nothing else.
    With ``predictions`` (a dict), each method's predicted classes of the labelled rows
    are appended to ``predictions[method]`` block by block (see ``analyze.predictions``).
    """
    options = options or AnalysisOptions()
    C = fitted.pi_p.shape[0]
    total = paired.MethodTallies({})
    has_ft = None
    for i, chunk in enumerate(chunks):
        if np.shape(chunk[0])[:1] == (0,):  # an empty part contributes nothing
            continue
        z, f, y, extra = _chunk_arrays(i, chunk, C)
        if has_ft is None:
            has_ft = f is not None
            total = paired.MethodTallies.empty((*adjust.methods_for(has_ft), *extra), C, options.n_bins)
        elif has_ft != (f is not None):
            raise ValueError(f"chunk {i}: ft logits present in some chunks and missing in others")
        if set(extra) != set(total) - set(adjust.methods_for(has_ft)):
            raise ValueError(f"chunk {i}: extra logits {sorted(extra)} differ from the first chunk's")
        extra = {n: extra[n] for n in total if n in extra}  # the first chunk's order
        # Sub-blocks keep every adjusted copy small (cache-friendly, no page-faulting
        # of chunk-sized temporaries per method).
        for a in range(0, z.shape[0], _EVAL_ROWS):
            rows = slice(a, a + _EVAL_ROWS)
            total = total.merge(_score_block(z[rows], None if f is None else f[rows], y[rows],
                                             {n: x[rows] for n, x in extra.items()}, fitted, options,
                                             predictions))
    return total


def _chunk_arrays(i: int, chunk: tuple, C: int) -> tuple:
    """(zs, ft | None, labels, extra) of chunk ``i``, checked, rows of unknown label dropped."""
    zs, ft, y = chunk[:3]
    extra = chunk[3] if len(chunk) > 3 else {}
    z = check_logits(zs, f"zs logits (chunk {i})")
    if z.shape[1] != C:
        raise ValueError(f"zs logits (chunk {i}) have {z.shape[1]} columns, expected {C}")
    f = None if ft is None else check_logits(ft, f"ft logits (chunk {i})")
    if f is not None and f.shape != z.shape:
        raise ValueError(f"ft logits (chunk {i}) shape {f.shape} differs from zs {z.shape}")
    y = np.asarray(y)
    if y.shape != (z.shape[0],):
        raise ValueError(f"labels (chunk {i}) have shape {y.shape}, expected ({z.shape[0]},)")
    extra = {n: check_logits(x, f"{n} logits (chunk {i})") for n, x in extra.items()}
    keep = y >= 0
    if not keep.all():
        z, y = z[keep], y[keep]
        f = None if f is None else f[keep]
        extra = {n: x[keep] for n, x in extra.items()}
    return z, f, check_labels(y, z.shape[0], C, f"labels (chunk {i})"), extra


def _score_block(zb, fb, yb, extra: dict, fitted: FittedPriors, options: AnalysisOptions,
                 predictions: dict[str, list] | None) -> paired.MethodTallies:
    """Tallies of one block for every method, and the pair counts of their hits."""
    C = fitted.pi_p.shape[0]
    inv_t = np.float32(1.0 / fitted.temperature)
    inv_t_ft = np.float32(1.0 / fitted.ft_temperature)
    if inv_t != 1:
        zb = zb * inv_t
    if fb is not None and inv_t_ft != 1:
        fb = fb * inv_t_ft
    methods = adjust.iter_methods(zb, fb, pi_s=fitted.pi_s, pi_p=fitted.pi_p, target_prior=options.target_prior)
    tallies, hits = {}, {}
    for m, logits in chain(methods, extra.items()):
        tallies[m], pred = stats.tally_and_predictions(logits, yb, C, options.n_bins)
        hits[m] = pred == yb
        if predictions is not None:
            predictions.setdefault(m, []).append(pred)
    pairs = paired.PairTally.empty(tallies, C)
    pairs.add(yb, hits)
    return paired.MethodTallies(tallies, pairs)


def build_tables(
    model: str,
    dataset: str,
    eval_split: str,
    class_names: Sequence[str],
    fitted: FittedPriors,
    tallies: Mapping[str, stats.Tally],
    class_counts=None,
    fdr: float = paired.DEFAULT_FDR,
    options: AnalysisOptions | None = None,
) -> dict[str, pl.DataFrame]:
    """{table name: DataFrame} of one cell, each with its ``analyze.schema`` columns.

    Head/medium/tail sizes follow ``options.groups`` (pooled accuracy); many/medium/few
    accuracy averages per ``options.shot_accuracy``. With
    :class:`~analyze.paired.MethodTallies` (what ``evaluate`` returns) the cell also gets
    its comparisons table and per-class helps / hurts flags (BH at level ``fdr``); with a
    plain dict of tallies those are empty / null.
    """
    options = options or AnalysisOptions()
    C = fitted.pi_p.shape[0]
    names = [str(c) for c in class_names]
    if len(names) != C:
        raise ValueError(f"{len(names)} class names for {C} classes")
    cgroup = None
    if class_counts is not None:
        counts = np.asarray(class_counts)
        if counts.shape != (C,):
            raise ValueError(f"class counts have shape {counts.shape}, expected ({C},)")
        cgroup = stats.count_groups(counts)
    pgroup = stats.prior_groups(fitted.pi_p, options.groups)
    if not isinstance(tallies, paired.MethodTallies):
        tallies = paired.MethodTallies(dict(tallies))
    # target_estimator names the π_t estimate of gla_tp rows (analyze.audits); empty here.
    cell = {"model": model, "dataset": dataset, "estimator": fitted.primary, "target_estimator": ""}
    summary_rows, per_class, calibration = [], [], []
    for m, t in tallies.items():
        summary_rows.append({**cell, "method": m, "split": eval_split,
                             **_summary_metrics(t, pgroup, cgroup, options.shot_accuracy)})
        per_class.append(schema.frame("per_class", {
            **{k: [v] * C for k, v in cell.items()}, "method": [m] * C,
            "class_index": np.arange(C, dtype=np.int32), "class_name": names,
            **stats.per_class_metrics(t), "prior_pretrain": fitted.pi_p, "prior_downstream": fitted.pi_s,
            "group": pgroup.tolist(),
            "count_group": pl.Series([None] * C if cgroup is None else cgroup.tolist(), dtype=pl.String),
            **paired.class_flags(tallies, m, fdr),
        }))  # fmt: skip
        calibration.append(_calibration(cell, m, eval_split, t))
    return {
        "summary": schema.frame("summary", summary_rows),
        "per_class": schema.concat("per_class", per_class),
        "priors": _priors_frame(model, dataset, names, fitted),
        "calibration": schema.concat("calibration", calibration),
        "comparisons": _comparisons(cell, tallies),
    }


_GROUPS = {"acc_head": "head", "acc_medium": "medium", "acc_tail": "tail"}
_COUNT_GROUPS = {"acc_many": "many", "acc_medium_shot": "medium", "acc_few": "few"}


def _summary_metrics(t: stats.Tally, pgroup: np.ndarray, cgroup: np.ndarray | None, shot_accuracy: str) -> dict:
    """summary's metrics of one method: the overall ones, group accuracies, their intervals
    (head/medium/tail pooled; the shot groups pooled or per-class as ``shot_accuracy``)."""
    row = stats.summary_metrics(t)
    ga = stats.group_accuracy(t, pgroup)
    row.update({col: ga.get(g, np.nan) for col, g in _GROUPS.items()})
    gc = {} if cgroup is None else stats.group_accuracy(t, cgroup, shot_accuracy)
    row.update({col: gc.get(g, np.nan) for col, g in _COUNT_GROUPS.items()})
    shot_kind = intervals.kind_of_average(shot_accuracy)
    groups = {col: (pgroup == g, intervals.POOLED) for col, g in _GROUPS.items()}
    groups.update({col: (None if cgroup is None else cgroup == g, shot_kind) for col, g in _COUNT_GROUPS.items()})
    row.update(intervals.summary_intervals(t, groups))
    return row


def _comparisons(cell: dict, tallies: paired.MethodTallies) -> pl.DataFrame:
    if tallies.pairs is None:
        return schema.empty("comparisons")
    base = {k: v for k, v in cell.items() if k != "target_estimator"}
    return schema.frame("comparisons", [{**base, **r} for r in paired.comparison_rows(tallies)])


def _calibration(cell: dict, method: str, split: str, t: stats.Tally) -> pl.DataFrame:
    """Reliability-diagram bins from the merged tally: count, mean top-label confidence
    and accuracy per equal-width confidence bin (null when empty)."""
    nb = len(t.bin_count)
    b = np.arange(nb)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = t.bin_conf / t.bin_count
        acc = t.bin_correct / t.bin_count
    return schema.frame("calibration", {
        **{k: [v] * nb for k, v in cell.items()}, "method": [method] * nb, "split": [split] * nb,
        "bin": b.astype(np.int32), "bin_lo": b / nb, "bin_hi": (b + 1) / nb,
        "count": t.bin_count.astype(np.int64), "confidence": conf, "accuracy": acc,
    })  # fmt: skip


def _priors_frame(model: str, dataset: str, names: list[str], fitted: FittedPriors) -> pl.DataFrame:
    C = len(names)
    frames = []
    for est, e in fitted.estimates.items():
        frames.append(schema.frame("priors", {
            "model": [model] * C, "dataset": [dataset] * C, "estimator": [est] * C,
            "class_index": np.arange(C, dtype=np.int32), "class_name": names,
            "prior": e.prior.astype(np.float64), "iterations": [e.iterations] * C,
            "objective": [e.objective] * C, "converged": [e.converged] * C,
            "temperature": [e.temperature] * C, "message": [e.message] * C,
        }))  # fmt: skip
    return schema.concat("priors", frames)
