"""What publication by run costs: storage per run and time per publication.

A synthetic store of ``--models`` × ``--datasets`` cells (N eval rows × C classes) is
analysed once; then the same caches are published again as a fresh run (the
publication step alone: combine the per-cell caches, write every table, the commit
record and LATEST, apply retention), and read back. Prints the run's size beside the
logits and the caches, the record's size, and the times.

    .venv/bin/python bench/bench_publish.py [--models 4] [--datasets 5] [--rows 5000] [--classes 100]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gla.pipeline import incremental as inc  # noqa: E402
from gla.pipeline import publication  # noqa: E402
from gla.pipeline.cell_analysis import StoreAnalysisOptions  # noqa: E402
from gla.pipeline.runner import Runner  # noqa: E402
from gla.pipeline.synthetic import write_cell  # noqa: E402


def size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def build(a) -> Path:
    work = Path(a.workdir)
    store = work / "store"
    marker = work / f".ok-{a.models}-{a.datasets}-{a.rows}-{a.classes}"
    if not marker.exists():
        shutil.rmtree(work, ignore_errors=True)
        for k in range(a.models * a.datasets):
            write_cell(store, f"model-{k // a.datasets}", f"data-{k % a.datasets}", num_classes=a.classes,
                       fit_per_class=20, eval_rows=a.rows, seed=k)
        marker.write_text("ok")
    shutil.rmtree(store / "results", ignore_errors=True)
    return store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=4)
    ap.add_argument("--datasets", type=int, default=5)
    ap.add_argument("--rows", type=int, default=5000)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--workdir", default="/tmp/gla-bench-publish")
    a = ap.parse_args()
    store = build(a)
    t = time.perf_counter()
    s = inc.analyze_cells(store, StoreAnalysisOptions(), runner=Runner(workers=0, quiet=True))
    analyse = time.perf_counter() - t
    run = publication.latest(store)
    included = {tuple(k.split("/", 1)): v["key"] for k, v in run.record["cell_keys"].items()}
    pub, read = [], []
    for _ in range(a.repeat):
        t = time.perf_counter()
        inc.publish_cells(store, included, inc.PublishOptions(), inc.AnalyzeSummary(), force=True)
        pub.append(time.perf_counter() - t)
        t = time.perf_counter()
        publication.read_tables(store)
        read.append(time.perf_counter() - t)
    run = publication.latest(store)
    run_bytes, logits = size(run.dir), size(store / "logits")
    caches = size(store / "results" / "cells")
    rec = publication.record_path(store, run.id).stat().st_size
    cells = len(included)
    print(f"bench_publish: {cells} synthetic cells, N={a.rows:,}, C={a.classes}; first analysis "
          f"{analyse:.2f} s ({len(s.computed)} cells)")
    print(f"  one run: {run_bytes / 1e6:.2f} MB in {len(run.tables)} tables "
          f"({run_bytes / cells / 1e3:.1f} kB per cell; predictions "
          f"{run.tables.get('predictions', {}).get('size', 0) / run_bytes:.0%} of it), "
          f"record {rec / 1e3:.1f} kB")
    print(f"  beside: logits {logits / 1e6:.1f} MB, per-cell caches {caches / 1e6:.2f} MB; "
          f"20 kept runs = {20 * run_bytes / logits:.1%} of the logits")
    print(f"  publish a run (combine caches, write tables + record): median {statistics.median(pub):.3f} s "
          f"over {a.repeat}; read every table of the latest run (verified): median {statistics.median(read):.3f} s")
    print(f"command: .venv/bin/python bench/bench_publish.py --models {a.models} --datasets {a.datasets} "
          f"--rows {a.rows} --classes {a.classes}")


if __name__ == "__main__":
    main()
