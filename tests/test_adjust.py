"""GLA and baselines: formulas against explicit numpy, method sets, and Bayes optimality."""

from __future__ import annotations

import numpy as np
import pytest
from gla.analyze import adjust
from gla.analyze.synthetic import planted_world, zipf_prior


@pytest.fixture
def arrays():
    rng = np.random.default_rng(0)
    C = 6
    zs = rng.normal(size=(40, C)).astype(np.float32)
    ft = rng.normal(size=(40, C)).astype(np.float32)
    pi_s, pi_p, pi_t = (rng.dirichlet(np.ones(C)) for _ in range(3))
    return zs, ft, pi_s, pi_p, pi_t


def test_formulas(arrays):
    zs, ft, pi_s, pi_p, pi_t = arrays
    zs0, ft0 = zs.copy(), ft.copy()
    out = adjust.apply_methods(zs, ft, pi_s=pi_s, pi_p=pi_p)
    assert tuple(out) == adjust.METHODS
    expect = {
        "zs": zs,
        "zs_debiased": zs - np.log(pi_p),
        "ft": ft,
        "ft_la": ft - np.log(pi_s),
        "ensemble": zs + ft,
        "gla": zs + ft - np.log(pi_s) - np.log(pi_p),
    }
    for m, e in expect.items():
        np.testing.assert_allclose(out[m], e, rtol=1e-5, atol=1e-5, err_msg=m)
        assert out[m].dtype == np.float32
    # with a target prior, + log π_t on the de-biased methods only
    tgt = adjust.apply_methods(zs, ft, pi_s=pi_s, pi_p=pi_p, target_prior=pi_t)
    for m in adjust.METHODS:
        add = np.log(pi_t) if m in ("zs_debiased", "ft_la", "gla") else 0.0
        np.testing.assert_allclose(tgt[m], expect[m] + add, rtol=1e-5, atol=1e-5, err_msg=m)
    np.testing.assert_array_equal(zs, zs0)  # inputs untouched
    np.testing.assert_array_equal(ft, ft0)


def test_unnormalised_priors_are_normalised(arrays):
    zs, ft, pi_s, pi_p, _ = arrays
    a = adjust.gla(zs, ft, pi_s * 7, pi_p * 0.1)
    np.testing.assert_allclose(a, adjust.gla(zs, ft, pi_s, pi_p), rtol=1e-6)


def test_method_sets_without_ft(arrays):
    zs, _, pi_s, pi_p, _ = arrays
    out = adjust.apply_methods(zs, None, pi_s=pi_s, pi_p=pi_p)
    assert tuple(out) == adjust.ZS_METHODS
    with pytest.raises(ValueError, match="needs fine-tuned"):
        adjust.apply_methods(zs, None, pi_s=pi_s, pi_p=pi_p, methods=["gla"])
    with pytest.raises(ValueError, match="unknown method"):
        adjust.apply_methods(zs, None, pi_s=pi_s, pi_p=pi_p, methods=["magic"])


def test_bad_shapes(arrays):
    zs, ft, pi_s, pi_p, _ = arrays
    with pytest.raises(ValueError, match="differ in shape"):
        adjust.ensemble(zs, ft[:, :3])
    with pytest.raises(ValueError, match="pi_p"):
        adjust.zs_debiased(zs, pi_p[:3])
    with pytest.raises(ValueError, match="pi_s"):
        adjust.ft_la(ft, -pi_s)


def test_gla_is_bayes_optimal_in_a_planted_world():
    """With the true priors, gla combines two independent views optimally for a balanced target."""
    C = 50
    pi_p, pi_s = zipf_prior(C, seed=1), zipf_prior(C, 0.7, seed=2)
    w = planted_world(C, 200, pi_p, seed=3, signal=2.0, ft_signal=2.0, pi_s=pi_s)
    out = adjust.apply_methods(w.zs, w.ft, pi_s=w.pi_s, pi_p=w.pi_p)
    acc = {m: float(np.mean(v.argmax(1) == w.labels)) for m, v in out.items()}
    assert acc["gla"] == max(acc.values())
    assert acc["zs_debiased"] > acc["zs"] + 0.02
    assert acc["ft_la"] > acc["ft"] + 0.02
    assert acc["gla"] > acc["ensemble"] + 0.02
