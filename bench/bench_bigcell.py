"""One big cell through `gla analyze`: peak resident memory and time vs a pyarrow scan.

A cell of N rows × C classes of float16 logits (zs and ft; default N = 2,000,000,
C = 1,000: 8 GB of logits) is written with ``pipeline.synthetic.write_cell``. Then:

- a pyarrow scan of the same files (every row group of label, zs, ft read and decoded,
  nothing else) gives the I/O + decode floor, warm page cache (best of 2);
- ``gla analyze --store S --workers 0 --force`` (in-process: peak RSS is the process's
  ru_maxrss) and ``--workers 1`` (one Dask worker: peak of the summed RSS of the process
  tree, sampled every 50 ms).
- with ``--audits``, the same two runs again with the audits beyond the paper:
  ``--target-estimator em --target-estimator bbse --label-issues`` (π_t by EM and BBSE,
  gla_tp, and the label-issue audit of the eval split against the fit split).

The eval split is streamed in row batches and reduced per class, so peak memory should
not grow with N: the same figures are also taken at N/4 for comparison (goal ≤ 2 GB).

    .venv/bin/python bench/bench_bigcell.py [--rows 2000000] [--classes 1000] [--no-small] [--audits]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


WRITE = """
import sys
from gla.pipeline.synthetic import write_cell
write_cell(sys.argv[1], "big", "cell", num_classes=int(sys.argv[3]), fit_per_class=20,
           eval_rows=int(sys.argv[2]), dtype="float16", part_rows=250_000, row_group_size=16384, seed=3)
"""


def make_store(root: Path, rows: int, classes: int) -> None:
    """Write the cell in a child process: this process must stay small, because the peak
    RSS that wait4 reports for a later child starts from the parent's at fork time."""
    marker = root / f".ok-{rows}-{classes}"
    if marker.exists():
        return
    shutil.rmtree(root, ignore_errors=True)
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", WRITE, str(root), str(rows), str(classes)], check=True)
    marker.write_text("ok")
    print(f"  wrote {rows:,} x {classes} float16 cell in {time.perf_counter() - t:.1f} s")


SCAN = """
import sys, time
import pyarrow.parquet as pq
from gla.pipeline.store import Store
files = Store(sys.argv[1]).split_info("big", "cell", "test").files  # through the manifest
assert files, "no parts found"
best = float("inf")
for _ in range(2):
    t = time.perf_counter()
    for f in files:
        for rb in pq.ParquetFile(f).iter_batches(batch_size=8192, columns=["label", "zs", "ft"]):
            rb.column("zs")
    best = min(best, time.perf_counter() - t)
print(best)
"""


def scan(root: Path) -> float:
    """Best of 2 warm scans, in a child process (this process stays small, so the peak
    RSS that wait4 reports for the analysis child is its own: a fork of a large parent
    would inherit the parent's high-water mark)."""
    r = subprocess.run([sys.executable, "-c", SCAN, str(root)], capture_output=True, text=True, check=True)
    return float(r.stdout.strip())


def tree_rss(pid: int) -> int:
    import psutil

    try:
        p = psutil.Process(pid)
        procs = [p, *p.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for q in procs:
        try:
            total += q.memory_info().rss
        except psutil.Error:
            pass
    return total


AUDITS = ("--target-estimator", "em", "--target-estimator", "bbse", "--label-issues")


def run_analyze(root: Path, workers: int, extra: tuple[str, ...] = ()) -> tuple[float, int, int]:
    """Wall time, peak summed RSS of the process tree (sampled), and the gla process's own
    peak RSS (exact, from wait4)."""
    import tempfile

    cmd = [str(REPO / ".venv" / "bin" / "gla"), "analyze", "--store", str(root), "--force", "--quiet",
           "--workers", str(workers), *extra]
    with tempfile.TemporaryFile("w+") as err:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True)
        peak = 0
        stop = threading.Event()

        def sample():
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, tree_rss(proc.pid))
                time.sleep(0.05)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t
        stop.set()
        th.join()
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(f"gla analyze failed ({proc.returncode}):\n{err.read()}")
    return wall, peak, usage.ru_maxrss * 1024


def measure(root: Path, rows: int, classes: int, audits: bool) -> dict:
    make_store(root, rows, classes)
    s = scan(root)
    gb = 1 << 30
    data = rows * classes * 2 * 2 / gb
    print(f"  N={rows:,} C={classes}: logits {data:.2f} GB (zs+ft float16)")
    print(f"    pyarrow scan (warm)              {s:7.2f} s")
    out = {"rows": rows, "scan": s}
    for label, extra in [("", ())] + ([("+ audits ", AUDITS)] if audits else []):
        w0, peak0, maxrss0 = run_analyze(root, 0, extra)
        w1, peak1, _ = run_analyze(root, 1, extra)
        peak0 = max(peak0, maxrss0)
        print(f"    gla analyze {label}--workers 0 {' ' * (9 - len(label))}{w0:7.2f} s  ratio {w0 / s:5.2f} x scan   "
              f"peak RSS {peak0 / gb:.2f} GB")
        print(f"    gla analyze {label}--workers 1 {' ' * (9 - len(label))}{w1:7.2f} s  ratio {w1 / s:5.2f} x scan   "
              f"peak RSS (all processes, Dask) {peak1 / gb:.2f} GB")
        out[label.strip() or "plain"] = {"w0": w0, "w1": w1, "rss0": peak0, "rss1": peak1}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--no-small", action="store_true", help="skip the N/4 comparison")
    ap.add_argument("--workdir", default=str(REPO / "bench" / "out" / "bigcell"))
    ap.add_argument("--keep", action="store_true", help="keep the generated store")
    ap.add_argument("--audits", action="store_true", help="also time the π_t and label-issue audits")
    a = ap.parse_args()
    os.environ.setdefault("POLARS_MAX_THREADS", "2")
    work = Path(a.workdir)
    print(f"bench_bigcell: {a.rows:,} x {a.classes} float16 cell ({os.cpu_count()} cores)")
    rows = ([a.rows // 4] if not a.no_small else []) + [a.rows]
    results = []
    for n in rows:
        results.append(measure(work / f"n{n}", n, a.classes, a.audits))
        if not a.keep:
            shutil.rmtree(work / f"n{n}", ignore_errors=True)
    if len(results) == 2:
        for key in [k for k in results[1] if isinstance(results[1][k], dict)]:
            r0, r1 = results[0][key], results[1][key]
            print(f"  {key}: peak RSS at N vs N/4: {r1['rss0'] / r0['rss0']:.2f}x (in-process), "
                  f"{r1['rss1'] / r0['rss1']:.2f}x (Dask); time {r1['w0'] / r0['w0']:.2f}x and "
                  f"{r1['w1'] / r0['w1']:.2f}x for 4x the rows; goal: flat memory, <= 2 GB")
    print(f"command: .venv/bin/python bench/bench_bigcell.py --rows {a.rows} --classes {a.classes}"
          + (" --audits" if a.audits else ""))


if __name__ == "__main__":
    main()
