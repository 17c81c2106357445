"""Standard errors and 95 % intervals of the summary accuracies, from a merged Tally.

Two kinds of accuracy (docs/statistics.md):

- pooled, Σ correct / Σ support over some classes (``accuracy``, and a group accuracy
  pooled over its classes): one binomial proportion, Wilson score interval, ``_se`` the
  plug-in standard error √(p(1 − p)/n);
- class mean, the mean of the per-class accuracies of the classes with samples
  (``balanced_accuracy``, and a group accuracy averaged over its classes): a mean of
  independent binomial proportions, ``significance.class_mean_interval`` (adjusted
  Wald), ``_se`` its standard error.

Only per-class counts enter, so the intervals of a cell reduced chunk by chunk are those
of the one-shot computation. Undefined (no samples, no classes) is NaN, null in tables.
"""

from __future__ import annotations

import math

import numpy as np
from gla.analyze import significance as sig
from gla.analyze.stats import Tally

LEVEL = 0.95
POOLED, CLASS_MEAN = "pooled", "class_mean"
# How accuracy and balanced_accuracy average over classes; a group accuracy's kind is
# passed with it (analyze.cell: head/medium/tail pooled, the shot groups per
# ``AnalysisOptions.shot_accuracy``). tests/test_intervals.py checks each against its
# point estimate.
KINDS = {"accuracy": POOLED, "balanced_accuracy": CLASS_MEAN}
_AVERAGES = {"pooled": POOLED, "per-class": CLASS_MEAN}  # analyze.stats.GROUP_AVERAGES names


def kind_of_average(average: str) -> str:
    """The interval kind of a group accuracy averaged as ``stats.group_accuracy(average=)``."""
    try:
        return _AVERAGES[average]
    except KeyError:
        raise ValueError(f"group average: expected one of {', '.join(_AVERAGES)}, got {average!r}") from None


def pooled(correct, support, level: float = LEVEL) -> tuple[float, float, float]:
    """(se, low, high) of Σ correct / Σ support (Wilson); NaN without samples."""
    x, n = int(np.sum(correct)), int(np.sum(support))
    if n == 0:
        return (math.nan, math.nan, math.nan)
    p = x / n
    lo, hi = sig.wilson_interval(x, n, level)
    return (math.sqrt(p * (1 - p) / n), float(lo), float(hi))


def class_mean(correct, support, level: float = LEVEL) -> tuple[float, float, float]:
    """(se, low, high) of the mean accuracy of the classes with samples; NaN without any."""
    correct, support = np.asarray(correct), np.asarray(support)
    present = support > 0
    return sig.class_mean_interval(correct[present], support[present], level)


def estimate(correct, support, kind: str) -> float:
    """The point estimate an interval of ``kind`` is for (NaN when undefined)."""
    correct, support = np.asarray(correct, dtype=np.float64), np.asarray(support, dtype=np.float64)
    present = support > 0
    if not present.any():
        return math.nan
    if kind == POOLED:
        return float(correct.sum() / support.sum())
    return float((correct[present] / support[present]).mean())


def metric_interval(t: Tally, kind: str, classes: np.ndarray | None = None,
                    level: float = LEVEL) -> tuple[float, float, float]:
    """(se, low, high) of an accuracy of ``kind`` over ``classes`` (a (C,) mask; all if None)."""
    sel = slice(None) if classes is None else np.asarray(classes, dtype=bool)
    fn = {POOLED: pooled, CLASS_MEAN: class_mean}[kind]
    return fn(t.correct[sel], t.support[sel], level)


def summary_intervals(t: Tally, groups: dict[str, tuple[np.ndarray | None, str]],
                      level: float = LEVEL) -> dict[str, float]:
    """``<metric>_se``, ``_ci_low``, ``_ci_high`` for accuracy, balanced_accuracy and each
    group accuracy in ``groups`` (summary column → ((C,) class mask or None when there is
    no such group, kind))."""
    out: dict[str, float] = {}
    metrics = {m: (None, kind) for m, kind in KINDS.items()}
    for metric, (mask, kind) in {**metrics, **groups}.items():
        if metric in groups and mask is None:
            se = lo = hi = math.nan
        else:
            se, lo, hi = metric_interval(t, kind, mask, level)
        out.update({f"{metric}_se": se, f"{metric}_ci_low": lo, f"{metric}_ci_high": hi})
    return out
