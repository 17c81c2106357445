"""One 50,000 × 1,000 cell through ``gla analyze``, as a ratio to reading its logits.

Planted-prior world (analyze.synthetic), zs + ft logits, C = 1,000 classes:
val = 50 per class (50,000 rows; the prior is fitted on its zs), test = 50,000 rows.
Figures (best of --repeat, warm page cache):
  read(needed)  pyarrow → numpy views of the logits analyze reads (val zs; test zs + ft)
  read(all)     pyarrow → numpy of every logit column of the cell (val zs + ft; test zs + ft)
  stream(needed) the needed logits decoded in 4,096-row batches, none kept (decode-only floor)
  in-process    gla.pipeline.cli.main(["analyze", ...]) (analysis + writing the three tables)
  subprocess    `gla analyze --store S --quiet` (adds interpreter start-up and imports)
Goal (issue 2): in-process ≤ 3 × read(needed).

    .venv/bin/python bench/bench_analyze_cell.py [--classes 1000] [--per-class 50]
        [--test-rows 50000] [--repeat 3] [--store DIR (kept; reused if present)] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from gla.analyze.synthetic import planted_world, zipf_prior
from gla.extract import cellformat as cf
from gla.pipeline.cell_analysis import StoreAnalysisOptions, analyze_cell
from gla.pipeline.cli import main as gla_main
from gla.pipeline.store import Store

MODEL, DATASET = "bench", "planted"


def build_store(root: Path, c: int, per_class: int, test_rows: int) -> None:
    pi_p = zipf_prior(c, seed=0)
    cell = cf.cell_dir(root, MODEL, DATASET)
    meta = {"class_names": [f"class_{i}" for i in range(c)]}
    for split, n_per, seed in (("val", per_class, 1), ("test", -(-test_rows // c), 2)):
        w = planted_world(c, n_per, pi_p, seed=seed)
        n = per_class * c if split == "val" else test_rows
        ids = [f"{split}-{i}" for i in range(n)]
        table = cf.build_table(ids, split, w.labels[:n], w.zs[:n], w.ft[:n], metadata=meta)
        cf.write_split(cell, split, [table])
        del w, table


def read_to_numpy(files_cols) -> None:
    """Baseline 1: pyarrow read_table + (rows, C) float32 numpy views of every chunk.

    Reading the logits into memory as numpy the plain way (decode, no extra copy).
    """
    out = []
    for f, cols in files_cols:
        t = pq.read_table(f, columns=cols)
        for col in cols:
            for ch in t.column(col).chunks:
                out.append(ch.flatten().to_numpy().reshape(len(ch), -1))
    assert all(a.dtype == np.float32 for a in out)


def stream_to_numpy(files_cols, batch_rows: int = 4096) -> None:
    """Baseline 2: decode in row batches into numpy views, keeping none (lower bound)."""
    for f, cols in files_cols:
        for rb in pq.ParquetFile(f).iter_batches(batch_rows, columns=cols):
            for col in cols:
                a = rb.column(col).flatten().to_numpy().reshape(rb.num_rows, -1)
                assert a.dtype == np.float32


def best(fn, repeat: int) -> tuple[float, float]:
    """(best wall seconds, best CPU seconds of this process, all threads) over repeat runs.

    CPU time is the robust figure on a shared machine: other processes stretch wall time.
    """
    walls, cpus = [], []
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return min(walls), min(cpus)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--per-class", type=int, default=50)
    ap.add_argument("--test-rows", type=int, default=50_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--store", help="store folder to use (kept; built if it has no cell)")
    ap.add_argument("--threads", type=int, default=0, help="evaluation threads (0 = auto)")
    ap.add_argument("--profile", action="store_true", help="print a cProfile of one in-process run")
    args = ap.parse_args(argv)

    tmp = None
    if args.store:
        root = Path(args.store)
    else:
        tmp = tempfile.mkdtemp(prefix="gla-bench-analyze-")
        root = Path(tmp) / "store"
    try:
        store = Store(root)
        if (MODEL, DATASET) not in store.cells():
            t0 = time.perf_counter()
            build_store(root, args.classes, args.per_class, args.test_rows)
            print(f"built store {root} in {time.perf_counter() - t0:.1f} s")
        info = store.cell_info(MODEL, DATASET)
        val, test = info.splits["val"], info.splits["test"]
        print(f"cell {MODEL}/{DATASET}: C={info.num_classes}, val {val.rows} rows, "
              f"test {test.rows} rows, zs+ft float32; {os.cpu_count()} cpu")
        needed = [(f, ["zs"]) for f in val.files] + [(f, ["zs", "ft"]) for f in test.files]
        everything = [(f, ["zs", "ft"]) for f in val.files + test.files]
        read_needed = best(lambda: read_to_numpy(needed), args.repeat)
        read_all = best(lambda: read_to_numpy(everything), args.repeat)
        stream_needed = best(lambda: stream_to_numpy(needed), args.repeat)

        # --force: recompute every time (gla analyze otherwise reuses unchanged cells' cached results)
        argv_an = ["analyze", "--store", str(root), "--quiet", "--force", "--threads", str(args.threads)]

        def in_process() -> None:
            assert gla_main(argv_an) == 0

        in_process()  # warm-up (imports, first-touch allocations)
        t_in = best(in_process, args.repeat)
        gla = Path(sys.executable).with_name("gla")
        cmd = ([str(gla)] if gla.exists() else [sys.executable, "-m", "gla.pipeline.cli"]) + argv_an

        def sub() -> None:
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)

        t_sub = best(sub, args.repeat)[0]
        # Peak RSS of a fresh `gla analyze` process: VmHWM of its own address space (ru_maxrss
        # is inherited across fork+exec from this big benchmark process, so it would mislead).
        probe = subprocess.run(
            [sys.executable, "-c",
             "import sys; from gla.pipeline.cli import main; "
             f"rc = main({argv_an!r}); "
             "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]);"
             " sys.exit(rc)"],
            check=True, capture_output=True, text=True,
        )
        rss_sub = int(probe.stdout.split()[-1]) / 1024
        res = analyze_cell(store, MODEL, DATASET, StoreAnalysisOptions(threads=args.threads))
        stages = ", ".join(
            f"{k} {v:.3f}/{res.diagnostics['cpu_seconds'][k]:.3f}"
            for k, v in res.diagnostics["seconds"].items()
        )
        acc = dict(zip(res.summary["method"].to_list(), res.summary["accuracy"].to_list(),
                       strict=True))

        print(f"{'':27} {'wall s':>7} {'cpu s':>7}")
        print(f"read(needed) to numpy       {read_needed[0]:7.3f} {read_needed[1]:7.3f}")
        print(f"read(all) to numpy          {read_all[0]:7.3f} {read_all[1]:7.3f}")
        print(f"stream(needed) numpy views  {stream_needed[0]:7.3f} {stream_needed[1]:7.3f}"
              "  (decode-only floor)")
        print(f"gla analyze in-process      {t_in[0]:7.3f} {t_in[1]:7.3f}"
              f"  (threads={args.threads or 'auto'})")
        print(f"gla analyze subprocess      {t_sub:7.3f}       -")
        for what, base in (("read(needed)", read_needed), ("read(all)", read_all),
                           ("stream(needed)", stream_needed)):
            print(f"ratio in-process / {what:<15} wall {t_in[0] / base[0]:5.2f} x   "
                  f"cpu {t_in[1] / base[1]:5.2f} x   (subprocess wall {t_sub / base[0]:5.2f} x)")
        print("goal: in-process <= 3 x read(needed)")
        print(f"subprocess peak RSS {rss_sub:.0f} MB (the val zs alone is "
              f"{val.rows * info.num_classes * 4 / 2**20:.0f} MB; test logits "
              f"{2 * test.rows * info.num_classes * 4 / 2**20:.0f} MB are streamed)")
        print(f"analyze_cell stages (wall/cpu s): {stages}")
        print("accuracy: " + ", ".join(f"{m} {a:.3f}" for m, a in acc.items()))
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
            gla_main(argv_an)
            prof.disable()
            s = io.StringIO()
            pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(20)
            print(s.getvalue())
        print("command: " + " ".join([sys.executable, *sys.argv]))
        print("subprocess command: " + " ".join(cmd))
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
