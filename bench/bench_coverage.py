"""Coverage of the summary and comparison intervals, by simulation on planted worlds.

Not a test: it prints, per world, the fraction of 95 % intervals that cover the planted
truth over many replicates (the tests check fewer replicates of some of these worlds).
For balanced accuracy it puts the interval the tables use beside two alternatives, the
plug-in Wald interval and plain Price–Bonett, which is why docs/statistics.md picks it.

    .venv/bin/python bench/bench_coverage.py [--replicates 20000] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
from gla.analyze import intervals, paired, stats
from gla.analyze import significance as sig
from gla.analyze.synthetic import zipf_prior

Z = 1.959963984540054

# (classes, per-class samples drawn in [lo, hi), per-class accuracy drawn in [lo, hi])
BALANCED_WORLDS = (
    (10, (25, 100), (0.3, 0.95)),
    (100, (5, 20), (0.5, 1.0)),
    (1000, (2, 10), (0.6, 1.0)),
    (8000, (3, 4), (0.0, 1.0)),
    (50, (2, 10), (0.7, 1.0)),
    (5, (100, 400), (0.95, 1.0)),
    (3, (10, 40), (0.8, 1.0)),
    (20, (2, 5), (0.9, 1.0)),
)


def plugin_wald(x, n):
    p = x / n
    se = math.sqrt(float((p * (1 - p) / n).sum())) / len(n)
    return p.mean() - Z * se, p.mean() + Z * se


def price_bonett(x, n):
    K = len(n)
    pt = (x + 2 / K) / (n + 4 / K)
    se = math.sqrt(float((pt * (1 - pt) / (n + 4 / K)).sum())) / K
    return pt.mean() - Z * se, pt.mean() + Z * se


def tables_interval(x, n):
    return sig.class_mean_interval(x, n)[1:]


def balanced(rng, R: int) -> None:
    print("balanced accuracy: coverage of the mean of the planted per-class accuracies")
    print(f"{'classes':>8} {'n per class':>12} {'accuracy':>10} | {'plug-in Wald':>12} {'Price-Bonett':>12} {'tables':>8}")
    for K, (n_lo, n_hi), (p_lo, p_hi) in BALANCED_WORLDS:
        reps = R if K <= 1000 else R // 4  # fewer replicates of the huge world
        hits = np.zeros(3)
        for _ in range(reps):
            n = rng.integers(n_lo, n_hi, size=K)
            p = rng.uniform(p_lo, p_hi, K)
            x = rng.binomial(n, p)
            for i, f in enumerate((plugin_wald, price_bonett, tables_interval)):
                lo, hi = f(x, n)
                hits[i] += lo <= p.mean() <= hi
        cov = hits / reps
        print(f"{K:>8} {f'{n_lo}-{n_hi - 1}':>12} {f'{p_lo}-{p_hi}':>10} | "
              f"{cov[0]:>12.3f} {cov[1]:>12.3f} {cov[2]:>8.3f}   ({reps} replicates)")


def accuracy(rng, R: int) -> None:
    print("\naccuracy (Wilson): labels ~ a Zipf prior, per-class accuracy planted, truth Σ π_k p_k")
    for n_lo, n_hi in ((20, 100), (100, 1000), (1000, 10000)):
        hits = 0
        for _ in range(R):
            C = int(rng.integers(2, 30))
            pi = zipf_prior(C, seed=int(rng.integers(1 << 30)))
            p = rng.uniform(0.3, 1.0, C)
            n = int(rng.integers(n_lo, n_hi))
            x = rng.binomial(n, float(pi @ p))  # Σ correct of n iid samples
            _, lo, hi = intervals.pooled(x, n)
            hits += lo <= float(pi @ p) <= hi
        print(f"  n {n_lo}-{n_hi - 1}: {hits / R:.3f}")


def delta(rng, R: int) -> None:
    print("\npaired delta (Bonett-Price) through PairTally: truth Σ π_k (P(new right|k) − P(old right|k))")
    for n_lo, n_hi, up_hi in ((50, 200, 0.1), (200, 2000, 0.4), (2000, 10000, 0.05)):
        hits = 0
        for _ in range(R):
            K = int(rng.integers(2, 15))
            pi = zipf_prior(K, seed=int(rng.integers(1 << 30)))
            p_old, up, down = rng.uniform(0.3, 0.95, K), rng.uniform(0, up_hi, K), rng.uniform(0, up_hi / 2, K)
            y = rng.choice(K, size=int(rng.integers(n_lo, n_hi)), p=pi)
            old = rng.random(len(y)) < p_old[y]
            u = rng.random(len(y))
            new = np.where(old, u >= down[y], u < up[y])
            t = {m: stats.Tally.empty(K) for m in ("new", "old")}
            for m, h in (("new", new), ("old", old)):
                t[m].support[:] = np.bincount(y, minlength=K)
                t[m].correct[:] = np.bincount(y[h], minlength=K)
            pairs = paired.PairTally.empty(t, K)
            pairs.add(y, {"new": new, "old": old})
            r = paired.comparison_rows(paired.MethodTallies(t, pairs))[0]
            truth = float(pi @ ((1 - p_old) * up - p_old * down))
            hits += r["delta_ci_low"] <= truth <= r["delta_ci_high"]
        print(f"  n {n_lo}-{n_hi - 1}, flip rates up to {up_hi}: {hits / R:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicates", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    t0 = time.perf_counter()
    balanced(rng, a.replicates)
    accuracy(rng, a.replicates)
    delta(rng, a.replicates // 4)
    print(f"\n{time.perf_counter() - t0:.0f} s; command: .venv/bin/python bench/bench_coverage.py "
          f"--replicates {a.replicates} --seed {a.seed}")


if __name__ == "__main__":
    main()
