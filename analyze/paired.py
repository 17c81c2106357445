"""Paired comparisons of the methods of one cell: they score the same samples.

A :class:`PairTally` counts, per class, the samples that both methods of a pair get
right. With each method's per-class ``correct`` (its :class:`~analyze.stats.Tally`) that
gives every discordant count: ``n_better[k] = correct_a[k] − both[k]`` (a right, b
wrong), ``n_worse[k] = correct_b[k] − both[k]``. Tallies of disjoint chunks add up, so
a cell is reduced chunk by chunk (threads, Dask) like the per-method tallies.
:class:`MethodTallies` carries both: a mapping method → Tally with the pair counts beside.

From the merged counts: ``comparisons`` (every ordered pair, on all samples: delta, the
Bonett–Price paired interval, the exact McNemar p) and per-class flags against each
method's baseline (``baseline_of``), with Benjamini–Hochberg across the cell's classes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from itertools import combinations

import numpy as np
from gla.analyze import significance as sig
from gla.analyze.stats import Tally

DEFAULT_FDR = 0.05  # level of the per-class helps / hurts flags

# Which method each method is judged against in per_class (docs/statistics.md): the
# fine-tuned model for everything built on it, the zero-shot model for its de-biased form.
BASELINES = {"zs_debiased": "zs", "ft_la": "ft", "ensemble": "ft", "gla": "ft"}
_PREFIX_BASELINES = {"wiseft@": "ft", "kshot@": "zs"}


def baseline_of(method: str, methods) -> str | None:
    """The baseline of ``method`` among ``methods`` (None for zs, ft, or when it is absent)."""
    base = BASELINES.get(method)
    if base is None:
        base = next((b for p, b in _PREFIX_BASELINES.items() if method.startswith(p)), None)
    return base if base in methods and base != method else None


@dataclass
class PairTally:
    methods: tuple[str, ...]
    both: np.ndarray  # (P, C) int64: samples of class k right under both methods of pair p

    @classmethod
    def empty(cls, methods, num_classes: int) -> PairTally:
        methods = tuple(methods)
        n_pairs = len(methods) * (len(methods) - 1) // 2
        return cls(methods, np.zeros((n_pairs, num_classes), dtype=np.int64))

    def _pair(self, a: str, b: str) -> int:
        i, j = sorted((self.methods.index(a), self.methods.index(b)))
        M = len(self.methods)
        return i * M - i * (i + 1) // 2 + (j - i - 1)  # row of (i, j) in combinations order

    def add(self, labels: np.ndarray, hits: Mapping[str, np.ndarray]) -> None:
        """Count one block in place: ``hits[m]`` (N,) bool = method m right on the sample."""
        y = np.asarray(labels)
        C = self.both.shape[1]
        for p, (a, b) in enumerate(combinations(self.methods, 2)):
            self.both[p] += np.bincount(y[hits[a] & hits[b]], minlength=C)

    def merge(self, other: PairTally) -> PairTally:
        if self.methods != other.methods or self.both.shape != other.both.shape:
            raise ValueError("cannot merge pair tallies of different methods or classes")
        return PairTally(self.methods, self.both + other.both)

    def both_right(self, a: str, b: str) -> np.ndarray:
        return self.both[self._pair(a, b)]


class MethodTallies(Mapping):
    """method → :class:`Tally` of one cell, with the :class:`PairTally` of its methods."""

    def __init__(self, tallies: dict[str, Tally], pairs: PairTally | None = None):
        if pairs is not None and tuple(tallies) != pairs.methods:
            raise ValueError("pair tally methods differ from the method tallies")
        self.tallies, self.pairs = dict(tallies), pairs

    @classmethod
    def empty(cls, methods, num_classes: int, n_bins: int) -> MethodTallies:
        methods = tuple(methods)
        return cls({m: Tally.empty(num_classes, n_bins) for m in methods}, PairTally.empty(methods, num_classes))

    def __getitem__(self, method: str) -> Tally:
        return self.tallies[method]

    def __iter__(self) -> Iterator[str]:
        return iter(self.tallies)

    def __len__(self) -> int:
        return len(self.tallies)

    def merge(self, other: MethodTallies) -> MethodTallies:
        if tuple(self) != tuple(other):
            raise ValueError(f"cannot merge tallies of methods {tuple(self)} and {tuple(other)}")
        if (self.pairs is None) != (other.pairs is None):
            raise ValueError("cannot merge tallies with and without pair counts")
        pairs = None if self.pairs is None else self.pairs.merge(other.pairs)
        return MethodTallies({m: t.merge(other[m]) for m, t in self.tallies.items()}, pairs)

    def discordant(self, a: str, b: str) -> tuple[np.ndarray, np.ndarray]:
        """(C,) n_better (a right, b wrong) and n_worse (a wrong, b right) per class."""
        if self.pairs is None:
            raise ValueError("these tallies carry no pair counts")
        both = self.pairs.both_right(a, b)
        return self[a].correct - both, self[b].correct - both


def comparison_rows(tallies: MethodTallies) -> list[dict]:
    """Every method against every other (ordered pairs) on all the cell's samples."""
    rows = []
    for a in tallies:
        for b in tallies:
            if a == b:
                continue
            better, worse = (int(v.sum()) for v in tallies.discordant(a, b))
            n = tallies[a].n
            lo, hi = sig.paired_interval(n, better, worse)
            rows.append({"method": a, "baseline": b, "n": n, "n_better": better, "n_worse": worse,
                         "delta": (better - worse) / n if n else float("nan"),
                         "delta_ci_low": lo, "delta_ci_high": hi,
                         "mcnemar_p": sig.mcnemar_exact(better, worse)})
    return rows


def class_flags(tallies: MethodTallies, method: str, fdr: float = DEFAULT_FDR) -> dict[str, np.ndarray | list]:
    """(C,) per-class paired comparison of ``method`` with its baseline and BH flags.

    Classes without samples get no test (null, and not counted by BH). Without a
    baseline (or pair counts) every column is null.
    """
    C = len(tallies[method].support)
    base = baseline_of(method, tuple(tallies)) if tallies.pairs is not None else None
    nan = np.full(C, np.nan)
    if base is None:
        none = [None] * C
        return {"baseline": none, "n_better": none, "n_worse": none, "delta": nan, "delta_ci_low": nan,
                "delta_ci_high": nan, "mcnemar_p": nan, "q_value": nan, "helps": none, "hurts": none}
    better, worse = tallies.discordant(method, base)
    n = tallies[method].support
    delta, lo, hi, p = nan.copy(), nan.copy(), nan.copy(), nan.copy()
    for k in np.flatnonzero(n > 0):
        delta[k] = (better[k] - worse[k]) / n[k]
        lo[k], hi[k] = sig.paired_interval(n[k], better[k], worse[k])
        p[k] = sig.mcnemar_exact(better[k], worse[k])
    q = sig.bh_adjust(p)
    tested = ~np.isnan(q)
    flag = lambda sel: np.where(tested, sel & (q <= fdr), None).tolist()  # noqa: E731
    return {"baseline": [base] * C, "n_better": better, "n_worse": worse, "delta": delta,
            "delta_ci_low": lo, "delta_ci_high": hi, "mcnemar_p": p, "q_value": q,
            "helps": flag(delta > 0), "hurts": flag(delta < 0)}
