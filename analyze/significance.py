"""Exact tests and intervals for comparing two accuracies, and multiple-testing control.

numpy and the standard library only (scipy is not a runtime dependency). Counts in,
p-values and intervals out:

- paired (both runs scored the same samples): the exact McNemar test on the discordant
  pairs and the Bonett–Price adjusted-Wald interval for the accuracy difference;
- unpaired (different samples, e.g. a resampled split): Fisher's exact test and
  Newcombe's hybrid-score interval;
- one proportion: the Wilson score interval; a mean of independent per-class
  proportions (balanced accuracy): an adjusted Wald interval (``class_mean_interval``);
- Benjamini–Hochberg and Holm adjusted p-values.

Every function is checked against statsmodels (or a bootstrap) on random inputs in
``tests/test_significance.py``.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np


def _z(level: float) -> float:
    return NormalDist().inv_cdf(0.5 + level / 2)


def _log_factorials(n: int) -> np.ndarray:
    """log k! for k = 0..n (cumulative sums of logs: exact enough for differences)."""
    return np.concatenate(([0.0], np.cumsum(np.log(np.arange(1, n + 1, dtype=np.float64)))))


def _logsumexp(a: np.ndarray) -> float:
    m = float(a.max())
    return m + math.log(float(np.exp(a - m).sum()))


def mcnemar_exact(n_better: int, n_worse: int) -> float:
    """Two-sided exact McNemar p-value: 2·P(Bin(b + c, ½) ≤ min(b, c)), capped at 1.

    ``n_better``/``n_worse`` are the discordant pairs (right in one run only). Same
    definition as ``statsmodels.stats.contingency_tables.mcnemar(exact=True)``.
    """
    b, c = int(n_better), int(n_worse)
    if b < 0 or c < 0:
        raise ValueError("discordant counts must be non-negative")
    n, k = b + c, min(b, c)
    if n == 0 or 2 * k >= n:
        return 1.0
    lf = _log_factorials(n)
    i = np.arange(k + 1)
    log_pmf = lf[n] - lf[i] - lf[n - i] - n * math.log(2.0)
    return min(1.0, 2.0 * math.exp(_logsumexp(log_pmf)))


def fisher_exact(x1: int, n1: int, x2: int, n2: int) -> float:
    """Two-sided Fisher exact p-value for successes x1/n1 against x2/n2 (independent).

    Sums the hypergeometric probabilities of all tables with the observed margins that
    are no more likely than the observed one (the scipy convention, relative tolerance
    1e-7 for ties).
    """
    x1, n1, x2, n2 = int(x1), int(n1), int(x2), int(n2)
    if not (0 <= x1 <= n1 and 0 <= x2 <= n2):
        raise ValueError("need 0 <= x <= n for both groups")
    N, K = n1 + n2, x1 + x2
    if n1 == 0 or n2 == 0 or K == 0 or K == N:
        return 1.0
    lf = _log_factorials(N)
    x = np.arange(max(0, K - n2), min(K, n1) + 1)
    log_pmf = lf[K] - lf[x] - lf[K - x] + lf[N - K] - lf[n1 - x] - lf[N - K - n1 + x] - (lf[N] - lf[n1] - lf[N - n1])
    obs = log_pmf[x1 - x[0]]
    keep = log_pmf <= obs + math.log1p(1e-7)
    return min(1.0, math.exp(_logsumexp(log_pmf[keep])))


def paired_interval(n: int, n_better: int, n_worse: int, level: float = 0.95) -> tuple[float, float]:
    """Interval for acc(new) − acc(old) from n paired samples (Bonett & Price 2012).

    Adjusted Wald: one pseudo-count on each discordant cell, so it behaves at 0 or n
    discordant pairs, where the plain Wald interval collapses.
    """
    n, b, c = int(n), int(n_better), int(n_worse)
    if n <= 0:
        return (math.nan, math.nan)
    if b < 0 or c < 0 or b + c > n:
        raise ValueError("need 0 <= n_better + n_worse <= n")
    p12, p21 = (b + 1) / (n + 2), (c + 1) / (n + 2)
    d = p12 - p21
    se = math.sqrt(max(p12 + p21 - d * d, 0.0) / (n + 2))
    z = _z(level)
    return (max(-1.0, d - z * se), min(1.0, d + z * se))


def wilson_interval(x, n, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval for x successes of n trials (arrays broadcast); NaN where n = 0.

    Same as ``statsmodels.stats.proportion.proportion_confint(method="wilson")``.
    """
    x = np.asarray(x, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    if np.any(x < 0) or np.any(x > n):
        raise ValueError("need 0 <= x <= n")
    z2 = _z(level) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        p = x / n
        centre = (p + z2 / (2 * n)) / (1 + z2 / n)
        half = math.sqrt(z2) / (1 + z2 / n) * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    lo, hi = np.where(n > 0, centre - half, np.nan), np.where(n > 0, centre + half, np.nan)
    return np.clip(lo, 0.0, 1.0), np.clip(hi, 0.0, 1.0)


def class_mean_interval(x, n, level: float = 0.95) -> tuple[float, float, float]:
    """(se, low, high) of the mean of K independent proportions x_k / n_k (all n_k >= 1).

    An adjusted Wald interval (docs/statistics.md): Price & Bonett's pseudo-counts (2/K
    successes and 4/K trials added to each class, so K = 2 is Agresti–Caffo and a world
    of perfect classes still gets a width), with each class's variance estimated without
    bias, x̃(ñ − x̃) / (ñ²(ñ − 1)), since the plug-in p(1 − p)/n undercovers when classes
    have few samples; a class of one sample gets the Bernoulli maximum 1/4. NaN when K = 0.
    """
    x = np.asarray(x, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    if x.shape != n.shape or x.ndim != 1 or np.any(n < 1) or np.any(x < 0) or np.any(x > n):
        raise ValueError("need 1-D counts with 0 <= x <= n and n >= 1")
    K = x.size
    if K == 0:
        return (math.nan, math.nan, math.nan)
    xt, nt = x + 2.0 / K, n + 4.0 / K
    with np.errstate(invalid="ignore", divide="ignore"):
        var = np.where(n > 1, xt * (nt - xt) / (nt * nt * (nt - 1.0)), 0.25)
    se = math.sqrt(float(np.minimum(var, 0.25 / np.maximum(n - 1.0, 1.0)).sum())) / K
    centre = float((xt / nt).mean())
    z = _z(level)
    return (se, max(0.0, centre - z * se), min(1.0, centre + z * se))


def unpaired_interval(x_new: int, n_new: int, x_old: int, n_old: int, level: float = 0.95) -> tuple[float, float]:
    """Newcombe's hybrid-score interval for x_new/n_new − x_old/n_old (independent samples)."""
    if n_new <= 0 or n_old <= 0:
        return (math.nan, math.nan)
    p1, p2 = x_new / n_new, x_old / n_old
    l1, u1 = (float(v) for v in wilson_interval(x_new, n_new, level))
    l2, u2 = (float(v) for v in wilson_interval(x_old, n_old, level))
    d = p1 - p2
    return (d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2))


def _as_p(pvalues) -> np.ndarray:
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1 or (p.size and (np.nanmin(p) < 0 or np.nanmax(p) > 1)):
        raise ValueError("p-values must be a 1-D array in [0, 1]")
    return p


def bh_adjust(pvalues) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (q-values); reject where q <= alpha.

    NaN entries (no test) stay NaN and do not count towards the number of tests.
    """
    p = _as_p(pvalues)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    m = int(ok.sum())
    if m == 0:
        return out
    order = np.argsort(p[ok], kind="stable")
    ranked = p[ok][order] * m / np.arange(1, m + 1)
    q = np.minimum(1.0, np.minimum.accumulate(ranked[::-1])[::-1])
    adj = np.empty(m)
    adj[order] = q
    out[ok] = adj
    return out


def holm_adjust(pvalues) -> np.ndarray:
    """Holm step-down adjusted p-values (family-wise error control); NaN stays NaN."""
    p = _as_p(pvalues)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    m = int(ok.sum())
    if m == 0:
        return out
    order = np.argsort(p[ok], kind="stable")
    ranked = p[ok][order] * (m - np.arange(m))
    q = np.minimum(1.0, np.maximum.accumulate(ranked))
    adj = np.empty(m)
    adj[order] = q
    out[ok] = adj
    return out
