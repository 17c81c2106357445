"""The tolerance of the coverage-by-simulation tests (tests/test_intervals.py, test_paired.py)."""

from __future__ import annotations

import numpy as np


def coverage_ok(hits: np.ndarray, lo: float = 0.94, hi: float = 0.965) -> bool:
    """Coverage of R replicates is within [lo, hi] up to 4.5 Monte Carlo standard errors.

    [lo, hi] is where the method's true coverage lies in these worlds (bench/bench_coverage.py
    measures it with 20,000 replicates); 4.5 binomial SEs make a false alarm a 1-in-10^5
    event, and the seeds are fixed, so the test cannot flake.
    """
    r = len(hits)
    tol = 4.5 * np.sqrt(0.95 * 0.05 / r)
    return lo - tol <= float(np.mean(hits)) <= hi + tol
