"""Target-prior estimation (EM on BCTS-calibrated probabilities, BBSE) against independent
references (scipy, QuaPy, brute force) and on planted label-shift worlds."""

import numpy as np
import pytest
from gla.analyze import adjust, shift, synthetic

scipy_optimize = pytest.importorskip("scipy.optimize")


def _nll(params, z, y):
    beta, b = params[0], params[1:]
    a = beta * z + b
    m = a.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(a - m).sum(axis=1))
    return float(np.mean(lse - a[np.arange(len(y)), y]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bcts_matches_scipy_minimiser(seed):
    rng = np.random.default_rng(seed)
    C, N = 5, 400
    y = rng.integers(0, C, N)
    y[:C] = np.arange(C)
    z = rng.normal(size=(N, C)) * 2
    z[np.arange(N), y] += 1.5
    z += rng.normal(size=C)  # a class bias for b to remove
    cal = shift.fit_bcts(z, y)
    ref = scipy_optimize.minimize(_nll, np.r_[1.0, np.zeros(C)], args=(z, y), method="BFGS",
                                  options={"gtol": 1e-10})
    assert _nll(np.r_[cal.beta, cal.bias], z, y) <= ref.fun + 1e-6
    assert cal.beta == pytest.approx(ref.x[0], rel=1e-3)
    b_ref = ref.x[1:] - ref.x[1:].mean()
    np.testing.assert_allclose(cal.bias, b_ref, atol=2e-3)


def _quapy_em(tr_prev, posteriors, eps):
    emq = pytest.importorskip("quapy.method.aggregative").EMQ
    qs, _ = emq.EM(tr_prev, posteriors, epsilon=eps)
    return qs


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_em_matches_quapy_emq(seed):
    rng = np.random.default_rng(seed)
    C, N = 6, 3000
    post = rng.dirichlet(np.full(C, 0.7), size=N)
    rho = rng.dirichlet(np.full(C, 3.0))
    ref = _quapy_em(rho, post, 1e-10)
    red = shift.array_reducer(np.log(post), rows=700)  # parts of uneven size
    plain = shift.estimate_em(red, rho, accelerate=False, tol=1e-12, max_passes=5000)
    fast = shift.estimate_em(red, rho, tol=1e-12)
    np.testing.assert_allclose(plain.prior[0], ref, atol=1e-6)
    np.testing.assert_allclose(fast.prior[0], ref, atol=1e-6)
    assert fast.converged and fast.iterations < plain.iterations


def test_em_parts_merge_exactly():
    rng = np.random.default_rng(5)
    c = shift.source_posteriors(rng.normal(size=(1001, 4)))
    lw = rng.normal(size=(1, 4))
    whole = shift.em_part(c, lw)
    parts = shift.em_part(c[:333], lw).merge(shift.em_part(c[333:], lw))
    np.testing.assert_allclose(parts.post, whole.post, rtol=1e-6)
    np.testing.assert_allclose(parts.loglik, whole.loglik, rtol=1e-6)


def test_simplex_least_squares_matches_slsqp_and_inversion():
    rng = np.random.default_rng(0)
    for C in (3, 5, 8):
        M = rng.dirichlet(np.full(C, 0.5), size=C).T + 2 * np.eye(C)
        M /= M.sum(axis=0)
        pi = rng.dirichlet(np.ones(C))
        mu = M @ pi
        got, _, ok = shift.simplex_least_squares(M, mu)
        assert ok
        np.testing.assert_allclose(got, np.linalg.solve(M, mu), atol=1e-7)  # exact inversion
        # an infeasible target: compare with scipy's constrained minimiser
        mu2 = mu + rng.normal(scale=0.1, size=C)
        got2, _, _ = shift.simplex_least_squares(M, mu2)
        cons = ({"type": "eq", "fun": lambda x: x.sum() - 1},)
        ref = scipy_optimize.minimize(lambda x, M=M, mu2=mu2: np.sum((M @ x - mu2) ** 2), np.full(C, 1 / C),
                                      method="SLSQP", bounds=[(0, 1)] * C, constraints=cons,
                                      options={"ftol": 1e-14, "maxiter": 1000})
        assert np.sum((M @ got2 - mu2) ** 2) <= ref.fun + 1e-9
        np.testing.assert_allclose(got2, ref.x, atol=1e-4)


def test_project_simplex_brute_force():
    rng = np.random.default_rng(1)
    for _ in range(20):
        v = rng.normal(size=4) * 2
        got = shift.project_simplex(v)
        cons = ({"type": "eq", "fun": lambda x: x.sum() - 1},)
        ref = scipy_optimize.minimize(lambda x, v=v: np.sum((x - v) ** 2), np.full(4, 0.25),
                                      method="SLSQP", bounds=[(0, 1)] * 4, constraints=cons,
                                      options={"ftol": 1e-14})
        np.testing.assert_allclose(got, ref.x, atol=1e-5)


def _world(seed, C=10, target=None, n_eval=20000):
    sig = {"signal": 1.2, "ft_signal": 1.2}  # a hard world: gla is ~70 % accurate
    world = synthetic.planted_world(C, 400, seed=seed, pi_s=synthetic.zipf_prior(C, 1.0, seed + 50), **sig)
    tp = synthetic.zipf_prior(C, 1.2, seed + 100) if target is None else target
    deploy = synthetic.shifted_world(world, tp, n_eval, seed=seed + 1, **sig)
    truth = synthetic.label_counts(tp, n_eval) / n_eval
    return world, deploy, truth


def _gla(w):
    return adjust.gla(w.zs, w.ft, w.pi_s, w.pi_p)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_shift_em_and_bbse_recover_target(seed):
    world, deploy, truth = _world(seed)
    cal = shift.fit_bcts(_gla(world), world.labels)
    g = _gla(deploy)
    em = shift.estimate_em(shift.array_reducer(cal(g)), cal.source_prior)
    M = shift.confusion_conditional(_gla(world).argmax(axis=1), world.labels, 10)
    bb = shift.bbse_from_chunks(M, [(g[:7000], None), (g[7000:], None)])
    uniform_err = np.abs(np.full(10, 0.1) - truth).sum()
    assert em.converged
    assert np.abs(em.prior[0] - truth).sum() < 0.07 < 0.5 < uniform_err
    assert np.abs(bb.prior[0] - truth).sum() < 0.15
    # the tracked prior helps: gla + log π̂_t beats gla on the shifted set
    acc = lambda z: float((z.argmax(1) == deploy.labels).mean())  # noqa: E731
    assert acc(g + np.log(em.prior[0])) > acc(g) + 0.02


def test_windows_are_causal_and_tracked():
    C = 6
    world = synthetic.planted_world(C, 80, seed=3)
    priors = [synthetic.zipf_prior(C, 1.5, s) for s in (10, 11, 12)]
    parts = [synthetic.shifted_world(world, p, 3000, seed=20 + i) for i, p in enumerate(priors)]
    cal = shift.fit_bcts(world.zs - np.log(world.pi_p), world.labels)
    z = np.vstack([cal(w.zs - np.log(w.pi_p)) for w in parts])
    t = np.repeat(np.arange(3), 3000)
    for memory in (0.0, 500.0):
        est = shift.estimate_em(shift.array_reducer(z, t), cal.source_prior, 3, memory=memory)
        for k in range(3):
            truth = synthetic.label_counts(priors[k], 3000) / 3000
            assert np.abs(est.prior[k] - truth).sum() < 0.12
        # change the last window only: earlier windows' estimates do not move
        z2 = z.copy()
        z2[t == 2] = z2[t == 2][::-1] * 0.5
        est2 = shift.estimate_em(shift.array_reducer(z2, t), cal.source_prior, 3, memory=memory)
        np.testing.assert_allclose(est2.prior[:2], est.prior[:2], atol=1e-6)
        assert np.abs(est2.prior[2] - est.prior[2]).sum() > 1e-3
