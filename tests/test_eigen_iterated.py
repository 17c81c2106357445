"""The iterated margin-filtered eigen estimator (label-free π_p) on planted worlds, against
the labelled ``gla`` and ``eigen`` estimators and the label-free batch calibration."""

import numpy as np
import pytest
from gla.analyze import priors, synthetic


def _err(method, w, labels=True, **kw):
    e = priors.estimate_pretrain_prior(w.zs, w.labels if labels else None, method, **kw)
    return np.abs(e.prior - w.pi_p).sum(), e


@pytest.mark.parametrize("C,signal,seed", [(10, 2.0, 0), (20, 2.5, 1), (30, 3.0, 2)])
def test_label_free_iterated_eigen_tracks_planted_prior(C, signal, seed):
    w = synthetic.planted_world(C, 100, seed=seed, signal=signal, ft_signal=None)
    err_it, est = _err("eigen-iterated", w, labels=False)
    err_gla, _ = _err("gla", w)
    err_eig, _ = _err("eigen", w)
    err_bc, _ = _err("batch-calibration", w, labels=False)
    assert est.converged and est.iterations > 1
    # without labels it is as close to the truth as the labelled estimators
    assert err_it <= 1.2 * min(err_gla, err_eig) + 0.02
    assert err_it < 0.5 * err_bc
    rank = lambda v: np.argsort(np.argsort(v))  # noqa: E731
    assert np.corrcoef(rank(est.prior), rank(w.pi_p))[0, 1] > 0.9


def test_margin_filter_keeps_the_fixed_point_and_uses_set_distribution():
    C = 12
    counts = synthetic.label_counts(synthetic.zipf_prior(C, 0.8, 4), 3000)
    w = synthetic.planted_world(C, counts, seed=5, signal=2.0, ft_signal=None)
    p = counts / counts.sum()
    errs = [_err("eigen-iterated", w, labels=False, label_distribution=p, keep=k)[0]
            for k in (1.0, 0.6, 0.3)]
    assert max(errs) < 0.15
    # ignoring the set's own label distribution gives a worse estimate
    assert _err("eigen-iterated", w, labels=False)[0] > max(errs) + 0.05


def test_iterated_eigen_refuses_bad_keep():
    w = synthetic.planted_world(4, 10, seed=0, ft_signal=None)
    with pytest.raises(ValueError, match="keep"):
        priors.estimate_pretrain_prior(w.zs, None, "eigen-iterated", keep=0.0)


def test_settle_finds_a_slow_fixed_point_in_few_steps():
    """SQUAREM on a slowly mixing Markov chain (second eigenvalue 0.97): the stationary
    distribution (numpy's eigenvector) in far fewer steps than plain iteration takes."""
    rng = np.random.default_rng(0)
    C = 8
    Q = rng.dirichlet(np.ones(C), size=C).T  # columns sum to 1, mixes fast
    P = 0.97 * np.eye(C) + 0.03 * Q  # slow: every eigenvalue but 1 is >= 0.97 in modulus-ish
    step = lambda x: P @ x  # noqa: E731
    w, V = np.linalg.eig(P)
    want = np.real(V[:, np.argmax(np.real(w))])
    want /= want.sum()
    x, steps, ok, delta = priors.settle(step, np.full(C, 1 / C), 1e-10, 2000)
    assert ok and delta <= 1e-10
    np.testing.assert_allclose(x, want, atol=1e-8)
    plain, n = np.full(C, 1 / C), 0
    while np.abs(step(plain) - plain).sum() > 1e-10:
        plain, n = step(plain), n + 1
    assert steps < n / 5
    x, steps, ok, _ = priors.settle(step, np.full(C, 1 / C), 1e-10, 7)
    assert not ok and steps == 7
