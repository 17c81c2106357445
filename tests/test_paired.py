"""Paired comparisons: pair counts against brute force and over chunks, comparisons and
per-class flags against statsmodels, coverage and FDR on planted worlds."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import polars as pl
import pytest
from coverage_bounds import coverage_ok
from gla.analyze import adjust, cell, paired, schema, stats
from gla.analyze.synthetic import planted_world, zipf_prior

sm_tables = pytest.importorskip("statsmodels.stats.contingency_tables")
sm_multi = pytest.importorskip("statsmodels.stats.multitest")

C = 12
NAMES = [f"c{i}" for i in range(C)]


@pytest.fixture(scope="module")
def world():
    pi = zipf_prior(C, seed=0)
    fit = planted_world(C, 20, pi, seed=1, signal=2.0)
    ev = planted_world(C, 150, pi, seed=2, signal=2.0)
    counts = np.array([500, 300, 150, 101, 100, 60, 20, 19, 10, 5, 2, 1])
    fitted = cell.fit_priors(fit.zs, fit.labels, C, counts)
    wise = {"wiseft@0.5": 0.5 * (ev.zs + ev.ft)}
    return ev, fitted, counts, wise


def chunks(ev, size, extra):
    for a in range(0, len(ev.labels), size):
        yield ev.zs[a : a + size], ev.ft[a : a + size], ev.labels[a : a + size], \
            {n: x[a : a + size] for n, x in extra.items()}


def hits_of(ev, fitted, extra) -> dict[str, np.ndarray]:
    """Brute force: every method's predictions from the whole arrays at once."""
    logits = adjust.apply_methods(ev.zs, ev.ft, pi_s=fitted.pi_s, pi_p=fitted.pi_p)
    return {m: z.argmax(1) == ev.labels for m, z in {**logits, **extra}.items()}


def from_hits(y: np.ndarray, hits: dict[str, np.ndarray], num_classes: int) -> paired.MethodTallies:
    """MethodTallies of given per-sample hits (what evaluate counts from logits)."""
    tallies = {}
    for m, h in hits.items():
        t = stats.Tally.empty(num_classes)
        t.support[:] = np.bincount(y, minlength=num_classes)
        t.correct[:] = np.bincount(y[h], minlength=num_classes)
        tallies[m] = t
    pairs = paired.PairTally.empty(hits, num_classes)
    pairs.add(y, hits)
    return paired.MethodTallies(tallies, pairs)


def test_pair_counts_match_brute_force_and_merge_over_chunks(world):
    ev, fitted, counts, wise = world
    chunked = cell.evaluate(chunks(ev, 333, wise), fitted)
    one = cell.evaluate(chunks(ev, 10**6, wise), fitted)
    assert tuple(chunked) == (*adjust.METHODS, "wiseft@0.5") == chunked.pairs.methods
    np.testing.assert_array_equal(chunked.pairs.both, one.pairs.both)
    hits = hits_of(ev, fitted, wise)
    y = ev.labels
    for a, b in combinations(hits, 2):
        better, worse = chunked.discordant(a, b)
        np.testing.assert_array_equal(better, np.bincount(y[hits[a] & ~hits[b]], minlength=C))
        np.testing.assert_array_equal(worse, np.bincount(y[~hits[a] & hits[b]], minlength=C))
    t1 = cell.build_tables("m", "d", "test", NAMES, fitted, chunked, counts)
    t2 = cell.build_tables("m", "d", "test", NAMES, fitted, one, counts)
    for name in ("per_class", "comparisons"):  # counts only: equal, not close
        assert t1[name].equals(t2[name]), name
    ci = [c for c in schema.columns("summary") if c.startswith(tuple(schema.CI_METRICS))]  # not nll/ece sums
    assert t1["summary"].select(ci).equals(t2["summary"].select(ci))
    # merged halves (what threads and Dask workers return) = the whole
    half = len(y) // 2
    parts = [cell.evaluate([(ev.zs[sl], ev.ft[sl], y[sl], {n: x[sl] for n, x in wise.items()})], fitted)
             for sl in (slice(None, half), slice(half, None))]
    merged = parts[0].merge(parts[1])
    np.testing.assert_array_equal(merged.pairs.both, one.pairs.both)
    assert all((merged[m].correct == one[m].correct).all() for m in one)


def test_comparisons_match_statsmodels(world):
    ev, fitted, counts, wise = world
    tallies = cell.evaluate(chunks(ev, 500, wise), fitted)
    tables = cell.build_tables("m", "d", "test", NAMES, fitted, tallies, counts)
    schema.check(tables)
    comp, summary = tables["comparisons"], tables["summary"]
    M = len(tallies)
    assert comp.height == M * (M - 1) and comp.select("method", "baseline").n_unique() == comp.height
    hits = hits_of(ev, fitted, wise)
    acc = dict(summary.select("method", "accuracy").iter_rows())
    for r in comp.iter_rows(named=True):
        a, b = hits[r["method"]], hits[r["baseline"]]
        table = [[int((a & b).sum()), int((a & ~b).sum())], [int((~a & b).sum()), int((~a & ~b).sum())]]
        assert (r["n_better"], r["n_worse"], r["n"]) == (table[0][1], table[1][0], len(a))
        assert r["mcnemar_p"] == pytest.approx(sm_tables.mcnemar(table, exact=True).pvalue, rel=1e-9)
        assert r["delta"] == pytest.approx(acc[r["method"]] - acc[r["baseline"]], abs=1e-12)
        assert r["delta_ci_low"] <= r["delta"] <= r["delta_ci_high"]
        back = comp.filter((pl.col("method") == r["baseline"]) & (pl.col("baseline") == r["method"])).row(0, named=True)
        assert back["delta_ci_low"] == pytest.approx(-r["delta_ci_high"]) and back["mcnemar_p"] == r["mcnemar_p"]


def test_class_flags_match_statsmodels(world):
    ev, fitted, counts, wise = world
    tallies = cell.evaluate(chunks(ev, 500, wise), fitted)
    pc = cell.build_tables("m", "d", "test", NAMES, fitted, tallies, counts)["per_class"]
    hits = hits_of(ev, fitted, wise)
    y = ev.labels
    expect_base = {"zs": None, "ft": None, "zs_debiased": "zs", "ft_la": "ft", "ensemble": "ft",
                   "gla": "ft", "wiseft@0.5": "ft"}
    for method, base in expect_base.items():
        sub = pc.filter(pl.col("method") == method).sort("class_index")
        if base is None:
            assert sub["baseline"].null_count() == C and sub["helps"].null_count() == C
            continue
        assert (sub["baseline"] == base).all()
        p = []
        for k in range(C):
            a, b = hits[method][y == k], hits[base][y == k]
            table = [[int((a & b).sum()), int((a & ~b).sum())], [int((~a & b).sum()), int((~a & ~b).sum())]]
            p.append(sm_tables.mcnemar(table, exact=True).pvalue)
            assert sub["delta"][k] == pytest.approx(a.mean() - b.mean(), abs=1e-12)
        reject, q, *_ = sm_multi.multipletests(p, alpha=0.05, method="fdr_bh")
        np.testing.assert_allclose(sub["mcnemar_p"].to_numpy(), p, rtol=1e-9)
        np.testing.assert_allclose(sub["q_value"].to_numpy(), q, rtol=1e-9)
        delta = sub["delta"].to_numpy()
        assert sub["helps"].to_list() == (reject & (delta > 0)).tolist()
        assert sub["hurts"].to_list() == (reject & (delta < 0)).tolist()
    # removing the planted π_p from zs helps classes of small prior and hurts large ones
    zd = pc.filter(pl.col("method") == "zs_debiased")
    helped, hurt = zd.filter(pl.col("helps"))["prior_pretrain"], zd.filter(pl.col("hurts"))["prior_pretrain"]
    assert helped.len() and hurt.len() and helped.mean() < hurt.mean()


def test_baselines():
    methods = (*adjust.METHODS, "wiseft@0.5", "kshot@4")
    assert [paired.baseline_of(m, methods) for m in methods] == [
        None, "zs", None, "ft", "ft", "ft", "ft", "zs"]
    assert paired.baseline_of("zs_debiased", adjust.ZS_METHODS) == "zs"
    assert paired.baseline_of("wiseft@0.5", ("zs", "zs_debiased", "wiseft@0.5")) is None  # no ft


def test_plain_tallies_get_no_comparisons(world):
    """gla_tp is scored alone (analyze.audits): no pairs, so no comparisons and null flags."""
    ev, fitted, counts, wise = world
    tallies = cell.evaluate(chunks(ev, 500, wise), fitted)
    tables = cell.build_tables("m", "d", "test", NAMES, fitted, {"gla": tallies["gla"]}, counts)
    schema.check(tables)
    assert tables["comparisons"].height == 0 and tables["per_class"]["helps"].null_count() == C
    with pytest.raises(ValueError, match="different methods"):
        tallies.pairs.merge(paired.PairTally.empty(("zs", "ft"), C))


def _joint(rng, y, p_base, up, down):
    """Per-sample hits of (method, baseline): baseline right w.p. p_base[class]; the method
    flips a wrong one right w.p. up[class] and a right one wrong w.p. down[class]."""
    base = rng.random(len(y)) < p_base[y]
    u = rng.random(len(y))
    new = np.where(base, u >= down[y], u < up[y])
    return new, base


def test_paired_delta_covers_in_planted_worlds():
    """True delta = Σ π_k (P(method right | k) − P(baseline right | k)), labels ~ π."""
    rng = np.random.default_rng(5)
    hits = []
    for _ in range(2500):
        K = int(rng.integers(2, 15))
        pi = zipf_prior(K, seed=int(rng.integers(1 << 30)))
        p_base, up, down = rng.uniform(0.3, 0.95, K), rng.uniform(0, 0.4, K), rng.uniform(0, 0.15, K)
        y = rng.choice(K, size=int(rng.integers(50, 1000)), p=pi)
        new, base = _joint(rng, y, p_base, up, down)
        r = paired.comparison_rows(from_hits(y, {"m": new, "b": base}, K))[0]
        truth = float(pi @ ((1 - p_base) * up - p_base * down))
        hits.append(r["delta_ci_low"] <= truth <= r["delta_ci_high"])
    assert coverage_ok(np.array(hits), hi=0.975)


def test_helps_hurts_find_the_planted_classes_with_fdr_control():
    """20 classes of 150 samples: 4 planted gains, 2 planted losses, 14 null classes where
    the two methods disagree as often each way. Over 300 replicates the planted classes are
    found and the false discovery proportion averages at most the 5 % level."""
    rng = np.random.default_rng(6)
    K, n = 20, 150
    y = np.repeat(np.arange(K), n)
    p_base = np.full(K, 0.6)
    # null classes: P(flip up) = 0.4 · 0.1 = P(flip down) = 0.6 · down
    up, down = np.full(K, 0.1), np.full(K, 0.4 * 0.1 / 0.6)
    up[:4], down[4:6] = 0.7, 0.5
    fdp, found_up, found_down = [], 0, 0
    for _ in range(300):
        new, base = _joint(rng, y, p_base, up, down)
        f = paired.class_flags(from_hits(y, {"zs": base, "zs_debiased": new}, K), "zs_debiased")
        helps, hurts = np.array(f["helps"], dtype=bool), np.array(f["hurts"], dtype=bool)
        flagged = helps | hurts
        fdp.append(flagged[6:].sum() / max(flagged.sum(), 1))
        found_up += helps[:4].all() and not hurts[:4].any()
        found_down += hurts[4:6].all()
    assert found_up >= 0.95 * 300 and found_down >= 0.95 * 300
    se = np.std(fdp) / np.sqrt(len(fdp))
    assert np.mean(fdp) <= 0.05 + 4 * se
