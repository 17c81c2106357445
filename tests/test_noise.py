"""Label issues: conformal p-values, Benjamini–Hochberg, confident learning, against
independent references (brute force, scipy, cleanlab) and on planted label noise."""

import numpy as np
import pytest
from gla.analyze import adjust, audits, noise, synthetic


def test_conformal_pvalues_brute_force():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=57)
    s = np.r_[rng.normal(size=200), ref[:5]]  # ties with the reference included
    got = noise.conformal_pvalues(s, ref)
    want = [(1 + np.sum(ref <= v)) / (ref.size + 1) for v in s]
    np.testing.assert_allclose(got, want)


@pytest.mark.parametrize("seed", range(5))
def test_bh_threshold_from_level_counts_matches_scipy(seed):
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(seed)
    n_clean = 40
    p = rng.integers(1, n_clean + 2, 500) / (n_clean + 1)
    p[: 30 + seed * 10] = 1 / (n_clean + 1)  # some strong signals
    for alpha in (0.05, 0.1, 0.3):
        want = stats.false_discovery_control(p, method="bh") <= alpha
        cut = noise.bh_threshold(noise.pvalue_level_counts(p, n_clean), alpha)
        np.testing.assert_array_equal(p <= cut, want)
        np.testing.assert_array_equal(noise.bh_reject(p, alpha), want)


def _probs(seed, N=600, C=5):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, C, N)
    logits = rng.normal(size=(N, C)) * 1.5
    logits[np.arange(N), y] += 2.0
    flip = rng.random(N) < 0.15
    y_noisy = np.where(flip, rng.integers(0, C, N), y)
    return noise.softmax(logits), logits, y_noisy


@pytest.mark.parametrize("seed", range(4))
def test_confident_learning_matches_cleanlab(seed):
    filt = pytest.importorskip("cleanlab.filter")
    probs, logits, y = _probs(seed)
    want = filt.find_label_issues(y, probs, filter_by="confident_learning")
    audit = noise.audit_labels(lambda: [(logits[:250], y[:250]), (logits[250:], y[250:])],
                               clean_scores=np.zeros(10), num_classes=5)
    got = np.zeros(len(y), dtype=bool)
    got[audit.rows["index"][audit.rows["cl_issue"]]] = True
    np.testing.assert_array_equal(got, want)
    cnt = pytest.importorskip("cleanlab.count")
    cj = cnt.compute_confident_joint(y, probs, calibrate=False)
    np.testing.assert_array_equal(audit.confident_joint, cj)


def _noisy_world(seed, C=10, rate=0.1):
    world = synthetic.planted_world(C, 300, seed=seed, pi_s=synthetic.zipf_prior(C, 1.0, seed + 9))
    clean = synthetic.planted_world(C, 30, world.pi_p, seed=seed + 1000, pi_s=world.pi_s)
    y, flipped = synthetic.flip_labels(world.labels, rate, C, seed)
    g = lambda w: adjust.gla(w.zs, w.ft, w.pi_s, w.pi_p)  # noqa: E731
    return g(world), y, flipped, noise.label_scores(g(clean), clean.labels)


def test_planted_noise_precision_recall_and_fdr_over_seeds():
    alpha = 0.1
    fdps, recalls = [], []
    for seed in range(12):
        z, y, flipped, clean = _noisy_world(seed)
        a = noise.audit_labels(lambda z=z, y=y: [(z, y)], clean, 10, alpha)
        flagged = np.zeros(len(y), dtype=bool)
        flagged[a.rows["index"][a.rows["flagged"]]] = True
        fdps.append((flagged & ~flipped).sum() / max(flagged.sum(), 1))
        recalls.append((flagged & flipped).sum() / flipped.sum())
        # suggested labels of true flags are mostly the original label
    assert np.mean(fdps) <= alpha + 0.03
    assert np.mean(recalls) > 0.5
    # BH on these p-values is exactly BH on the full p-value array (the kept rows are all flags)
    z, y, flipped, clean = _noisy_world(0)
    a = noise.audit_labels(lambda: [(z, y)], clean, 10, alpha)
    pv = noise.conformal_pvalues(noise.label_scores(z, y), clean)
    np.testing.assert_array_equal(np.sort(a.rows["index"][a.rows["flagged"]]),
                                  np.flatnonzero(noise.bh_reject(pv, alpha)))


def test_top_confusions_orders_off_diagonal():
    J = np.array([[5, 2, 0], [7, 1, 3], [0, 0, 9]])
    assert noise.top_confusions(J, 2) == [(1, 0, 7), (1, 2, 3)]


def test_crossfit_folds_keep_every_class_in_every_complement():
    y = np.r_[np.repeat(np.arange(4), [7, 5, 2, 1])]
    fold = audits.crossfit_folds(y, folds=5, seed=3)
    assert (fold[y == 3] == -1).all()  # a class of one cannot be left out
    for k in range(5):
        rest = y[(fold != k)]
        assert set(rest) == {0, 1, 2, 3}
    for c, n in ((0, 7), (1, 5), (2, 2)):  # each class spread over the folds as evenly as it can
        counts = np.bincount(fold[y == c], minlength=5)
        assert counts.max() - counts.min() <= 1 and counts.sum() == n
    np.testing.assert_array_equal(fold, audits.crossfit_folds(y, folds=5, seed=3))


def test_cross_fitted_clean_scores_are_the_held_out_scores():
    """Each clean row is scored by priors fitted without its fold (brute force), and
    those held-out scores are lower than the in-sample ones they replace (the optimism
    that would push the flags' FDR above α)."""
    from gla.analyze.cell import AnalysisOptions, fit_priors

    C = 6
    w = synthetic.planted_world(C, 12, seed=4, signal=1.2, ft_signal=1.2)
    opts = AnalysisOptions(estimators=("gla",), temperature="confidence")

    def refit(zs, ft, y):
        return fit_priors(zs, y, C, options=opts, ft_fit=ft)

    full = refit(w.zs, w.ft, w.labels)
    fit = (w.zs, w.ft, w.labels)
    got = audits.clean_scores(fit, full, refit, folds=4)
    fold = audits.crossfit_folds(w.labels, 4)
    want = np.empty(len(w.labels))
    for k in range(4):
        out = fold == k
        fk = refit(w.zs[~out], w.ft[~out], w.labels[~out])
        want[out] = noise.label_scores(audits.debiased(w.zs[out], w.ft[out], fk), w.labels[out])
    np.testing.assert_allclose(got, want)
    in_sample = audits.clean_scores(fit, full)
    assert got.mean() < in_sample.mean()
