"""Label priors: π_s from downstream training counts, π_p estimated from zero-shot logits.

The GLA estimate of π_p minimises ``F(b) = mean_i CE(z_i − b, y_i)`` over ``b = log q``.
F is convex and invariant to adding a constant to b; its gradient is ``p − ŝ(b)`` with
``p = n/N`` (labels enter only through class counts) and ``ŝ(b) = mean_i softmax(z_i − b)``.
The same optimality condition ``ŝ(b) = p`` with a *given* label distribution p is the
label-free "prior matching" estimate. See DESIGN.md for the method.

Every estimator returns a :class:`PriorEstimate` on the simplex with diagnostics; bad input
raises ``ValueError`` with a one-line message (the CLI turns it into exit code 2).
"""

from __future__ import annotations

import inspect
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np

_REBASE = 30.0  # nats of drift from the cached shift before exp(z − b) is recomputed
_BLOCK_ROWS = 256  # (256, C) float32 blocks stay in cache between the two products


@dataclass(frozen=True)
class PriorEstimate:
    prior: np.ndarray  # (C,) float64, > 0, sums to 1
    iterations: int
    objective: float  # mean CE of (logits/T − log prior) at the solution (see each estimator)
    converged: bool
    method: str
    temperature: float = 1.0
    message: str = ""


# ----------------------------------------------------------------------------- validation


def check_logits(logits, what: str = "logits") -> np.ndarray:
    """(N, C) finite float32 view/copy of ``logits``; ValueError naming the problem otherwise."""
    x = np.asarray(logits)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] < 2:
        raise ValueError(f"{what} must be a 2-D (N, C) array with N ≥ 1 and C ≥ 2, got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"{what} must be numeric, got dtype {x.dtype}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    # max/min propagate NaN, so two reductions detect any NaN/±Inf without an (N, C) mask.
    if not (np.isfinite(x.max()) and np.isfinite(x.min())):
        bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
        raise ValueError(f"{what} contain NaN or Inf (first bad row {bad[0]})")
    return x


def check_labels(labels, n: int, num_classes: int, what: str = "labels") -> np.ndarray:
    """(N,) int64 labels in [0, C); ValueError otherwise."""
    y = np.asarray(labels)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"{what} must be 1-D with {n} entries (one per logit row), got shape {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        if not np.issubdtype(y.dtype, np.floating) or not np.all(np.equal(np.mod(y, 1), 0)):
            raise ValueError(f"{what} must be integers, got dtype {y.dtype}")
    y = y.astype(np.int64, copy=False)
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"{what} out of range [0, {num_classes}): min {y.min()}, max {y.max()}")
    return y


def _check_distribution(p, num_classes: int, what: str) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    if p.shape != (num_classes,) or not np.isfinite(p).all() or (p <= 0).any():
        raise ValueError(f"{what} must be a positive finite ({num_classes},) vector")
    return p / p.sum()


def _label_fractions(y: np.ndarray, num_classes: int) -> np.ndarray:
    n = np.bincount(y, minlength=num_classes)
    empty = np.flatnonzero(n == 0)
    if empty.size:
        raise ValueError(
            f"class {empty[0]} has no sample in the fit set ({empty.size} empty classes); "
            "the prior is not identifiable"
        )
    return n / n.sum()


def downstream_prior(counts, num_classes: int, smoothing: float = 0.0) -> np.ndarray:
    """π_s = (counts + smoothing) / total; uniform when counts is None (balanced or unknown)."""
    C = int(num_classes)
    if counts is None:
        return np.full(C, 1.0 / C)
    c = np.asarray(counts, dtype=np.float64)
    if c.shape != (C,):
        raise ValueError(f"training counts must have one entry per class ({C}), got shape {c.shape}")
    if not np.isfinite(c).all() or (c < 0).any():
        raise ValueError("training counts must be finite and non-negative")
    if not np.isfinite(smoothing) or smoothing < 0:
        raise ValueError(f"smoothing must be ≥ 0, got {smoothing}")
    c = c + smoothing
    if (c == 0).any():
        raise ValueError(
            f"class {int(np.flatnonzero(c == 0)[0])} has training count 0: log π_s is -inf; "
            "use smoothing > 0"
        )
    return c / c.sum()


# ------------------------------------------------------------------ softmax(z − b), cheaply


class _BiasedSoftmax:
    """``mean_i logsumexp(z_i − b)`` and ``mean_i softmax(z_i − b)`` at two matvecs per b.

    ``E = exp(z − b0 − m)`` (m = row max) is computed once; for any b,
    ``softmax(z_i − b) ∝ E_i ∘ exp(−(b − b0))``, so an evaluation is ``s = E @ w`` and
    ``E.T @ (1/s)`` — memory-bound BLAS, no exp over (N, C). When b drifts more than
    ``_REBASE`` nats from b0, E is recomputed at b (one exp pass) so float32 stays exact
    enough: every row keeps a term ≥ e^-30 and no weight exceeds 1.
    """

    def __init__(self, z: np.ndarray):
        self.z = z
        self.n = z.shape[0]
        self.E = np.empty_like(z)
        self.rebases = -1
        self._rebase(np.zeros(z.shape[1]))

    def _rebase(self, b: np.ndarray) -> None:
        E, z, bf = self.E, self.z, b.astype(np.float32)
        m = np.empty(self.n, dtype=np.float32)
        for a in range(0, self.n, _BLOCK_ROWS):  # block by block: one read of z, one write of E
            Eb = E[a : a + _BLOCK_ROWS]
            np.subtract(z[a : a + _BLOCK_ROWS], bf, out=Eb)
            mb = Eb.max(axis=1)
            m[a : a + _BLOCK_ROWS] = mb
            Eb -= mb[:, None]
            np.exp(Eb, out=Eb)
        self.b0 = b.copy()
        self.m_mean = float(m.mean(dtype=np.float64))
        self.rebases += 1

    def __call__(self, b: np.ndarray) -> tuple[float, np.ndarray]:
        """Returns (mean_i logsumexp(z_i − b), mean_i softmax(z_i − b) as (C,) float64)."""
        d = b - self.b0
        if d.max() - d.min() > _REBASE:
            self._rebase(b)
            d = np.zeros_like(b)
        c = d.min()
        w = np.exp(c - d).astype(np.float32)  # ≤ 1
        E = self.E
        acc = np.zeros(E.shape[1])
        log_sum = 0.0
        # Row blocks small enough that the second product re-reads E from cache.
        for a in range(0, self.n, _BLOCK_ROWS):
            Eb = E[a : a + _BLOCK_ROWS]
            s = Eb @ w
            if not (s.min() > 0):  # a row lost all its mass to underflow: recompute at b
                self._rebase(b)
                return self(b)
            acc += Eb.T @ np.reciprocal(s)
            log_sum += float(np.log(s).sum(dtype=np.float64))
        shat = acc * w / self.n
        shat /= shat.sum()
        return self.m_mean - c + log_sum / self.n, shat


def _center(b: np.ndarray) -> np.ndarray:
    """Normalise b so that exp(b) sums to 1 (b = log q); F is invariant to the shift."""
    mx = b.max()
    return b - (mx + np.log(np.exp(b - mx).sum()))


# ------------------------------------------------------------------------- the GLA solver


def _lbfgs_direction(g, h0, hist):
    """Two-loop recursion with initial inverse Hessian diag(h0)."""
    q = g.copy()
    alphas = []
    for s, y, rho in reversed(hist):
        a = rho * (s @ q)
        alphas.append(a)
        q -= a * y
    r = h0 * q
    for (s, y, rho), a in zip(hist, reversed(alphas), strict=True):
        r += s * (a - rho * (y @ r))
    return -r


_TINY = 1e-300  # floor of ŝ in the MM step and the gap (ŝ_k can underflow to exactly 0)


def _gap(g: np.ndarray, shat: np.ndarray) -> float:
    """Estimated distance to the optimum, ½ Σ g²/ŝ (the Newton decrement, diagonal curvature)."""
    return 0.5 * float(g @ (g / np.maximum(shat, _TINY)))


def _solve_matching(ev: _BiasedSoftmax, p: np.ndarray, tol: float, max_iter: int, memory: int = 12,
                    b_init: np.ndarray | None = None):
    """Minimise F(b) = mean lse(z − b) + p·b, i.e. solve mean softmax(z − b) = p, from
    ``b_init`` (default 0: a warm start helps a caller that solves a sequence of nearby
    problems).

    Start: majorise-minimise (MM) steps ``b ← b + log(ŝ/p)`` (the Saerens-style fixed
    point; an exact MM for F, so monotone) while far from the solution, then L-BFGS whose
    initial inverse Hessian is diag(1/ŝ) — the MM curvature — with Armijo backtracking.
    Stops when the estimated gap ``½ Σ g²/ŝ`` (Newton decrement with the diagonal
    curvature) is ≤ tol. Returns (b, iterations, F, converged, message).
    """
    logp = np.log(p)
    b = _center(np.zeros_like(p) if b_init is None else np.asarray(b_init, dtype=np.float64))
    lse, shat = ev(b)
    f = lse + p @ b
    g = p - shat
    hist: deque = deque(maxlen=memory)
    gap = _gap(g, shat)
    it = 0
    message = ""
    while gap > tol and it < max_iter:
        it += 1
        # A class whose every softmax weight underflowed in float32 has ŝ_k = 0: a finite
        # (large) MM step, which the line search then shortens, instead of log 0 = −inf.
        mm = np.log(np.maximum(shat, _TINY)) - logp
        if np.abs(mm).max() > 1.0 or not hist:
            d = mm
        else:
            d = _lbfgs_direction(g, 1.0 / shat, hist)
            if g @ d >= 0:
                d = mm
        slope = float(g @ d)
        t = 1.0
        for _ in range(40):
            b_new = _center(b + t * d)
            lse_new, shat_new = ev(b_new)
            f_new = lse_new + p @ b_new
            if f_new <= f + 1e-4 * t * slope:
                break
            t *= 0.5
        else:
            message = (
                f"line search stalled at iteration {it} with estimated gap {gap:.2e} > tol "
                f"{tol:.0e} (float32 precision floor?)"
            )
            break
        g_new = p - shat_new
        sv, yv = b_new - b, g_new - g
        sy = float(sv @ yv)
        if sy > 1e-12 * float(sv @ sv):
            hist.append((sv, yv, 1.0 / sy))
        b, f, g, shat = b_new, f_new, g_new, shat_new
        gap = _gap(g, shat)
    converged = gap <= tol
    if not converged and not message:
        message = f"stopped at max_iter={max_iter} with estimated gap {gap:.2e} > tol {tol:.0e}"
    return b, it, f, converged, message


# -------------------------------------------------------------------------- estimators
# Each takes a _Problem (z float32 (N, C) already divided by the temperature, y labels or
# None, p the target label distribution (n/N or given), tol, max_iter) plus options and
# returns (prior, iterations, converged, message).


@dataclass
class _Problem:
    z: np.ndarray
    y: np.ndarray | None
    p: np.ndarray
    tol: float
    max_iter: int | None
    shift: np.ndarray  # log ρ of the fit set when correcting for it (see correct_set_prior), else 0

    @cached_property
    def ev(self) -> _BiasedSoftmax:
        return _BiasedSoftmax(self.z)


def _est_gla(pb: _Problem):
    max_iter = 500 if pb.max_iter is None else int(pb.max_iter)
    b, it, _, conv, msg = _solve_matching(pb.ev, pb.p, pb.tol, max_iter)
    return np.exp(_center(b + pb.shift)), it, conv, msg


def _est_reference(pb: _Problem, lr=None):
    """The released solver: gradient descent-ascent on L(q, λ) = CE(z − log q, y) + λ(Σq − 1).

    Probability space, full batch, uniform start, ``lr = 1e-5·(N/C)/50`` by default, a fixed
    number of iterations (1000). dCE/dq_k = (p_k − ŝ_k)/q_k. Leaving the simplex (q_k ≤ 0
    or non-finite) ends the run with converged=False; the last feasible iterate is returned.
    """
    N, C = pb.z.shape
    p, ev = pb.p, pb.ev
    iters = 1000 if pb.max_iter is None else int(pb.max_iter)
    lr = 1e-5 * (N / C) / 50 if lr is None else float(lr)
    q = np.full(C, 1.0 / C)
    lam = 0.0
    for it in range(1, iters + 1):
        _, shat = ev(np.log(q) - pb.shift)
        grad_q = (p - shat) / q + lam
        grad_lam = q.sum() - 1.0
        q_new = q - lr * grad_q
        lam = lam + lr * grad_lam
        if not (np.isfinite(q_new).all() and (q_new > 0).all()):
            return (
                q / q.sum(),
                it - 1,
                False,
                f"left the simplex at iteration {it} (lr={lr:.3g}); returned the last feasible "
                "iterate, renormalised",
            )
        q = q_new
    _, shat = ev(np.log(q) - pb.shift)
    gap = _gap(p - shat, shat)
    conv = gap <= pb.tol
    msg = "" if conv else f"ran {iters} iterations (lr={lr:.3g}); estimated gap {gap:.2e} > tol {pb.tol:.0e}"
    return q / q.sum(), iters, conv, msg


def _softmax(z: np.ndarray) -> np.ndarray:
    s = z - z.max(axis=1, keepdims=True)
    np.exp(s, out=s)
    s /= s.sum(axis=1, keepdims=True)
    return s


def class_conditional_mean(z: np.ndarray, y: np.ndarray, num_classes: int) -> np.ndarray:
    """P[j, k] = mean of softmax(z_i)_j over samples with y_i = k (columns sum to 1)."""
    order = np.argsort(y, kind="stable")
    s = _softmax(z)[order]
    counts = np.bincount(y, minlength=num_classes)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    sums = np.add.reduceat(s, starts, axis=0)  # (C, C): row k = sum over class k
    return (sums / counts[:, None]).T


def _est_eigen(pb: _Problem):
    """Stationary vector of the column-stochastic P (π = Pπ) by power iteration from uniform.

    P is close to the identity for an accurate model (slow mixing), so every 50 steps
    without convergence P is squared: iterating P^(2^k) has the same fixed point and
    doubles the speed each time. ``iterations`` counts applications of P.
    """
    P = class_conditional_mean(pb.z, pb.y, pb.z.shape[1])
    return _power_iteration(P, pb.tol, 10**6 if pb.max_iter is None else int(pb.max_iter))


def _power_iteration(P: np.ndarray, tol: float, budget: int):
    """Stationary vector of column-stochastic P, squaring P every 50 unconverged steps."""
    C = P.shape[0]
    v = np.full(C, 1.0 / C)
    step_tol = tol * 1e-2
    applied, power, delta = 0, 1, np.inf
    while applied < budget:
        for _ in range(50):
            v_new = P @ v
            v_new /= v_new.sum()
            delta = np.abs(v_new - v).sum()
            v = v_new
            applied += power
            if delta <= step_tol:
                return v, applied, True, ""
        if power < 2**30:
            P = P @ P
            power *= 2
    return v, applied, False, f"power iteration did not settle in {budget} steps (L1 step {delta:.1e})"


def _est_batch_calibration(pb: _Problem):
    """Mean predicted probability over the set (normalised): one pass, no iterations."""
    m = pb.ev(np.zeros(pb.z.shape[1]))[1]
    return m / m.sum(), 1, True, ""


def _est_prior_matching(pb: _Problem):
    """Label-free: b with mean softmax(z − b) = p for a set whose label distribution is p.

    The fixed point of Saerens et al. (2002) EM read the other way round: EM re-estimates
    an unknown target prior given a known training prior; here the set's label
    distribution is known (default uniform) and the model's own bias is the unknown. The
    solve is the GLA one; only the target p differs (set by ``estimate_pretrain_prior``).
    """
    return _est_gla(pb)


def _margin_mask(r: np.ndarray, keep: float) -> np.ndarray:
    """Rows whose top-1 minus top-2 probability is in the largest ``keep`` fraction."""
    if keep >= 1:
        return np.ones(r.shape[0], dtype=bool)
    top2 = np.partition(r, r.shape[1] - 2, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    return margin >= np.quantile(margin, 1.0 - keep)


def _est_eigen_iterated(pb: _Problem, keep=0.5):
    """Label-free eigen: pseudo-label confident rows, rebuild P, power iteration, repeat.

    Round r pseudo-labels every row softly with its posterior under the current estimate
    (r_i = softmax(z_i − log π_r + log p), p the set's label distribution) and keeps the
    ``keep`` fraction of rows with the largest top-1/top-2 margin (the set A). On A it
    rebuilds P[j, k] = Σ r_ik s_ij / Σ r_ik (s = softmax(z)), the class-conditional mean
    probability given A, whose stationary vector (power iteration, as ``eigen``) is the
    label distribution of A under π_p: π_k·P(A | k). Dividing by the acceptance rate
    P(A | k) = Σ_A r_ik / Σ_all r_ik gives π_{r+1}. With the true π_p and a calibrated
    model every step is unbiased, so π_p is a fixed point whatever ``keep`` is; the filter
    only decides which rows' pseudo-labels are trusted. (Hard argmax pseudo-labels bias P
    badly: L1 error ≈ 1 on planted worlds where this form matches the labelled estimators.)
    Rounds stop when the L1 change of π is ≤ tol·100, or after max_iter rounds (200).
    """
    C = pb.z.shape[1]
    if not 0 < float(keep) <= 1:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    s = _softmax(pb.z)

    def one_round(pi: np.ndarray) -> np.ndarray:
        resp = _softmax(pb.z - np.log(pi).astype(np.float32) + pb.shift.astype(np.float32))
        inside = _margin_mask(resp, float(keep))
        ra = resp[inside]
        mass = ra.sum(axis=0, dtype=np.float64)
        P = (ra.T @ s[inside]).astype(np.float64).T / np.maximum(mass, 1e-300)[None, :]
        P[:, mass <= 0] = 1.0 / C  # a class no kept row belongs to: an uninformative column
        v, _, _, _ = _power_iteration(P / P.sum(axis=0, keepdims=True), pb.tol, 10**6)
        accept = mass / np.maximum(resp.sum(axis=0, dtype=np.float64), 1e-300)
        new = v / np.maximum(accept, 1e-12)
        return new / new.sum()

    rounds = 200 if pb.max_iter is None else int(pb.max_iter)
    pi, r, settled, delta = settle(one_round, np.full(C, 1.0 / C), pb.tol * 1e2, rounds)
    return pi, r, settled, "" if settled else f"rounds did not settle in {rounds} (L1 change {delta:.1e})"


def settle(step: Callable[[np.ndarray], np.ndarray], x: np.ndarray, tol: float, max_steps: int):
    """A fixed point of ``step`` on the probability simplex, SQUAREM-accelerated (Varadhan
    & Roland 2008): two steps give an extrapolation along their differences, kept when it
    stays positive, and one more step from it stabilises. A round map that converges
    linearly but slowly (rate ≈ 0.95: hundreds of rounds) settles in tens of steps.
    Returns (x, steps, settled, last L1 change): settled when one plain step moves x by
    at most ``tol`` (L1)."""
    steps, delta = 0, np.inf
    while steps < max_steps:
        x1 = step(x)
        steps += 1
        delta = float(np.abs(x1 - x).sum())
        if delta <= tol:
            return x1, steps, True, delta
        if steps == max_steps:
            return x1, steps, False, delta
        x2 = step(x1)
        steps += 1
        r, v = x1 - x, x2 - 2 * x1 + x
        nv = np.linalg.norm(v)
        a = min(-np.linalg.norm(r) / nv, -1.0) if nv > 0 else -1.0
        y = x - 2 * a * r + a * a * v
        if (y <= 0).any() or steps == max_steps:
            x = x2
            continue
        x = step(y / y.sum())
        steps += 1
    return x, steps, False, delta


ESTIMATORS: dict[str, Callable] = {
    "gla": _est_gla,
    "gla-reference": _est_reference,
    "eigen": _est_eigen,
    "prior-matching": _est_prior_matching,
    "batch-calibration": _est_batch_calibration,
    "eigen-iterated": _est_eigen_iterated,
}
# Estimators that work from unlabelled logits (and a given label distribution).
LABEL_FREE = frozenset({"prior-matching", "batch-calibration", "eigen-iterated"})


def unused_fit_distribution(option: str) -> str:
    """The refusal of a fit label distribution no selected estimator would read."""
    return (f"{option}: only the label-free estimators ({', '.join(sorted(LABEL_FREE))}) use it; "
            "none is selected")


# Estimators without an iterative solve: tol and max_iter mean nothing to them.
NO_SOLVER = frozenset({"batch-calibration"})


def estimator_options(method: str) -> tuple[str, ...]:
    """The estimator-specific keyword options ``method`` accepts (e.g. ``lr``)."""
    params = list(inspect.signature(ESTIMATORS[method]).parameters)
    return tuple(params[1:])  # after the problem


def check_options(method: str, options: dict, *, tol=None, max_iter=None) -> None:
    """Refuse options the estimator would not use (rather than ignore them)."""
    accepted = estimator_options(method)
    for k in options:
        if k not in accepted:
            ok = ", ".join(accepted) or "none"
            raise ValueError(f"estimator {method!r} has no option {k!r} (its options: {ok})")
    if method in NO_SOLVER:
        for name, v in (("tol", tol), ("max_iter", max_iter)):
            if v is not None:
                raise ValueError(f"estimator {method!r} has no option {name!r} (it does not iterate)")


# ------------------------------------------------------------------------- temperature


def _max_softmax_mean(delta: np.ndarray, beta: float) -> float:
    """mean_i max softmax(β z_i) given delta = z − rowmax (≤ 0)."""
    e = np.exp(delta * np.float32(beta))
    return float(np.mean(1.0 / e.sum(axis=1, dtype=np.float64)))


def confidence_temperature(z: np.ndarray, y: np.ndarray, tol: float = 1e-10) -> float:
    """T with mean max-softmax(z/T) = accuracy (the released few-shot recipe).

    Mean confidence falls monotonically from 1 (T→0) to 1/C (T→∞); solved by bisection on
    log T with an Illinois (regula-falsi) update. Accuracies of 1 or ≤ 1/C are clipped to
    the search interval [1e-4, 1e4].
    """
    acc = float(np.mean(z.argmax(axis=1) == y))
    delta = z - z.max(axis=1, keepdims=True)
    lo, hi = np.log(1e-4), np.log(1e4)  # in log T
    f = lambda lt: _max_softmax_mean(delta, np.exp(-lt)) - acc  # noqa: E731  decreasing
    flo, fhi = f(lo), f(hi)
    if flo <= 0:
        return float(np.exp(lo))
    if fhi >= 0:
        return float(np.exp(hi))
    return float(np.exp(illinois_root(f, lo, flo, hi, fhi, tol=tol, max_iter=200)))


def illinois_root(f, lo: float, flo: float, hi: float, fhi: float, *, tol: float, max_iter: int) -> float:
    """A root of a monotone ``f`` whose values ``flo = f(lo)`` and ``fhi = f(hi)`` have
    opposite signs: regula falsi with the Illinois update (an end kept twice in a row has
    its value halved). Returns the last point tried: where ``|f| <= tol``, where the
    bracket is narrower than 1e-12, or after ``max_iter`` steps."""
    side = 0
    for _ in range(max_iter):
        mid = (lo * fhi - hi * flo) / (fhi - flo)
        fm = f(mid)
        if abs(fm) <= tol or hi - lo < 1e-12:
            break
        if (fm > 0) if flo > 0 else (fm < 0):  # mid is on lo's side of the root
            lo, flo = mid, fm
            if side == 1:
                fhi /= 2
            side = 1
        else:
            hi, fhi = mid, fm
            if side == -1:
                flo /= 2
            side = -1
    return mid


def _nll_derivatives(z, zy, beta):
    """f(β) = mean NLL of softmax(βz); returns f, f', f'' (f'' = mean variance of z under p)."""
    a = z * np.float32(beta)
    m = a.max(axis=1, keepdims=True)
    e = np.exp(a - m)
    se = e.sum(axis=1, dtype=np.float64)
    ez = np.einsum("ij,ij->i", e, z, dtype=np.float64) / se
    ez2 = np.einsum("ij,ij->i", e, z * z, dtype=np.float64) / se
    f = float(np.mean(m[:, 0] + np.log(se) - beta * zy))
    return f, float(np.mean(ez - zy)), float(np.mean(ez2 - ez * ez))


def nll_temperature(z: np.ndarray, y: np.ndarray, tol: float = 1e-10) -> float:
    """T minimising mean NLL of softmax(z/T): convex in β = 1/T, safeguarded Newton."""
    zy = z[np.arange(z.shape[0]), y].astype(np.float64)
    lo, hi = 1e-4, 1e4  # bracket in β
    beta = 1.0
    for _ in range(100):
        f, d1, d2 = _nll_derivatives(z, zy, beta)
        if d1 > 0:
            hi = min(hi, beta)
        else:
            lo = max(lo, beta)
        if abs(d1) <= tol * max(1.0, abs(f)) or hi - lo <= 1e-12 * hi:
            break
        nb = beta - d1 / d2 if d2 > 0 else np.nan
        beta = nb if lo < nb < hi else (np.sqrt(lo * hi) if hi / lo > 4 else 0.5 * (lo + hi))
    return float(1.0 / beta)


TEMPERATURE_MODES = ("confidence", "nll")


def parse_temperature(value) -> str | float | None:
    """The one reading of a temperature setting (CLI, config, Python).

    None, "", "none" → None (no scaling); "confidence" / "nll" (any case) → that mode; a
    number or numeric string > 0 → float. Anything else: ValueError, one line.
    """
    if value is None:
        return None
    if isinstance(value, str):
        t = value.strip().lower()
        if t in ("", "none"):
            return None
        if t in TEMPERATURE_MODES:
            return t
        try:
            v = float(t)
        except ValueError:
            raise ValueError(f"temperature: expected none, confidence, nll or a number > 0, got {value!r}") from None
    elif isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise ValueError(f"temperature: expected none, confidence, nll or a number > 0, got {value!r}")
    else:
        v = float(value)
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"temperature: must be a finite number > 0, got {value!r}")
    return v


def resolve_temperature(z, y, temperature) -> float:
    """The temperature value for logits ``z`` (labels ``y`` for the fitted modes)."""
    t = parse_temperature(temperature)
    if t is None:
        return 1.0
    if isinstance(t, float):
        return t
    if y is None:
        raise ValueError(f"temperature {t!r} needs labels")
    return confidence_temperature(z, y) if t == "confidence" else nll_temperature(z, y)


# --------------------------------------------------------------------------- public API


def objective(z, y, prior, p=None, ev: _BiasedSoftmax | None = None, shift=0.0) -> float:
    """Mean CE(z + shift − log prior, y); label-free (y None): mean lse(z − b) + p·b with
    b = log prior − shift, the matching form (equal to the CE up to a constant)."""
    b = np.log(prior) - shift
    lse, _ = (ev or _BiasedSoftmax(z))(b)
    if y is None:
        return float(lse + p @ b)
    zy = z[np.arange(z.shape[0]), y].astype(np.float64)
    return float(lse - zy.mean() + b[y].mean())


def estimate_pretrain_prior(
    logits,
    labels=None,
    method: str = "gla",
    *,
    temperature=None,
    label_distribution=None,
    tol: float | None = None,
    max_iter: int | None = None,
    correct_set_prior: bool = True,
    **options,
) -> PriorEstimate:
    """Estimate the label prior π_p the zero-shot model behaves as if trained under.

    ``labels`` are needed by gla, gla-reference, eigen and the confidence/nll temperatures
    (prior-matching and batch-calibration use them only for the reported CE objective).
    ``label_distribution`` is the fit set's label distribution: for prior-matching it is
    the matching target (default uniform); for gla it overrides the class fractions n/N.
    ``temperature``: None, "confidence", "nll" or a float; logits are divided by it before
    fitting. ``tol`` (default 1e-8) and ``max_iter`` steer the iterative estimators.
    Extra ``options`` go to the estimator (e.g. ``lr`` for gla-reference); an option the
    estimator does not take is refused (ValueError), never ignored.

    ``correct_set_prior`` (default True): the fit set's own label distribution ρ (n/N, or
    ``label_distribution``) is added to the logits, i.e. the objective is
    CE(z + log ρ − log q, y). Without it, the minimiser on an imbalanced set is π_p/ρ, not
    π_p. For a balanced set (the reference's setting) log ρ is a constant and this is
    exactly the paper's objective. Not applied to batch-calibration (a raw mean).
    """
    if method not in ESTIMATORS:
        raise ValueError(f"unknown estimator {method!r}; choose from {', '.join(ESTIMATORS)}")
    x = check_logits(logits)
    N, C = x.shape
    y = None if labels is None else check_labels(labels, N, C)
    if y is None and method not in LABEL_FREE:
        raise ValueError(f"estimator {method!r} needs labels")
    check_options(method, options, tol=tol, max_iter=max_iter)
    tol = 1e-8 if tol is None else tol
    if not (tol > 0):
        raise ValueError(f"tol must be > 0, got {tol}")
    if label_distribution is not None:
        p = _check_distribution(label_distribution, C, "label_distribution")
    elif y is not None and method not in LABEL_FREE:
        p = _label_fractions(y, C)
    else:
        p = np.full(C, 1.0 / C)
    if method == "eigen":
        _label_fractions(y, C)  # every class needs samples for P's columns
    T = resolve_temperature(x, y, temperature)
    z = x if T == 1.0 else x * np.float32(1.0 / T)
    shift = np.log(p) if correct_set_prior and method != "batch-calibration" else np.zeros(C)
    pb = _Problem(z, y, p, float(tol), max_iter, shift - shift.mean())
    prior, it, conv, msg = ESTIMATORS[method](pb, **options)
    prior = np.asarray(prior, dtype=np.float64)
    prior = np.maximum(prior, np.finfo(np.float64).tiny)
    prior = prior / prior.sum()
    obj = objective(z, y, prior, p, pb.ev, pb.shift)
    return PriorEstimate(prior, int(it), obj, bool(conv), method, float(T), msg)
