"""Prior estimators: planted-prior recovery, a hand-checked GLA solution, and every option."""

from __future__ import annotations

import numpy as np
import pytest
from gla.analyze.priors import (
    _BiasedSoftmax,
    class_conditional_mean,
    downstream_prior,
    estimate_pretrain_prior,
)
from gla.analyze.synthetic import planted_world, zipf_prior
from scipy.special import log_softmax, logsumexp, softmax


def kl(p, q):
    return float(np.sum(p * np.log(p / q)))


def ce(z, y, prior):
    """Brute-force mean CE(z − log prior, y) in float64."""
    return float(-log_softmax(z.astype(np.float64) - np.log(prior), axis=1)[np.arange(len(y)), y].mean())


# The KL of the estimate grows with zero-shot accuracy (a near one-hot softmax leaves the
# bias weakly identified); these signals give oracle accuracies of ~50% (C=100) and ~41%
# (C=1000), typical CLIP zero-shot territory.
@pytest.mark.parametrize("C,signal", [(100, 2.5), (1000, 3.0)])
def test_gla_recovers_planted_prior(C, signal):
    pi = zipf_prior(C, seed=7)
    fit = planted_world(C, 50, pi, seed=1, signal=signal, ft_signal=None)
    est = estimate_pretrain_prior(fit.zs, fit.labels)
    assert est.method == "gla" and est.converged, est.message
    assert est.prior.shape == (C,) and np.isclose(est.prior.sum(), 1.0) and (est.prior > 0).all()
    assert kl(pi, est.prior) < 0.01
    uniform_kl = kl(pi, np.full(C, 1 / C))
    assert uniform_kl > 0.3  # the planted prior is far from what "no adjustment" assumes
    # zs_debiased vs the oracle that subtracts the true log prior, on a balanced eval set
    ev = planted_world(C, 30, pi, seed=2, signal=signal, ft_signal=None)
    acc_oracle = np.mean(ev.oracle.argmax(1) == ev.labels)
    acc_est = np.mean((ev.zs - np.log(est.prior).astype(np.float32)).argmax(1) == ev.labels)
    acc_zs = np.mean(ev.zs.argmax(1) == ev.labels)
    assert abs(acc_est - acc_oracle) <= 0.005
    assert acc_oracle - acc_zs > 0.05  # the bias matters in this world
    # the reported objective is the CE at the returned prior, and it beats the truth (MLE)
    # (brute-force float64 CE only at C = 100, to keep the test light)
    if C <= 100:
        assert est.objective == pytest.approx(ce(fit.zs, fit.labels, est.prior), abs=1e-6)
        assert est.objective <= ce(fit.zs, fit.labels, pi) + 1e-9


def test_gla_hand_example():
    # Two classes, two samples: x1 = (log 3, 0) with y=0, x2 = (0, 0) with y=1.
    # With r = q0/q1, softmax(z − log q)[0] is 3/(3+r) for x1 and 1/(1+r) for x2.
    # Optimality (mean prob of class 0 = n_0/N = 1/2):
    #   3/(3+r) + 1/(1+r) = 1  ⇔  3(1+r) + (3+r) = (3+r)(1+r)  ⇔  r² = 3  ⇔  r = √3,
    # so q0 = √3/(1+√3) ≈ 0.6340. The CE of x1 is log((3+√3)/3) = log(1 + 1/√3) and of x2
    # log((1+√3)/√3) = log(1 + 1/√3): the objective is log(1 + 1/√3) ≈ 0.4577.
    z = np.array([[np.log(3.0), 0.0], [0.0, 0.0]])
    y = np.array([0, 1])
    est = estimate_pretrain_prior(z, y, "gla", tol=1e-14)
    r3 = np.sqrt(3.0)
    assert est.converged
    assert est.prior == pytest.approx([r3 / (1 + r3), 1 / (1 + r3)], abs=1e-6)
    assert est.objective == pytest.approx(np.log(1 + 1 / r3), abs=1e-6)
    # label-free: the same set with its (balanced) label distribution gives the same answer
    pm = estimate_pretrain_prior(z, None, "prior-matching", label_distribution=[0.5, 0.5], tol=1e-14)
    assert pm.prior == pytest.approx(est.prior, abs=1e-6)


def test_gla_invariant_to_row_constants_and_matches_brute_force_optimum():
    rng = np.random.default_rng(3)
    z = rng.normal(size=(400, 6)) * 2
    y = np.repeat(np.arange(6), [100, 80, 60, 60, 50, 50])
    est = estimate_pretrain_prior(z, y)
    est2 = estimate_pretrain_prior(z + rng.normal(size=(400, 1)) * 50, y)
    assert est2.prior == pytest.approx(est.prior, abs=1e-5)
    rho = np.bincount(y) / len(y)
    # optimality condition with the set's label distribution ρ added to the logits:
    # mean softmax(z + log ρ − log q) = ρ
    s = softmax(z + np.log(rho) - np.log(est.prior), axis=1).mean(0)
    assert s == pytest.approx(rho, abs=1e-5)
    # the literal objective (correct_set_prior=False): mean softmax(z − log q) = n/N
    lit = estimate_pretrain_prior(z, y, correct_set_prior=False)
    assert softmax(z - np.log(lit.prior), axis=1).mean(0) == pytest.approx(rho, abs=1e-5)
    assert lit.prior == pytest.approx(est.prior / rho / (est.prior / rho).sum(), abs=1e-5)
    # no random perturbation of the prior lowers the brute-force objective
    base = ce(z, y, lit.prior)
    assert lit.objective == pytest.approx(base, abs=1e-6)
    for _ in range(20):
        q = lit.prior * np.exp(rng.normal(size=6) * 0.05)
        assert ce(z, y, q / q.sum()) >= base - 1e-9


def test_gla_on_an_imbalanced_fit_set_still_recovers_the_planted_prior():
    C = 100
    pi = zipf_prior(C, seed=5)
    counts = np.random.default_rng(1).integers(30, 120, C)
    w = planted_world(C, counts, pi, seed=6, signal=2.5, ft_signal=None)
    est = estimate_pretrain_prior(w.zs, w.labels)
    assert kl(pi, est.prior) < 0.01
    lit = estimate_pretrain_prior(w.zs, w.labels, correct_set_prior=False)
    assert kl(pi, lit.prior) > 2 * kl(pi, est.prior)  # absorbs the set's own imbalance


def test_biased_softmax_matches_brute_force_including_rebase():
    rng = np.random.default_rng(0)
    z = (rng.normal(size=(300, 9)) * 4).astype(np.float32)
    ev = _BiasedSoftmax(z)
    for scale in (0.5, 5.0, 40.0):  # 40 forces a rebase (> 30 nats of drift)
        b = rng.normal(size=9) * scale
        lse, shat = ev(b)
        zz = z.astype(np.float64) - b
        assert lse == pytest.approx(logsumexp(zz, axis=1).mean(), rel=1e-5, abs=1e-5)
        assert shat == pytest.approx(softmax(zz, axis=1).mean(0), abs=1e-5)
    assert ev.rebases >= 1


def test_mm_step_decreases_objective():
    """b ← b + log(ŝ/p) is a majorise-minimise step: the objective never goes up."""
    rng = np.random.default_rng(5)
    z = rng.normal(size=(500, 8)) * 3
    p = rng.dirichlet(np.ones(8) * 2)
    F = lambda b: logsumexp(z - b, axis=1).mean() + p @ b  # noqa: E731
    b = rng.normal(size=8)
    for _ in range(30):
        shat = softmax(z - b, axis=1).mean(0)
        b_new = b + np.log(shat) - np.log(p)
        assert F(b_new) <= F(b) + 1e-12
        b = b_new


def test_reference_agrees_with_gla_where_it_converges():
    # Descent-ascent only settles for a suitable step: here lr=0.02 for 20,000 iterations
    # (at lr=0.05 it keeps oscillating; at the default step it has barely moved).
    pi = np.array([0.6, 0.3, 0.1])
    w = planted_world(3, 100, pi, seed=0, signal=1.5, ft_signal=None)
    gla = estimate_pretrain_prior(w.zs, w.labels, "gla", tol=1e-12)
    ref = estimate_pretrain_prior(w.zs, w.labels, "gla-reference", lr=0.02, max_iter=20000)
    assert ref.converged, ref.message
    assert ref.prior == pytest.approx(gla.prior, abs=1e-4)
    assert abs(ref.objective - gla.objective) < 1e-7
    short = estimate_pretrain_prior(w.zs, w.labels, "gla-reference", lr=0.02)  # 1000 iterations
    assert not short.converged and short.objective > gla.objective


def test_reference_default_step_and_leaving_the_simplex():
    w = planted_world(4, 50, np.array([0.4, 0.3, 0.2, 0.1]), seed=0, ft_signal=None)
    ref = estimate_pretrain_prior(w.zs, w.labels, "gla-reference")
    assert ref.iterations == 1000
    assert "lr=1e-05" in ref.message  # 1e-5 · (N/C)/50 with N/C = 50
    bad = estimate_pretrain_prior(w.zs, w.labels, "gla-reference", lr=50.0)
    assert not bad.converged and "left the simplex" in bad.message
    assert np.isfinite(bad.prior).all() and (bad.prior > 0).all()
    assert bad.prior.sum() == pytest.approx(1.0)
    assert np.isfinite(bad.objective)


def test_eigen_known_answer():
    # class 0 predicts (0.8, 0.2), class 1 predicts (0.4, 0.6): P = [[.8, .4], [.2, .6]],
    # whose stationary vector solves −0.2 v0 + 0.4 v1 = 0 → v = (2/3, 1/3).
    z = np.log(np.array([[0.8, 0.2]] * 5 + [[0.4, 0.6]] * 3))
    y = np.array([0] * 5 + [1] * 3)
    est = estimate_pretrain_prior(z, y, "eigen")
    assert est.converged
    assert est.prior == pytest.approx([2 / 3, 1 / 3], abs=1e-8)


def test_eigen_fixed_point_and_class_conditional_mean():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(200, 5)) * 2
    y = rng.integers(0, 5, 200)
    P = class_conditional_mean(z.astype(np.float32), y, 5)
    s = softmax(z, axis=1)
    brute = np.stack([s[y == k].mean(0) for k in range(5)], axis=1)
    assert P == pytest.approx(brute, abs=1e-6)
    est = estimate_pretrain_prior(z, y, "eigen")
    assert brute @ est.prior == pytest.approx(est.prior, abs=1e-6)


def test_prior_matching_recovers_planted_prior_label_free():
    C = 100
    pi = zipf_prior(C, seed=3)
    counts = np.random.default_rng(0).integers(30, 90, C)
    w = planted_world(C, counts, pi, seed=4, signal=2.5, ft_signal=None)
    est = estimate_pretrain_prior(w.zs, None, "prior-matching", label_distribution=counts / counts.sum())
    assert est.converged and kl(pi, est.prior) < 0.01
    # ignoring the set's label imbalance (uniform default) gives a worse estimate
    naive = estimate_pretrain_prior(w.zs, None, "prior-matching")
    assert kl(pi, naive.prior) > kl(pi, est.prior)


def test_batch_calibration_is_mean_probability():
    rng = np.random.default_rng(2)
    z = rng.normal(size=(50, 4))
    est = estimate_pretrain_prior(z, None, "batch-calibration")
    assert est.prior == pytest.approx(softmax(z, axis=1).mean(0), abs=1e-6)


def test_confidence_temperature_matches_accuracy():
    w = planted_world(20, 30, seed=0, signal=2.0, ft_signal=None)
    z = w.zs * 3.0  # over-confident
    est = estimate_pretrain_prior(z, w.labels, temperature="confidence")
    acc = np.mean(z.argmax(1) == w.labels)
    conf = softmax(z.astype(np.float64) / est.temperature, axis=1).max(1).mean()
    assert conf == pytest.approx(acc, abs=1e-6)
    assert est.temperature > 1
    assert est.objective == pytest.approx(ce(z / est.temperature, w.labels, est.prior), abs=1e-5)


def test_nll_temperature_matches_grid_search():
    w = planted_world(10, 40, seed=1, signal=1.5, ft_signal=None)
    z = (w.zs * 0.4).astype(np.float64)  # under-confident
    est = estimate_pretrain_prior(z, w.labels, "batch-calibration", temperature="nll")
    grid = np.exp(np.linspace(np.log(0.05), np.log(5), 4001))
    nll = [-log_softmax(z / t, axis=1)[np.arange(len(z)), w.labels].mean() for t in grid]
    t_best = grid[int(np.argmin(nll))]
    assert est.temperature == pytest.approx(t_best, rel=2e-3)
    ours = -log_softmax(z / est.temperature, axis=1)[np.arange(len(z)), w.labels].mean()
    assert ours <= min(nll) + 1e-9


def test_fixed_temperature_divides_logits():
    w = planted_world(5, 40, seed=2, ft_signal=None)
    a = estimate_pretrain_prior(w.zs, w.labels, temperature=2.0)
    b = estimate_pretrain_prior(w.zs / 2.0, w.labels)
    assert a.temperature == 2.0 and a.prior == pytest.approx(b.prior, abs=1e-6)


def test_float16_and_integer_inputs():
    w = planted_world(10, 30, seed=0, ft_signal=None)
    a = estimate_pretrain_prior(w.zs.astype(np.float16), w.labels.astype(np.int32))
    b = estimate_pretrain_prior(w.zs, w.labels)
    assert a.prior == pytest.approx(b.prior, abs=2e-3)


@pytest.mark.parametrize(
    "logits,labels,kwargs,match",
    [
        (np.zeros(5), [0] * 5, {}, "2-D"),
        (np.zeros((4, 1)), [0] * 4, {}, "C ≥ 2"),
        (np.array([[0.0, np.nan], [0, 0]]), [0, 1], {}, "NaN or Inf .*row 0"),
        (np.array([[0.0, 1], [0, -np.inf]]), [0, 1], {}, "NaN or Inf .*row 1"),
        (np.zeros((3, 3)), [0, 1, 1], {}, "class 2 has no sample"),
        (np.zeros((3, 3)), [0, 1, 3], {}, "out of range"),
        (np.zeros((3, 3)), [0, 1], {}, "3 entries"),
        (np.zeros((3, 3)), None, {}, "needs labels"),
        (np.zeros((3, 3)), [0, 1, 2], {"method": "magic"}, "unknown estimator"),
        (np.zeros((3, 3)), [0, 1, 2], {"temperature": "hot"}, "temperature"),
        (np.zeros((3, 3)), [0, 1, 2], {"temperature": -1.0}, "temperature"),
        (np.zeros((3, 3)), None, {"method": "prior-matching", "temperature": "nll"}, "needs labels"),
        (np.zeros((3, 3)), None, {"method": "prior-matching", "label_distribution": [1, 0, 0]}, "positive"),
    ],
)
def test_bad_input_raises_clear_value_error(logits, labels, kwargs, match):
    with pytest.raises(ValueError, match=match):
        estimate_pretrain_prior(logits, labels, **kwargs)


def test_downstream_prior():
    assert downstream_prior(None, 4) == pytest.approx([0.25] * 4)
    assert downstream_prior(np.array([3, 1]), 2) == pytest.approx([0.75, 0.25])
    assert downstream_prior(np.array([3, 0]), 2, smoothing=1.0) == pytest.approx([0.8, 0.2])
    with pytest.raises(ValueError, match="class 1 has training count 0"):
        downstream_prior(np.array([3, 0]), 2)
    with pytest.raises(ValueError, match="one entry per class"):
        downstream_prior(np.array([3, 1, 1]), 2)
    with pytest.raises(ValueError, match="non-negative"):
        downstream_prior(np.array([3, -1]), 2)


def test_gla_converges_when_a_class_needs_a_huge_correction():
    """A class pushed 60 nats down (never predicted) forces the cached exp to be rebased."""
    w = planted_world(20, 40, seed=8, signal=2.0, ft_signal=None)
    z = w.zs.copy()
    z[:, 3] -= 60.0
    est = estimate_pretrain_prior(z, w.labels)
    assert est.converged, est.message
    ref = estimate_pretrain_prior(w.zs, w.labels)
    # the same world up to a known bias on class 3: the estimates differ by exactly e^-60
    ratio = est.prior / ref.prior
    assert ratio[3] / np.delete(ratio, 3).mean() == pytest.approx(np.exp(-60.0), rel=1e-3)


@pytest.mark.parametrize("method", ["gla", "prior-matching"])
def test_a_class_beyond_float32_exp_range_does_not_break_the_solver(method):
    """200 nats down: every exp of that class underflows in float32 (ŝ_k = 0 at the start)."""
    w = planted_world(20, 40, seed=8, signal=2.0, ft_signal=None)
    z = w.zs.copy()
    z[:, 3] -= 200.0
    est = estimate_pretrain_prior(z, w.labels, method)
    assert est.converged, est.message
    ref = estimate_pretrain_prior(w.zs, w.labels, method)
    ratio = est.prior / ref.prior
    assert np.log(ratio[3] / np.delete(ratio, 3).mean()) == pytest.approx(-200.0, abs=1e-2)


def test_gla_converges_with_near_duplicate_classes():
    rng = np.random.default_rng(9)
    w = planted_world(30, 40, seed=9, ft_signal=None)
    z = w.zs.copy()
    z[:, 1] = z[:, 0] + rng.normal(size=len(z)).astype(np.float32) * 0.01
    est = estimate_pretrain_prior(z, w.labels, correct_set_prior=False)
    assert est.converged, est.message
    s = softmax(z.astype(np.float64) - np.log(est.prior), axis=1).mean(0)
    assert s == pytest.approx(np.bincount(w.labels) / len(w.labels), abs=2e-4)


def test_eigen_on_an_accurate_model_uses_squaring_and_still_fixes_the_point():
    w = planted_world(40, 30, seed=10, signal=5.0, ft_signal=None)  # P close to identity
    est = estimate_pretrain_prior(w.zs, w.labels, "eigen")
    assert est.converged and est.iterations > 1000  # many applications of P, few products
    P = class_conditional_mean(w.zs, w.labels, 40)
    assert P @ est.prior == pytest.approx(est.prior, abs=1e-7)


@pytest.mark.parametrize("seed", range(6))
def test_gla_objective_matches_an_independent_float64_optimiser(seed):
    from scipy.optimize import minimize

    rng = np.random.default_rng(100 + seed)
    C = int(rng.integers(2, 30))
    n = rng.integers(5, 60, C)
    y = np.repeat(np.arange(C), n)
    z = rng.normal(size=(len(y), C)) * rng.uniform(0.5, 6) + rng.normal(size=C) * 2
    z[np.arange(len(y)), y] += rng.uniform(0, 3)
    p = n / n.sum()

    def F(b):
        return logsumexp(z - b, axis=1).mean() + p @ b, p - softmax(z - b, axis=1).mean(0)

    best = minimize(F, np.zeros(C), jac=True, method="L-BFGS-B", options={"gtol": 1e-12, "ftol": 1e-15, "maxiter": 10000})
    brute = best.fun - z[np.arange(len(y)), y].mean()
    est = estimate_pretrain_prior(z, y, correct_set_prior=False)
    assert est.converged, est.message
    assert est.objective == pytest.approx(brute, abs=1e-6)
    assert est.objective <= brute + 1e-6


def test_one_temperature_parser():
    from gla.analyze.priors import parse_temperature

    assert parse_temperature(None) is None and parse_temperature(" None ") is None
    assert parse_temperature("") is None
    assert parse_temperature("Confidence") == "confidence" and parse_temperature("nll") == "nll"
    assert parse_temperature("2.5") == 2.5 and parse_temperature(3) == 3.0
    for bad in ("0", "-1", "inf", "nan", "hot", True, [1]):
        with pytest.raises(ValueError, match="temperature"):
            parse_temperature(bad)
