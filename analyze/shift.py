"""Label shift: the deployment label distribution π_t estimated from unlabelled logits.

Two estimators, both on a de-biased model's logits (gla, or zs_debiased without ft):

- ``em``: maximum-likelihood label shift (Saerens et al. 2002) on probabilities calibrated
  by bias-corrected temperature scaling (BCTS, Alexandari et al. 2020) fitted on the
  labelled fit split. The calibrated model predicts under the fit split's own label
  distribution ρ; EM re-weights its posteriors by π/ρ until π = mean posterior.
- ``bbse``: black-box shift estimation (Lipton et al. 2018). The confusion matrix
  P(ŷ = i | y = j) of hard predictions on the fit split is inverted on the eval set's
  prediction frequencies, as a least-squares problem kept on the simplex.

Everything over the eval set is a reduction over parts. BBSE needs one pass (prediction
counts). EM needs one pass per iteration: ``em_part`` maps one part's source posteriors
(``source_posteriors``, computed once) to its sufficient statistics (posterior sums,
log-likelihood, count) for the current weights, two matrix-vector products, and the
statistics of parts add up; ``estimate_em`` drives the iterations (SQUAREM-accelerated, so
a few dozen passes) through a caller-supplied ``reduce`` that runs the map over all parts.
Windows (time slices of the eval set) are estimated in the same passes, one row of
statistics per window.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from gla.analyze.priors import (
    _BiasedSoftmax,
    _solve_matching,
    check_labels,
    check_logits,
    illinois_root,
)

TARGET_ESTIMATORS = ("em", "bbse")
_FLOOR = 1e-12  # smallest prior entry kept (log π must stay finite)
_INNER_TOL = 1e-9  # BCTS inner gap: its error in the β-derivative stays below the outer tol


@dataclass(frozen=True)
class TargetEstimate:
    prior: np.ndarray  # (W, C) float64, rows on the simplex (W = 1 without windows)
    estimator: str
    iterations: int  # passes over the eval set
    converged: bool
    message: str = ""


# ------------------------------------------------------------------- calibration (BCTS)


@dataclass(frozen=True)
class Calibration:
    """Calibrated logits = beta · logits + bias (bias-corrected temperature scaling)."""

    beta: float
    bias: np.ndarray  # (C,)
    source_prior: np.ndarray  # ρ: label distribution of the set it was fitted on

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        z = np.asarray(logits, dtype=np.float32)
        return z * np.float32(self.beta) + self.bias.astype(np.float32)


class _Softmax64:
    """(mean_i lse(z_i − b), mean_i softmax(z_i − b)) in float64: the fit split is small,
    and at extreme temperatures float32 would underflow whole rows."""

    def __init__(self, z: np.ndarray):
        self.z = z

    def __call__(self, b: np.ndarray):
        a = self.z - b
        m = a.max(axis=1, keepdims=True)
        np.subtract(a, m, out=a)
        np.exp(a, out=a)
        s = a.sum(axis=1)
        a /= s[:, None]
        return float(np.mean(m[:, 0] + np.log(s))), a.mean(axis=0)


def _profile_nll(z: np.ndarray, zy_mean: float, p: np.ndarray, beta: float,
                 b_init: np.ndarray | None = None):
    """min over b of mean NLL(softmax(βz + b), y), its derivative in β, and the optimal b.

    The inner minimum over b is the matching problem mean softmax(βz + b) = p (labels enter
    only through the class fractions p), solved by the project's log-space solver from
    ``b_init`` (the solution at a nearby β). By the envelope theorem the β-derivative at
    the optimal b is mean_i E_softmax[z_i] − z_iy.
    """
    zb = (z * beta).astype(np.float32)
    try:  # float32, two matrix-vector products per evaluation (analyze.priors)
        b, _, f, _, _ = _solve_matching(_BiasedSoftmax(zb), p, _INNER_TOL, 500, b_init=b_init)
    except RecursionError:  # whole rows underflow at an extreme β: exact float64 instead
        b, _, f, _, _ = _solve_matching(_Softmax64(zb.astype(np.float64)), p, 1e-12, 500)
    nll = f - beta * zy_mean  # f = mean lse(zb − b) + p·b, and mean_i b_{y_i} = p·b
    a = zb - b.astype(np.float32)
    a = np.exp(a - a.max(axis=1, keepdims=True))
    a /= a.sum(axis=1, keepdims=True)
    dbeta = float(np.einsum("ij,ij->i", a, z, dtype=np.float64).mean() - zy_mean)
    return float(nll), dbeta, -b


def _bracket(d, lo: float = np.log(1e-3), hi: float = np.log(1e3)):
    """From log β = 0, widen by factors of 2 until the derivative changes sign."""
    a, da = 0.0, d(0.0)
    step = np.log(2.0) * (1 if da < 0 else -1)
    while lo < a + step < hi:
        b, db = a + step, d(a + step)
        if np.sign(db) != np.sign(da):
            return (a, da, b, db) if a < b else (b, db, a, da)
        a, da, step = b, db, step * 2
    return None, da, None, None


def fit_bcts(logits, labels, num_classes: int | None = None, tol: float = 1e-6) -> Calibration:
    """Fit β > 0 and b minimising mean NLL of softmax(β·logits + b) on a labelled set.

    Jointly convex in (β, b), so the profile NLL over β is convex: its derivative is
    monotone, bracketed from β = 1 and found by safeguarded secant (Illinois) search on log β.
    """
    z = check_logits(logits, "calibration logits")
    C = z.shape[1] if num_classes is None else int(num_classes)
    y = check_labels(labels, z.shape[0], C, "calibration labels")
    n = np.bincount(y, minlength=C)
    if (n == 0).any():
        raise ValueError(f"calibration: class {int(np.flatnonzero(n == 0)[0])} has no labelled sample")
    p = n / n.sum()
    zy_mean = float(z[np.arange(z.shape[0]), y].astype(np.float64).mean())
    last: dict = {}  # the latest β and its solve: the next solve starts from its b, rescaled

    def profile(beta: float):
        if last and last["beta"] == beta:
            return last["out"]
        b_init = None if not last else -last["out"][2] * (beta / last["beta"])
        last.update(beta=beta, out=_profile_nll(z, zy_mean, p, beta, b_init))
        return last["out"]

    d = lambda lb: profile(float(np.exp(lb)))[1]  # noqa: E731
    lo, dlo, hi, dhi = _bracket(d)
    if lo is None:  # the optimum is at an end of [1e-3, 1e3] (separable or uninformative)
        lb = np.log(1e3) if dlo < 0 else np.log(1e-3)
    else:
        lb = illinois_root(d, lo, dlo, hi, dhi, tol=tol, max_iter=100)
    bias = profile(float(np.exp(lb)))[2]
    return Calibration(float(np.exp(lb)), bias - bias.mean(), p)


# ----------------------------------------------------------------------------- EM


@dataclass
class EMStats:
    """Sufficient statistics of one or more parts for one EM step (they add up)."""

    post: np.ndarray  # (W, C) Σ posterior over each window's rows
    n: np.ndarray  # (W,) rows per window
    loglik: np.ndarray  # (W,) Σ_i log Σ_k q_ik w_k (the likelihood ratio to the source prior)

    @classmethod
    def empty(cls, n_windows: int, num_classes: int) -> EMStats:
        return cls(np.zeros((n_windows, num_classes)), np.zeros(n_windows), np.zeros(n_windows))

    def merge(self, other: EMStats) -> EMStats:
        return EMStats(self.post + other.post, self.n + other.n, self.loglik + other.loglik)


def source_posteriors(cal_logits) -> np.ndarray:
    """softmax of calibrated logits in float32: the posteriors under the fit split's prior ρ.

    EM re-weights these and nothing else, so they are computed once (the only exp) and every
    EM pass after that is two matrix-vector products per part (``em_part``).
    """
    e = np.array(cal_logits, dtype=np.float32)  # a copy: normalised in place
    e -= e.max(axis=1, keepdims=True)
    np.exp(e, out=e)
    e /= e.sum(axis=1, keepdims=True)
    return e


def em_part(post: np.ndarray, log_w: np.ndarray, windows: np.ndarray | None = None) -> EMStats:
    """One part's EM statistics at weights w = π/ρ per window (log_w: (W, C)).

    ``post`` are the part's ``source_posteriors``. With r_i = post_i·w, the re-weighted
    posterior of row i is post_i ∘ w / r_i, so Σ_i of it is w ∘ (postᵀ (1/r)), and log r_i is
    the row's log-likelihood ratio to the source prior: two matrix-vector products.
    w is scaled to max 1. ``estimate_em`` keeps π ≥ 1e-12 and ρ ≥ 1/n_fit, so the scaled w
    stays above e^-50, a normal float32, and r_i ≥ max_k post_ik · min w ≥ e^-50 / C > 0.
    """
    p = np.asarray(post, dtype=np.float32)
    W, C = log_w.shape
    out = EMStats.empty(W, C)
    if p.shape[0] == 0:
        return out
    shift_w = log_w.max(axis=1)
    w = np.exp(log_w - shift_w[:, None])
    t = None if windows is None else np.asarray(windows, dtype=np.int64)
    for k in range(W) if t is not None else (0,):
        pk = p if t is None or W == 1 else p[t == k]
        if pk.shape[0] == 0:
            continue
        wk = w[k].astype(np.float32)  # the statistics depend on π only through wk, so EM
        r = pk @ wk  # settles exactly once π stops moving at float32 resolution
        out.post[k] = wk.astype(np.float64) * (pk.T @ (1.0 / r)).astype(np.float64)
        out.n[k] = pk.shape[0]
        out.loglik[k] = float(np.log(r, dtype=np.float64).sum() + pk.shape[0] * shift_w[k])
    return out


def _project_rows(pi: np.ndarray) -> np.ndarray:
    pi = np.maximum(pi, _FLOOR)
    return pi / pi.sum(axis=1, keepdims=True)


def estimate_em(
    reduce: Callable[[np.ndarray], EMStats],
    source_prior: np.ndarray,
    n_windows: int = 1,
    *,
    memory: float = 0.0,
    tol: float = 1e-6,
    max_passes: int = 1000,
    accelerate: bool = True,
) -> TargetEstimate:
    """Saerens EM for π_t per window; ``reduce(log_w)`` returns the merged EMStats of all parts.

    M-step: π_t = (S_t + κ π_{t−1}) / (n_t + κ), with κ = ``memory`` pseudo-counts drawn
    from the previous window's estimate (κ = 0: each window alone). Window t depends only
    on windows ≤ t. SQUAREM (Varadhan & Roland 2008) extrapolates two EM steps and keeps
    the result only if the (penalised) likelihood did not drop. Stops when no entry of π
    moves by more than ``tol`` in a pass (1e-6: ~30 passes at C = 1000, far below the
    sampling error of any split).
    """
    rho = np.asarray(source_prior, dtype=np.float64)
    log_rho = np.log(rho)
    passes = 0

    def step(pi):
        nonlocal passes
        passes += 1
        st = reduce(np.log(pi) - log_rho)
        prev = np.vstack([pi[:1], pi[:-1]])  # window t borrows from t−1 (window 0 from itself)
        kap = np.full(n_windows, float(memory))
        kap[0] = 0.0
        new = (st.post + kap[:, None] * prev) / np.maximum(st.n + kap, 1e-300)[:, None]
        empty = st.n + kap == 0
        new[empty] = rho
        obj = float(st.loglik.sum() + (kap[:, None] * prev * np.log(pi)).sum())
        return _project_rows(new), obj

    pi = np.tile(rho, (n_windows, 1))
    msg = ""
    while passes < max_passes:
        p1, obj0 = step(pi)
        if np.abs(p1 - pi).max() <= tol:
            return TargetEstimate(p1, "em", passes, True)
        if not accelerate:
            pi = p1
            continue
        p2, obj1 = step(p1)
        r, v = p1 - pi, p2 - 2 * p1 + pi
        nv = np.linalg.norm(v)
        alpha = -np.linalg.norm(r) / nv if nv > 0 else -1.0
        alpha = min(alpha, -1.0)
        cand = pi - 2 * alpha * r + alpha**2 * v
        if (cand <= 0).any():
            cand = p2
        cand = _project_rows(cand)
        p3, obj_c = step(cand)
        pi = p3 if obj_c >= obj1 - 1e-12 * abs(obj1) else p2
    msg = f"EM did not settle in {max_passes} passes"
    return TargetEstimate(pi, "em", passes, False, msg)


def array_reducer(cal_logits: np.ndarray, windows: np.ndarray | None = None, rows: int = 65536):
    """A ``reduce`` for estimate_em over an in-memory array of calibrated logits, in parts of
    ``rows`` (the posteriors are computed once, as a store's parts are by the pipeline)."""
    p = source_posteriors(cal_logits)
    t = None if windows is None else np.asarray(windows, dtype=np.int64)
    n_windows = 1 if t is None else int(t.max()) + 1

    def reduce(log_w):
        total = EMStats.empty(n_windows, p.shape[1])
        for a in range(0, p.shape[0], rows):
            tw = None if t is None else t[a : a + rows]
            total = total.merge(em_part(p[a : a + rows], log_w, tw))
        return total

    return reduce


# ---------------------------------------------------------------------------- BBSE


def confusion_conditional(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """M[i, j] = P(ŷ = i | y = j) from hard predictions on a labelled set (columns sum to 1)."""
    C = int(num_classes)
    y = check_labels(labels, np.asarray(pred).shape[0], C, "confusion labels")
    counts = np.bincount(np.asarray(pred, dtype=np.int64) * C + y, minlength=C * C).reshape(C, C)
    n = counts.sum(axis=0)
    if (n == 0).any():
        raise ValueError(f"bbse: class {int(np.flatnonzero(n == 0)[0])} has no labelled sample")
    return counts / n


def prediction_counts(logits, windows: np.ndarray | None = None, n_windows: int = 1) -> np.ndarray:
    """(W, C) counts of argmax predictions in one part (they add up over parts)."""
    z = np.asarray(logits)
    C = z.shape[1]
    t = np.zeros(z.shape[0], dtype=np.int64) if windows is None else np.asarray(windows, dtype=np.int64)
    return np.bincount(t * C + z.argmax(axis=1), minlength=n_windows * C).reshape(n_windows, C).astype(np.float64)


def project_simplex(v: np.ndarray) -> np.ndarray:
    """Euclidean projection of a vector onto the probability simplex (Duchi et al. 2008)."""
    u = np.sort(v)[::-1]
    css = np.cumsum(u) - 1.0
    k = np.arange(1, v.size + 1)
    r = np.flatnonzero(u - css / k > 0)[-1]
    return np.maximum(v - css[r] / (r + 1), 0.0)


def simplex_least_squares(M: np.ndarray, mu: np.ndarray, ridge: float = 0.0, tol: float = 1e-12,
                          max_iter: int = 20000) -> tuple[np.ndarray, int, bool]:
    """argmin over the simplex of ||M π − μ||² + ridge·||π − u||² (u uniform), by FISTA.

    The ridge term (toward uniform) is the regularised form of BBSE (RLLS-like) that keeps a
    badly conditioned M from amplifying noise; ridge = 0 is plain constrained BBSE.
    """
    C = M.shape[1]
    u = np.full(C, 1.0 / C)
    G = M.T @ M + ridge * np.eye(C)
    h = M.T @ mu + ridge * u
    L = float(np.linalg.eigvalsh(G)[-1]) or 1.0
    x = project_simplex(np.linalg.lstsq(M, mu, rcond=None)[0]) if ridge == 0 else u.copy()
    yk, tk = x.copy(), 1.0
    for it in range(1, max_iter + 1):
        x_new = project_simplex(yk - (G @ yk - h) / L)
        t_new = (1 + np.sqrt(1 + 4 * tk * tk)) / 2
        yk = x_new + ((tk - 1) / t_new) * (x_new - x)
        if np.abs(x_new - x).max() <= tol:
            return x_new, it, True
        if (G @ x_new - h) @ (x_new - x) > 0:  # restart momentum when it points uphill
            yk, t_new = x_new.copy(), 1.0
        x, tk = x_new, t_new
    return x, max_iter, False


def estimate_bbse(confusion: np.ndarray, pred_counts: np.ndarray, ridge: float = 0.0) -> TargetEstimate:
    """π_t per window from M = P(ŷ|y) on the fit split and each window's prediction counts."""
    counts = np.atleast_2d(np.asarray(pred_counts, dtype=np.float64))
    rows, its, conv = [], 0, True
    for c in counts:
        if c.sum() == 0:
            rows.append(np.full(confusion.shape[1], 1.0 / confusion.shape[1]))
            continue
        pi, it, ok = simplex_least_squares(confusion, c / c.sum(), ridge)
        rows.append(pi)
        its, conv = max(its, it), conv and ok
    prior = _project_rows(np.vstack(rows))
    return TargetEstimate(prior, "bbse", 1, conv, "" if conv else "simplex least squares did not settle")


def bbse_from_chunks(confusion: np.ndarray, chunks: Iterable, n_windows: int = 1,
                     ridge: float = 0.0) -> TargetEstimate:
    """BBSE over (logits, windows | None) parts: one pass of prediction counts."""
    total = np.zeros((n_windows, confusion.shape[0]))
    for z, t in chunks:
        total += prediction_counts(z, t, n_windows)
    return estimate_bbse(confusion, total, ridge)
