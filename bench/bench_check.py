"""How long the pre-flight checks take: `gla check` on the demo config.

    .venv/bin/python bench/bench_check.py [--config pipeline/demo.toml] [--repeats 5]

Prints the in-process time of the checks alone (config load + every check) and the wall
time of the `gla check` command (interpreter start-up included), median of the repeats.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from gla.pipeline.config import load_config
from gla.pipeline.preflight import check_config

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(REPO / "pipeline" / "demo.toml"))
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    inproc, checks, wall = [], [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        report = check_config(load_config(args.config))
        inproc.append(time.perf_counter() - t)
        checks.append(report.checks)
    gla = Path(sys.executable).with_name("gla")
    for _ in range(args.repeats):
        t = time.perf_counter()
        subprocess.run([str(gla), "check", args.config], check=True, capture_output=True)
        wall.append(time.perf_counter() - t)
    print(f"config {args.config}: {checks[0]} checks, {report.cells} cells, {len(report.sources)} datasets listed")
    print(f"in-process load + checks: median {statistics.median(inproc):.3f} s (min {min(inproc):.3f})")
    print(f"`gla check` wall:         median {statistics.median(wall):.3f} s (min {min(wall):.3f})")
    print(f"command: {sys.executable} bench/bench_check.py --config {args.config} --repeats {args.repeats}")


if __name__ == "__main__":
    main()
