"""Prior fit on 50,000 × 1,000 planted-prior float32 logits: gla against gla-reference.

Goal (issue 2): gla at least 20× faster than the released solver's algorithm
(gla-reference) at equal or lower objective, and under 1 s on a 2-core machine.
Both estimators share the same softmax machinery (analyze.priors._BiasedSoftmax), so the
ratio measures the algorithms. Prints the figures and the command that repeats them.

    python bench/bench_priors.py [--repeats 5] [--ref-repeats 1] [--n 50000] [--classes 1000]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gla.analyze.priors import estimate_pretrain_prior  # noqa: E402
from gla.analyze.synthetic import planted_world, zipf_prior  # noqa: E402


def timed(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--ref-repeats", type=int, default=1)
    args = ap.parse_args()
    C = args.classes
    pi = zipf_prior(C, seed=0)
    w = planted_world(C, args.n // C, pi, seed=0, ft_signal=None)
    zs, y = w.zs, w.labels
    print(f"logits {zs.shape} {zs.dtype}, {os.cpu_count()} cpus, numpy {np.__version__}, "
          f"{platform.processor() or platform.machine()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')}")
    t_gla, gla = timed(lambda: estimate_pretrain_prior(zs, y, "gla"), args.repeats)
    t_ref, ref = timed(lambda: estimate_pretrain_prior(zs, y, "gla-reference"), max(1, args.ref_repeats))

    def kl(q):
        return float(np.sum(pi * np.log(pi / q)))

    for name, t, e in (("gla", t_gla, gla), ("gla-reference", t_ref, ref)):
        print(f"{name:14s} median {t:8.3f} s  iterations {e.iterations:5d}  objective {e.objective:.6f}  "
              f"converged {e.converged}  KL(true||est) {kl(e.prior):.4f}  {e.message}")
    print(f"speed ratio (reference / gla): {t_ref / t_gla:.1f}x; objective gla - reference: "
          f"{gla.objective - ref.objective:+.2e}")
    ok = t_gla < 1.0 and t_ref / t_gla >= 20 and gla.objective <= ref.objective + 1e-9
    print(f"goal (< 1 s, >= 20x, objective <= reference): {'met' if ok else 'NOT met'}")
    exe = os.path.relpath(sys.executable) if sys.executable.startswith(os.getcwd()) else sys.executable
    threads = os.environ.get("OMP_NUM_THREADS")
    prefix = f"OMP_NUM_THREADS={threads} " if threads else ""
    print(f"command: {prefix}{exe} bench/bench_priors.py " + " ".join(sys.argv[1:]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
