"""analyze.significance against statsmodels and scipy on random inputs, and a bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
from gla.analyze import significance as sig

scipy_stats = pytest.importorskip("scipy.stats")
sm_tables = pytest.importorskip("statsmodels.stats.contingency_tables")
sm_multi = pytest.importorskip("statsmodels.stats.multitest")
sm_prop = pytest.importorskip("statsmodels.stats.proportion")


def test_mcnemar_matches_statsmodels_exact():
    rng = np.random.default_rng(0)
    for _ in range(300):
        b, c = rng.integers(0, rng.choice([5, 40, 400, 5000]), size=2)
        a, d = rng.integers(0, 100, size=2)
        ref = sm_tables.mcnemar([[a, b], [c, d]], exact=True).pvalue
        assert sig.mcnemar_exact(b, c) == pytest.approx(ref, rel=1e-9, abs=1e-300)


def test_fisher_matches_scipy():
    rng = np.random.default_rng(1)
    for _ in range(300):
        n1, n2 = rng.integers(1, rng.choice([10, 200, 20000]), size=2)
        x1, x2 = rng.integers(0, n1 + 1), rng.integers(0, n2 + 1)
        ref = scipy_stats.fisher_exact([[x1, n1 - x1], [x2, n2 - x2]]).pvalue
        assert sig.fisher_exact(x1, n1, x2, n2) == pytest.approx(ref, rel=1e-7, abs=1e-12)


def test_unpaired_interval_matches_statsmodels_newcombe():
    rng = np.random.default_rng(2)
    for _ in range(200):
        n1, n2 = rng.integers(1, 3000, size=2)
        x1, x2 = rng.integers(0, n1 + 1), rng.integers(0, n2 + 1)
        lo, hi = sm_prop.confint_proportions_2indep(x1, n1, x2, n2, method="newcomb", compare="diff")
        got = sig.unpaired_interval(x1, n1, x2, n2)
        assert got == pytest.approx((lo, hi), abs=1e-9)


def test_paired_interval_agrees_with_bootstrap_and_covers():
    rng = np.random.default_rng(3)
    # Agreement with a paired percentile bootstrap on large random samples.
    for _ in range(5):
        n = 4000
        p_old, flip_up, flip_down = rng.uniform(0.4, 0.9), rng.uniform(0, 0.1), rng.uniform(0, 0.1)
        old = rng.random(n) < p_old
        new = np.where(old, rng.random(n) >= flip_down, rng.random(n) < flip_up)
        b, c = int((new & ~old).sum()), int((~new & old).sum())
        lo, hi = sig.paired_interval(n, b, c)
        idx = rng.integers(0, n, size=(2000, n))
        boot = new[idx].mean(axis=1) - old[idx].mean(axis=1)
        blo, bhi = np.quantile(boot, [0.025, 0.975])
        assert lo == pytest.approx(blo, abs=0.004) and hi == pytest.approx(bhi, abs=0.004)
    # Coverage of the true difference by simulation, including small discordant counts.
    for n, pb, pc in ((50, 0.02, 0.05), (400, 0.1, 0.1), (2000, 0.01, 0.03)):
        cells = rng.multinomial(n, [pb, pc, 1 - pb - pc], size=4000)
        cover = [lo <= pb - pc <= hi for lo, hi in (sig.paired_interval(n, x[0], x[1]) for x in cells)]
        assert np.mean(cover) >= 0.93


@pytest.mark.parametrize("method", ["fdr_bh", "holm"])
def test_adjustments_match_statsmodels(method):
    rng = np.random.default_rng(4)
    fn = sig.bh_adjust if method == "fdr_bh" else sig.holm_adjust
    for _ in range(100):
        m = int(rng.integers(1, 300))
        p = rng.random(m) ** rng.uniform(1, 6)
        p[rng.random(m) < 0.1] = p[0]  # ties
        ref = sm_multi.multipletests(p, method=method)[1]
        np.testing.assert_allclose(fn(p), ref, rtol=1e-12)
    q = sig.bh_adjust(np.array([0.01, np.nan, 0.04]))
    assert np.isnan(q[1]) and q[0] == pytest.approx(0.02) and q[2] == pytest.approx(0.04)


def test_degenerate_counts():
    assert sig.mcnemar_exact(0, 0) == 1.0
    assert sig.fisher_exact(0, 10, 0, 10) == 1.0
    assert np.isnan(sig.paired_interval(0, 0, 0)[0])
    lo, hi = sig.paired_interval(100, 0, 0)
    assert lo < 0 < hi
    with pytest.raises(ValueError):
        sig.paired_interval(10, 8, 5)
