"""Metrics against scikit-learn and a brute-force ECE; Tally merging."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from gla.analyze import stats
from scipy.special import softmax
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    log_loss,
    precision_recall_fscore_support,
)


def random_case(seed, n=600, C=7, absent=()):
    rng = np.random.default_rng(seed)
    z = (rng.normal(size=(n, C)) * rng.uniform(0.5, 4)).astype(np.float32)
    y = rng.integers(0, C, n)
    for k in absent:
        y[y == k] = (k + 1) % C
    z[np.arange(n), y] += 1.0  # better than chance
    return z, y


def brute_ece(z, y, n_bins=15):
    """Guo et al. ECE, written as an explicit loop over bins (lo, hi]."""
    p = softmax(z.astype(np.float64), axis=1)
    conf, pred = p.max(1), p.argmax(1)
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        in_bin = [i for i in range(len(y)) if lo < conf[i] <= hi]
        if in_bin:
            acc = np.mean([pred[i] == y[i] for i in in_bin])
            total += len(in_bin) / len(y) * abs(np.mean(conf[in_bin]) - acc)
    return total


@pytest.mark.parametrize("seed", range(5))
def test_metrics_match_sklearn(seed):
    z, y = random_case(seed, absent=(3,) if seed % 2 else ())
    C = z.shape[1]
    t = stats.tally(z, y, C)
    s = stats.summary_metrics(t)
    pred = z.argmax(1)
    assert s["n"] == len(y)
    assert s["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about predicted-but-absent classes
        ba = balanced_accuracy_score(y, pred)
    assert s["balanced_accuracy"] == pytest.approx(ba, abs=1e-12)
    p = softmax(z.astype(np.float64), axis=1)
    assert s["nll"] == pytest.approx(log_loss(y, p, labels=np.arange(C)), rel=1e-6)
    assert s["ece"] == pytest.approx(brute_ece(z, y), abs=1e-6)
    pc = stats.per_class_metrics(t)
    prec, rec, _, sup = precision_recall_fscore_support(y, pred, labels=np.arange(C), zero_division=np.nan)
    np.testing.assert_array_equal(pc["n"], sup)
    np.testing.assert_allclose(pc["accuracy"], rec, atol=1e-12, equal_nan=True)
    np.testing.assert_allclose(pc["precision"], prec, atol=1e-12, equal_nan=True)
    np.testing.assert_allclose(pc["pred_share"], np.bincount(pred, minlength=C) / len(y), atol=1e-12)
    # standalone functions agree with the tally
    assert stats.accuracy(z, y) == s["accuracy"]
    assert stats.balanced_accuracy(z, y) == s["balanced_accuracy"]
    assert stats.nll(z, y) == s["nll"]
    assert stats.ece(z, y) == s["ece"]


def test_absent_class_is_nan_not_zero():
    z, y = random_case(1, C=5, absent=(2,))
    pc = stats.per_class_metrics(stats.tally(z, y, 5))
    assert pc["n"][2] == 0 and np.isnan(pc["accuracy"][2])


def test_merge_equals_one_shot_and_block_boundaries():
    z, y = random_case(7, n=9000, C=11)  # > one internal block of 4096 rows
    whole = stats.tally(z, y, 11)
    parts = [stats.tally(z[a:b], y[a:b], 11) for a, b in ((0, 1000), (1000, 5000), (5000, 9000))]
    merged = parts[0].merge(parts[1]).merge(parts[2])
    for f in ("support", "correct", "predicted", "bin_count", "bin_correct"):
        np.testing.assert_array_equal(getattr(merged, f), getattr(whole, f))
    np.testing.assert_allclose(merged.bin_conf, whole.bin_conf, rtol=1e-12)
    assert merged.nll_sum == pytest.approx(whole.nll_sum, rel=1e-12)
    assert stats.summary_metrics(merged)["ece"] == pytest.approx(brute_ece(z, y), abs=1e-6)
    assert stats.summary_metrics(whole)["nll"] == pytest.approx(
        log_loss(y, softmax(z.astype(np.float64), axis=1), labels=np.arange(11)), rel=1e-6
    )
    with pytest.raises(ValueError, match="different numbers"):
        whole.merge(stats.Tally.empty(12))


def test_confidence_bins_are_right_closed():
    b = stats.confidence_bins(np.array([1 / 15, 1 / 15 + 1e-9, 1.0, 0.5, 1e-6]))
    assert b.tolist() == [0, 1, 14, 7, 0]


def test_prior_groups_released_convention_by_hand():
    """Released code: C//3 head, C//3 medium, the rest tail (3/3/4 at C = 10)."""
    prior = np.array([0.05, 0.3, 0.1, 0.2, 0.15, 0.12, 0.08])
    # sorted desc: 1 (.3), 3 (.2) | 4 (.15), 5 (.12) | 2 (.1), 6 (.08), 0 (.05)
    assert stats.prior_groups(prior).tolist() == ["tail", "head", "tail", "head", "medium", "medium", "tail"]
    g10 = stats.prior_groups(np.arange(10, 0, -1))  # class 0 has the largest prior
    assert g10.tolist() == ["head"] * 3 + ["medium"] * 3 + ["tail"] * 4
    assert stats.prior_groups([0.6, 0.4]).tolist() == ["tail", "tail"]  # C//3 = 0 at C = 2
    g9 = stats.prior_groups(np.arange(9, 0, -1))
    assert (g9 == "head").sum() == (g9 == "medium").sum() == (g9 == "tail").sum() == 3
    assert [stats.group_sizes(c) for c in (2, 3, 10, 11, 100)] == [
        (0, 0, 2), (1, 1, 1), (3, 3, 4), (3, 3, 5), (33, 33, 34)]


def test_prior_groups_array_split_variant_by_hand():
    """The older convention: leftover classes go to the earlier groups (4/3/3 at C = 10)."""
    prior = np.array([0.05, 0.3, 0.1, 0.2, 0.15, 0.12, 0.08])
    # sorted desc: 1 (.3), 3 (.2), 4 (.15) | 5 (.12), 2 (.1) | 6 (.08), 0 (.05)
    g = stats.prior_groups(prior, "array-split")
    assert g.tolist() == ["tail", "head", "medium", "head", "head", "medium", "tail"]
    g10 = stats.prior_groups(np.arange(10, 0, -1), "array-split")
    assert g10.tolist() == ["head"] * 4 + ["medium"] * 3 + ["tail"] * 3
    assert stats.prior_groups([0.6, 0.4], "array-split").tolist() == ["head", "medium"]
    with pytest.raises(ValueError, match="groups: expected one of released, array-split"):
        stats.prior_groups(prior, "thirds")


def _two_class_tally():
    """Class 0: 90 samples, 81 right (0.9); class 1: 10 samples, 2 right (0.2)."""
    y = np.repeat([0, 1], [90, 10])
    pred = np.concatenate([np.repeat([0, 1], [81, 9]), np.repeat([1, 0], [2, 8])])
    return stats.tally(np.eye(2)[pred], y, 2)


def test_group_accuracy_per_class_mean_vs_pooled_by_hand():
    t = _two_class_tally()
    groups = np.array(["few", "few"])
    assert stats.group_accuracy(t, groups, "per-class")["few"] == pytest.approx((0.9 + 0.2) / 2)  # 0.55
    assert stats.group_accuracy(t, groups, "pooled")["few"] == pytest.approx(83 / 100)
    split = stats.group_accuracy(t, np.array(["many", "few"]), "per-class")
    assert split == {"many": pytest.approx(0.9), "few": pytest.approx(0.2)}
    with pytest.raises(ValueError, match="expected one of per-class, pooled"):
        stats.group_accuracy(t, groups, "mean")


@pytest.mark.parametrize("seed", range(3))
def test_group_accuracy_matches_sklearn(seed):
    """per-class = macro recall over the group's classes present (sklearn); pooled = accuracy."""
    from sklearn.metrics import accuracy_score, recall_score

    rng = np.random.default_rng(seed)
    C, N = 9, 400
    y = rng.choice(C, N, p=rng.dirichlet(np.ones(C)))
    z = rng.normal(size=(N, C)) + 1.5 * np.eye(C)[y]
    pred = z.argmax(1)
    groups = stats.count_groups(rng.integers(0, 200, C))
    t = stats.tally(z, y, C)
    for g in set(groups.tolist()):
        cls = np.flatnonzero(groups == g)
        sel = np.isin(y, cls)
        present = np.intersect1d(cls, y[sel])
        if present.size == 0:
            assert np.isnan(stats.group_accuracy(t, groups, "per-class")[g])
            continue
        expect = recall_score(y[sel], pred[sel], labels=present, average="macro", zero_division=0)
        assert stats.group_accuracy(t, groups, "per-class")[g] == pytest.approx(expect)
        assert stats.group_accuracy(t, groups, "pooled")[g] == pytest.approx(accuracy_score(y[sel], pred[sel]))


def test_count_groups_boundaries():
    g = stats.count_groups(np.array([0, 19, 20, 100, 101, 5000]))
    assert g.tolist() == ["few", "few", "medium", "medium", "many", "many"]


def test_tally_rejects_bad_input():
    with pytest.raises(ValueError, match="out of range"):
        stats.tally(np.zeros((2, 3)), [0, 3], 3)
    with pytest.raises(ValueError, match="logits"):
        stats.tally(np.zeros((2, 3)), [0, 1], 4)


@pytest.mark.parametrize("seed", range(4))
def test_top5_matches_sklearn(seed):
    from sklearn.metrics import top_k_accuracy_score

    rng = np.random.default_rng(seed)
    C = [3, 7, 12, 40][seed]
    z = rng.standard_normal((500, C)).astype(np.float32)
    y = rng.integers(0, C, 500)
    y[:C] = np.arange(C)  # every class present (sklearn needs the labels)
    t = stats.tally(z, y, C)
    expect = top_k_accuracy_score(y, z, k=5, labels=np.arange(C)) if C > 5 else 1.0
    assert stats.summary_metrics(t)["top5"] == pytest.approx(expect)
    half = stats.tally(z[:250], y[:250], C).merge(stats.tally(z[250:], y[250:], C))
    np.testing.assert_array_equal(half.correct5, t.correct5)
