"""Registry-driven contract tests: every estimator and every method, the same checks.

Add an estimator to ``priors.ESTIMATORS`` or a method to ``adjust.METHODS`` and it is
tested here without a new test being written (open_clip's registry-test style).
"""

from __future__ import annotations

import numpy as np
import pytest
from gla.analyze import adjust, priors
from gla.analyze.synthetic import planted_world

C = 6


@pytest.fixture(scope="module")
def world():
    return planted_world(C, 400, seed=11, signal=2.5)


def _fit(world, name, **kw):
    labels = None if name in priors.LABEL_FREE else world.labels
    return priors.estimate_pretrain_prior(world.zs, labels, name, **kw)


@pytest.mark.parametrize("name", list(priors.ESTIMATORS))
def test_estimator_returns_a_prior_on_the_simplex(world, name):
    est = _fit(world, name)
    assert est.prior.shape == (C,) and est.prior.dtype == np.float64
    assert (est.prior > 0).all() and est.prior.sum() == pytest.approx(1.0)
    assert est.method == name and est.iterations >= 1 and np.isfinite(est.objective)
    again = _fit(world, name)
    np.testing.assert_array_equal(est.prior, again.prior)  # deterministic


@pytest.mark.parametrize("name", list(priors.ESTIMATORS))
def test_estimator_is_permutation_equivariant(world, name):
    perm = np.random.default_rng(0).permutation(C)
    inv = np.argsort(perm)
    est = _fit(world, name)
    labels = None if name in priors.LABEL_FREE else inv[world.labels]
    permuted = priors.estimate_pretrain_prior(world.zs[:, perm], labels, name)
    np.testing.assert_allclose(permuted.prior, est.prior[perm], rtol=2e-3, atol=1e-6)


@pytest.mark.parametrize("name", list(priors.ESTIMATORS))
def test_estimator_recovers_the_planted_prior_in_rank(world, name):
    est = _fit(world, name)
    # Spearman-style check: the planted order of π_p is recovered (a 6-class Zipf prior).
    assert np.corrcoef(np.argsort(np.argsort(est.prior)), np.argsort(np.argsort(world.pi_p)))[0, 1] > 0.8


@pytest.mark.parametrize("name", list(priors.ESTIMATORS))
def test_estimator_refuses_unknown_options(world, name):
    with pytest.raises(ValueError, match="has no option 'max_iters'"):
        _fit(world, name, max_iters=1)
    for opt in priors.estimator_options(name):  # its own options are accepted
        assert opt in ("lr", "keep")


def test_solver_options_are_refused_where_there_is_no_solver(world):
    for name in priors.NO_SOLVER:
        with pytest.raises(ValueError, match="max_iter"):
            _fit(world, name, max_iter=1)
    for name in set(priors.ESTIMATORS) - priors.NO_SOLVER:
        assert _fit(world, name, max_iter=1).iterations <= 1 or name == "eigen"


@pytest.mark.parametrize("method", adjust.METHODS)
def test_method_contract(world, method):
    z64, f64 = world.zs.astype(np.float64), world.ft.astype(np.float64)
    zs_before, ft_before = world.zs.copy(), world.ft.copy()
    out = adjust.apply_methods(world.zs, world.ft, pi_s=world.pi_s, pi_p=world.pi_p)[method]
    assert out.shape == world.zs.shape and out.dtype == np.float32
    np.testing.assert_array_equal(world.zs, zs_before)  # inputs untouched
    np.testing.assert_array_equal(world.ft, ft_before)
    out64 = adjust.apply_methods(z64, f64, pi_s=world.pi_s, pi_p=world.pi_p)[method]
    assert out64.dtype == np.float64
    # the formula, spelled out independently of the module
    lp, ls = np.log(world.pi_p), np.log(world.pi_s)
    expect = {"zs": z64, "zs_debiased": z64 - lp, "ft": f64, "ft_la": f64 - ls,
              "ensemble": z64 + f64, "gla": z64 + f64 - lp - ls}[method]
    np.testing.assert_allclose(out64, expect, rtol=1e-12, atol=1e-12)
    # a constant shift of every class does not change the predictions
    shifted = adjust.apply_methods(world.zs + 3, world.ft + 3, pi_s=world.pi_s, pi_p=world.pi_p)[method]
    np.testing.assert_array_equal(shifted.argmax(1), out.argmax(1))


@pytest.mark.parametrize("method", adjust.METHODS)
def test_method_needs_ft_unless_zero_shot(world, method):
    if method in adjust.ZS_METHODS:
        assert method in adjust.apply_methods(world.zs, None, pi_s=world.pi_s, pi_p=world.pi_p)
    else:
        with pytest.raises(ValueError, match="needs fine-tuned"):
            adjust.methods_for(False, [method])
