"""Summary intervals: Wilson against statsmodels, the class-mean interval against exact
binomial expectations, coverage by simulation on planted worlds, and the tables' columns."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from coverage_bounds import coverage_ok
from gla.analyze import cell, intervals, schema, stats
from gla.analyze import significance as sig
from gla.analyze.synthetic import planted_world, zipf_prior

scipy_stats = pytest.importorskip("scipy.stats")
sm_prop = pytest.importorskip("statsmodels.stats.proportion")


def tally_of(correct, support) -> stats.Tally:
    t = stats.Tally.empty(len(support))
    t.support[:] = support
    t.correct[:] = correct
    return t


def test_wilson_matches_statsmodels():
    rng = np.random.default_rng(0)
    n = rng.integers(1, rng.choice([5, 100, 100_000], size=500))
    x = rng.binomial(n, rng.random(500) ** rng.uniform(0.2, 5, 500))
    x[:20], x[20:40] = 0, n[20:40]  # the boundaries
    for level in (0.95, 0.9):
        ref_lo, ref_hi = sm_prop.proportion_confint(x, n, alpha=1 - level, method="wilson")
        lo, hi = sig.wilson_interval(x, n, level)
        np.testing.assert_allclose(lo, ref_lo, atol=1e-12)
        np.testing.assert_allclose(hi, ref_hi, atol=1e-12)
    lo, hi = sig.wilson_interval([0, 3], [0, 5])
    assert np.isnan(lo[0]) and np.isnan(hi[0]) and 0 < lo[1] < 0.6 < hi[1] < 1
    with pytest.raises(ValueError):
        sig.wilson_interval(6, 5)


def test_pooled_is_wilson_with_the_plugin_se():
    rng = np.random.default_rng(1)
    for _ in range(50):
        support = rng.integers(0, 50, size=12)
        correct = rng.binomial(support, rng.random(12))
        se, lo, hi = intervals.pooled(correct, support)
        x, n = correct.sum(), support.sum()
        ref = sm_prop.proportion_confint(x, n, method="wilson")
        assert (lo, hi) == pytest.approx(ref, abs=1e-12)
        assert se == pytest.approx(np.sqrt(x / n * (1 - x / n) / n))
    assert all(np.isnan(v) for v in intervals.pooled([0, 0], [0, 0]))


def test_class_mean_variance_is_unbiased_exactly():
    """E[se²] over the exact binomial distribution equals Var(mean of p̂_k) = Σ p(1 − p)/n / K².

    K identical classes that all show x successes give se² = v(x)/K, one class's variance
    term; its expectation under Bin(n, p) is taken exactly with scipy's pmf. K is large so
    the 2/K pseudo-counts are negligible (they move v by O(1/K): 0.2 % here)."""
    K = 20_000
    for n in (2, 3, 5, 10, 40):
        for p in (0.05, 0.3, 0.5, 0.8, 0.97):
            xs = np.arange(n + 1)
            v = np.array([K * sig.class_mean_interval(np.full(K, x), np.full(K, n))[0] ** 2 for x in xs])
            expect = float((scipy_stats.binom.pmf(xs, n, p) * v).sum())
            assert expect == pytest.approx(p * (1 - p) / n, rel=0.005), (n, p)
    # One-sample classes: the Bernoulli maximum, whatever the outcome.
    se, lo, hi = sig.class_mean_interval(np.array([1, 0, 1, 1]), np.ones(4, dtype=int))
    assert se == pytest.approx(np.sqrt(4 * 0.25) / 4)


def test_class_mean_interval_centre_and_edges():
    rng = np.random.default_rng(2)
    for _ in range(50):
        K = int(rng.integers(1, 40))
        n = rng.integers(1, 60, size=K)
        x = rng.binomial(n, rng.random(K))
        se, lo, hi = sig.class_mean_interval(x, n)
        centre = np.mean((x + 2 / K) / (n + 4 / K))
        z = scipy_stats.norm.ppf(0.975)
        assert lo == pytest.approx(max(0.0, centre - z * se)) and hi == pytest.approx(min(1.0, centre + z * se))
        assert 0 <= lo <= np.mean(x / n) + 1e-12 or lo == 0
    se, lo, hi = sig.class_mean_interval(np.array([30, 30]), np.array([30, 30]))
    assert se > 0 and lo < 1 and hi == 1.0  # perfect classes still get a width
    assert all(np.isnan(v) for v in sig.class_mean_interval(np.array([], int), np.array([], int)))
    assert all(np.isnan(v) for v in intervals.class_mean([0, 0], [0, 0]))


def test_accuracy_interval_covers_in_planted_worlds():
    """Labels from a random long-tailed prior, each sample right with its class's accuracy;
    the true accuracy is Σ π_k p_k. 4,000 worlds of random size."""
    rng = np.random.default_rng(3)
    hits = []
    for _ in range(4000):
        C = int(rng.integers(2, 30))
        pi = zipf_prior(C, seed=int(rng.integers(1 << 30)))
        p = rng.uniform(0.3, 1.0, C)
        y = rng.choice(C, size=int(rng.integers(20, 400)), p=pi)
        t = tally_of(np.bincount(y[rng.random(len(y)) < p[y]], minlength=C), np.bincount(y, minlength=C))
        _, lo, hi = intervals.metric_interval(t, intervals.POOLED)
        hits.append(lo <= float(pi @ p) <= hi)
    assert coverage_ok(np.array(hits))


@pytest.mark.parametrize("classes,per_class,p_range", [
    (10, (20, 80), (0.3, 0.95)),   # few classes, many samples each
    (200, (2, 10), (0.5, 1.0)),    # many classes, a handful of samples each (iNaturalist-like)
    (5, (30, 200), (0.9, 1.0)),    # accuracies near 1
])  # fmt: skip
def test_balanced_accuracy_interval_covers_in_planted_worlds(classes, per_class, p_range):
    """Per-class supports fixed by the eval set, each class's accuracy p_k planted; the
    true balanced accuracy is the mean of p_k. Also the plug-in se is close to the truth."""
    rng = np.random.default_rng(classes)
    hits, ratio = [], []
    for _ in range(3000):
        n = rng.integers(*per_class, size=classes)
        p = rng.uniform(*p_range, classes)
        t = tally_of(rng.binomial(n, p), n)
        se, lo, hi = intervals.metric_interval(t, intervals.CLASS_MEAN)
        hits.append(lo <= p.mean() <= hi)
        ratio.append(se**2 / (np.sum(p * (1 - p) / n) / classes**2))
    assert coverage_ok(np.array(hits), hi=0.975)
    assert 0.9 < np.mean(ratio) < 1.15  # the variance estimate is about unbiased


SHOT = ("acc_many", "acc_medium_shot", "acc_few")


def cell_tables(options=None):
    C = 12
    pi = zipf_prior(C, seed=0)
    fit = planted_world(C, 20, pi, seed=1, signal=2.0)
    ev = planted_world(C, 150, pi, seed=2, signal=2.0)
    counts = np.array([500, 300, 150, 101, 100, 60, 20, 19, 10, 5, 2, 1])
    fitted = cell.fit_priors(fit.zs, fit.labels, C, counts)
    tallies = cell.evaluate([(ev.zs, ev.ft, ev.labels)], fitted)
    tables = cell.build_tables("m", "d", "test", [f"c{i}" for i in range(C)], fitted, tallies, counts,
                               options=options)
    schema.check(tables)
    return tables, tallies


@pytest.mark.parametrize("shot_accuracy", ["per-class", "pooled"])
def test_summary_carries_an_interval_for_every_ci_metric(shot_accuracy):
    """Each CI metric: the point estimate is the one the interval's kind describes (so a
    change of a group's definition in analyze.stats cannot silently mismatch), the
    interval contains it, and the columns are the interval functions' output."""
    tables, tallies = cell_tables(cell.AnalysisOptions(shot_accuracy=shot_accuracy))
    summary, pc = tables["summary"], tables["per_class"]
    kinds = {**intervals.KINDS, "acc_head": intervals.POOLED, "acc_medium": intervals.POOLED,
             "acc_tail": intervals.POOLED, **dict.fromkeys(SHOT, intervals.kind_of_average(shot_accuracy))}
    assert kinds["acc_few"] == (intervals.CLASS_MEAN if shot_accuracy == "per-class" else intervals.POOLED)
    for row in summary.iter_rows(named=True):
        t = tallies[row["method"]]
        sub = pc.filter(pl.col("method") == row["method"])
        for metric in schema.CI_METRICS:
            if metric in schema.GROUP_COLUMNS:
                col = "count_group" if metric in SHOT else "group"
                mask = (sub[col] == schema.GROUP_COLUMNS[metric]).to_numpy()
            else:
                mask = np.ones(len(t.support), dtype=bool)
            kind = kinds[metric]
            assert row[metric] == pytest.approx(intervals.estimate(t.correct[mask], t.support[mask], kind)), metric
            se, lo, hi = intervals.metric_interval(t, kind, mask)
            assert (row[f"{metric}_se"], row[f"{metric}_ci_low"], row[f"{metric}_ci_high"]) == pytest.approx((se, lo, hi))
            assert lo <= row[metric] <= hi and 0 < se < 0.5, metric
    with pytest.raises(ValueError, match="group average"):
        intervals.kind_of_average("median")


def test_intervals_are_null_where_undefined():
    """No training counts: no count groups; C = 2: no head or medium group (C // 3 = 0);
    a class without samples."""
    fit = planted_world(2, 30, np.array([0.8, 0.2]), seed=3, signal=1.5)
    ev = planted_world(2, [40, 0], np.array([0.8, 0.2]), seed=4, signal=1.5)
    fitted = cell.fit_priors(fit.zs, fit.labels, 2)
    tables = cell.build_tables("m", "d", "test", ["a", "b"], fitted, cell.evaluate([(ev.zs, ev.ft, ev.labels)], fitted))
    s = tables["summary"]
    for metric in ("acc_head", "acc_medium", "acc_many", "acc_medium_shot", "acc_few"):
        for suffix in schema.CI_SUFFIXES:
            assert s[f"{metric}{suffix}"].null_count() == s.height, (metric, suffix)
    assert s["accuracy_ci_low"].null_count() == 0 and s["balanced_accuracy_se"].null_count() == 0
    # balanced accuracy over the one class with samples = that class's interval
    row = s.filter(pl.col("method") == "gla").row(0, named=True)
    t = tables["per_class"].filter(pl.col("method") == "gla").sort("class_index")
    x = round(t["accuracy"][0] * 40)
    assert (row["balanced_accuracy_ci_low"], row["balanced_accuracy_ci_high"]) == pytest.approx(
        sig.class_mean_interval(np.array([x]), np.array([40]))[1:])
