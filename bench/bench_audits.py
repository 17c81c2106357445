"""Target-prior estimation (EM, BBSE) and the label-issue audit as map-reduce over parts:
time and peak memory for an N × C cell, streamed in parts of 8,192 rows.

Goal (issue 10): a 2,000,000 × 1,000 cell in flat memory. Parts are produced on the fly
(row permutations of one planted 8,192 × C block, so producing a part costs little and the
data never exists whole), exactly as a store's parts are streamed by ``pipeline.cell_audits``.
Peak memory is the process's max RSS growth during the run: flat means it does not grow
with N. Run it at two sizes to see time grow linearly and memory stay flat:

    python bench/bench_audits.py --n 16384 --classes 1000
    python bench/bench_audits.py --n 65536 --classes 1000
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gla.analyze import adjust, noise, shift, synthetic  # noqa: E402

PART = 8192


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--fit-per-class", type=int, default=5, help="rows per class of the fit split")
    args = ap.parse_args()
    C, N = args.classes, args.n
    fit = synthetic.planted_world(C, args.fit_per_class, seed=0, signal=2.0, ft_signal=2.0)
    base = synthetic.shifted_world(fit, synthetic.zipf_prior(C, 1.0, 7), PART, seed=1,
                                   signal=2.0, ft_signal=2.0)
    g_fit = adjust.gla(fit.zs, fit.ft, fit.pi_s, fit.pi_p)
    g_base = adjust.gla(base.zs, base.ft, base.pi_s, base.pi_p)
    n_parts = -(-N // PART)

    def parts():
        for i in range(n_parts):
            rows = np.random.default_rng(i).permutation(PART)[: min(PART, N - i * PART)]
            yield g_base[rows], base.labels[rows]

    rss0 = _rss_mb()
    t0 = time.perf_counter()
    cal = shift.fit_bcts(g_fit, fit.labels, C)
    t_cal = time.perf_counter() - t0

    def reduce(log_w):
        total = shift.EMStats.empty(1, C)
        for z, _ in parts():
            total = total.merge(shift.em_part(cal(z), log_w))
        return total

    t0 = time.perf_counter()
    em = shift.estimate_em(reduce, cal.source_prior)
    t_em = time.perf_counter() - t0
    t0 = time.perf_counter()
    M = shift.confusion_conditional(g_fit.argmax(1), fit.labels, C)
    bb = shift.bbse_from_chunks(M, ((z, None) for z, _ in parts()))
    t_bb = time.perf_counter() - t0
    t0 = time.perf_counter()
    clean = noise.label_scores(g_fit, fit.labels)
    audit = noise.audit_labels(parts, clean, C, 0.1)
    t_li = time.perf_counter() - t0
    rss = _rss_mb() - rss0
    truth = np.bincount(base.labels, minlength=C) / PART
    print(f"cell {N:,} × {C:,} float32 in {n_parts} parts of {PART:,} rows "
          f"(fit split {g_fit.shape[0]:,} rows)")
    print(f"  BCTS fit on the fit split      {t_cal:7.1f} s")
    print(f"  EM  ({em.iterations:3d} passes)              {t_em:7.1f} s   "
          f"{t_em / em.iterations / N * 1e6:.2f} µs/row/pass   L1 to truth {np.abs(em.prior[0] - truth).sum():.3f}")
    print(f"  BBSE (1 pass + solve)          {t_bb:7.1f} s   L1 to truth {np.abs(bb.prior[0] - truth).sum():.3f}")
    print(f"  label issues (2 passes)        {t_li:7.1f} s   {audit.n_flagged:,} BH flags, "
          f"{audit.n_cl_issues:,} CL issues kept")
    print(f"  peak RSS growth                {rss:7.0f} MB  (one part of logits is {PART * C * 4 / 2**20:.0f} MB)")
    print(f"command: python bench/bench_audits.py --n {N} --classes {C} --fit-per-class {args.fit_per_class}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
