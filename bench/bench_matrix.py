"""A matrix of synthetic cells through `gla analyze`: cells/s with 1 and 2 workers.

500 cells (N = 10,000 eval rows, C = 100 classes, zs + ft float32, 20 fit rows per
class) are written once with ``pipeline.synthetic.write_matrix``. Then:

- in-process reference: ``pipeline.analysis.analyze_cell`` on a sample of cells, one
  thread (what one cell costs without any orchestration);
- ``gla analyze --store S --force --workers W`` for W = 0 (in-process runner), 1 and 2
  (a LocalCluster of W single-threaded worker processes): wall time, cells/s, and the
  overhead per cell over the in-process reference, ``W × wall / cells − t_cell`` (cluster
  start, scheduling, per-cell cache writes and the combined tables, amortised).

    .venv/bin/python bench/bench_matrix.py [--cells 500] [--rows 10000] [--classes 100]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def make_store(root: Path, cells: int, rows: int, classes: int) -> list[tuple[str, str]]:
    from gla.pipeline.synthetic import write_cell

    models = max(1, int(math.sqrt(cells)))
    names = [(f"model-{i % models:03d}", f"data-{i // models:03d}") for i in range(cells)]
    marker = root / f".ok-{cells}-{rows}-{classes}"
    if marker.exists():
        return names
    shutil.rmtree(root, ignore_errors=True)
    t = time.perf_counter()
    for k, (m, d) in enumerate(names):
        write_cell(root, m, d, num_classes=classes, fit_per_class=20, eval_rows=rows, seed=k)
    marker.write_text("ok")
    print(f"  wrote {cells} cells in {time.perf_counter() - t:.1f} s")
    return names


def in_process_reference(root: Path, names, sample: int) -> float:
    from gla.pipeline.cell_analysis import StoreAnalysisOptions, analyze_cell

    opts = StoreAnalysisOptions(threads=1)
    analyze_cell(root, *names[0], opts)  # warm-up: imports, page cache
    t = time.perf_counter()
    for m, d in names[1 : sample + 1]:
        analyze_cell(root, m, d, opts)
    return (time.perf_counter() - t) / sample


def task_seconds(root: Path) -> float:
    """Mean wall time of the analysis inside each cell's task (recorded in its key.json)."""
    import json

    secs = [json.loads(p.read_text())["seconds"] for p in (root / "results" / "cells").glob("*/*/key.json")]
    return sum(secs) / len(secs)


def run_cli(root: Path, workers: int) -> float:
    cmd = [str(REPO / ".venv" / "bin" / "gla"), "analyze", "--store", str(root), "--force", "--quiet",
           "--workers", str(workers)]
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=500)
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--sample", type=int, default=20, help="cells timed for the in-process reference")
    ap.add_argument("--workdir", default=str(REPO / "bench" / "out" / "matrix"))
    ap.add_argument("--clean", action="store_true", help="delete the generated store afterwards")
    a = ap.parse_args()
    root = Path(a.workdir)
    print(f"bench_matrix: {a.cells} cells, N={a.rows:,}, C={a.classes} ({os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.1f})")
    names = make_store(root, a.cells, a.rows, a.classes)
    t_cell = in_process_reference(root, names, min(a.sample, a.cells - 1))
    print(f"  in-process analyze_cell (1 thread):   {1000 * t_cell:8.1f} ms/cell  "
          f"({1 / t_cell:6.1f} cells/s)")
    print("  (overhead = workers x wall / cells - t_cell; split into the analysis inside the task,"
          " slower than in-process when cores are shared, and orchestration: scheduling, cache writes,"
          " combined tables, cluster start)")
    for w in (0, 1, 2):
        load = os.getloadavg()[0]
        wall = run_cli(root, w)
        k = max(1, w)
        over = k * wall / a.cells - t_cell
        in_task = task_seconds(root)
        label = "in-process runner" if w == 0 else f"{w} worker{'s' if w > 1 else ''}"
        print(f"  gla analyze --workers {w} ({label:17s}): {wall:7.1f} s  {a.cells / wall:6.1f} cells/s  "
              f"overhead {1000 * over:+7.1f} ms/cell (analysis in task {1000 * (in_task - t_cell):+6.1f}, "
              f"orchestration {1000 * (k * wall / a.cells - in_task):+6.1f})  [load {load:.1f}]")
    if a.clean:
        shutil.rmtree(root, ignore_errors=True)
    print(f"command: .venv/bin/python bench/bench_matrix.py --cells {a.cells} --rows {a.rows} --classes {a.classes}")


if __name__ == "__main__":
    main()
