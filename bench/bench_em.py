"""EM for π_t over a streamed eval split: posteriors kept (what a run does: in memory, or
in its scratch file for a large split) against recomputed from the logits on every pass
(its fallback when there is no room for the scratch file). Same estimate, different cost.

A planted world (C classes, a fit split of 20 per class, an eval split drawn from a
Zipf(1.5) label distribution) streamed in parts of 8,192 rows, as a store's parts are.

    .venv/bin/python bench/bench_em.py [--n 65536] [--classes 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gla.analyze import audits, shift, synthetic  # noqa: E402
from gla.analyze.cell import AnalysisOptions, fit_priors  # noqa: E402

PART = 8192


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=65536)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    C = a.classes
    sig = {"signal": 2.5, "ft_signal": 2.5}
    fit = synthetic.planted_world(C, 20, seed=0, **sig)
    ev = synthetic.shifted_world(fit, synthetic.zipf_prior(C, 1.5, 7), a.n, seed=1, **sig)
    fitted = fit_priors(fit.zs, fit.labels, C, options=AnalysisOptions(estimators=("gla",)), ft_fit=fit.ft)

    def parts():
        for i in range(0, a.n, PART):
            yield ev.zs[i : i + PART], ev.ft[i : i + PART], ev.labels[i : i + PART], None

    opts = audits.AuditOptions(("em",))
    bcts = []
    for _ in range(a.repeats):  # the calibration both variants start with
        t = time.perf_counter()
        shift.fit_bcts(audits.debiased(fit.zs, fit.ft, fitted), fit.labels, C)
        bcts.append(time.perf_counter() - t)
    t_cal = float(np.median(bcts))
    truth = np.bincount(ev.labels, minlength=C) / a.n
    print(f"EM over {a.n:,} x {C:,} in parts of {PART:,} rows (medians of {a.repeats})")
    times = {}
    for name, keep in (("posteriors kept", audits.in_memory), ("recomputed every pass", lambda make: make)):
        runs = []
        for _ in range(a.repeats):
            t = time.perf_counter()
            res = audits.estimate_targets((fit.zs, fit.ft, fit.labels), parts, fitted, opts, keep=keep)
            runs.append(time.perf_counter() - t)
        est = res.whole["em"]
        times[name] = float(np.median(runs))
        em = times[name] - t_cal
        print(f"  {name:22s} {times[name]:7.2f} s = BCTS {t_cal:.2f} s + EM {em:6.2f} s  {est.iterations} passes, "
              f"{em / est.iterations / a.n * 1e6:.2f} µs/row/pass  L1 to the true label share "
              f"{np.abs(est.prior[0] - truth).sum():.4f}")
    kept, again = (times[k] - t_cal for k in ("posteriors kept", "recomputed every pass"))
    print(f"  EM alone: {again / kept:.1f}x faster with the posteriors kept")
    print(f"command: .venv/bin/python bench/bench_em.py --n {a.n} --classes {C} --repeats {a.repeats}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
