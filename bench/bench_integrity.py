"""What the store's integrity checks cost on one 50,000 × 1,000 cell (bench_analyze_cell's cell).

Figures (best of --repeat, warm page cache, CPU seconds of this process):
  decode            the needed logits decoded in 4,096-row batches, page checksums not checked
  decode+crc        the same with Parquet page CRC32 verification (what every read does)
  sha256(all parts) hashing every part once (what --verify adds, and what a read pays for a
                    part whose mtime differs from its seal)
  analyze           analyze_cell as it runs by default (stat + size + rows + page CRCs)
  analyze --verify  analyze_cell with Store(verify=True): sha256 of every part read

    .venv/bin/python bench/bench_integrity.py [--repeat 2] [--store DIR]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
from bench_analyze_cell import DATASET, MODEL, best, build_store
from gla.extract import records
from gla.pipeline.cell_analysis import StoreAnalysisOptions, analyze_cell
from gla.pipeline.store import Store


def decode(files_cols, verify: bool) -> None:
    for f, cols in files_cols:
        pf = pq.ParquetFile(f, page_checksum_verification=verify)
        for rb in pf.iter_batches(4096, columns=cols):
            for col in cols:
                rb.column(col).flatten().to_numpy()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--store", help="store folder to use (kept; built if it has no cell)")
    args = ap.parse_args(argv)
    tmp = None if args.store else tempfile.mkdtemp(prefix="gla-bench-integrity-")
    root = Path(args.store) if args.store else Path(tmp) / "store"
    try:
        if (MODEL, DATASET) not in Store(root).cells():
            build_store(root, 1000, 50, 50_000)
        info = Store(root).cell_info(MODEL, DATASET)
        val, test = info.splits["val"], info.splits["test"]
        needed = [(f, ["zs"]) for f in val.files] + [(f, ["zs", "ft"]) for f in test.files]
        parts = list(val.files + test.files)
        size = sum(f.stat().st_size for f in parts) / 2**20
        opts = StoreAnalysisOptions(threads=1)
        rows = {
            "decode": best(lambda: decode(needed, False), args.repeat),
            "decode+crc": best(lambda: decode(needed, True), args.repeat),
            "sha256(all parts)": best(lambda: [records.sha256(f) for f in parts], args.repeat),
            "analyze": best(lambda: analyze_cell(Store(root), MODEL, DATASET, opts), args.repeat),
            "analyze --verify": best(lambda: analyze_cell(Store(root, verify=True), MODEL, DATASET, opts),
                                     args.repeat),
        }
        print(f"cell {MODEL}/{DATASET}: {info.num_classes} classes, val {val.rows} + test {test.rows} rows, "
              f"{len(parts)} parts, {size:.0f} MiB on disk")
        print(f"{'':20} {'wall s':>7} {'cpu s':>7}")
        for name, (w, c) in rows.items():
            print(f"{name:20} {w:7.3f} {c:7.3f}")
        crc = rows["decode+crc"][1] - rows["decode"][1]
        full = rows["analyze --verify"][1] - rows["analyze"][1]
        print(f"page CRC32 on every read: +{crc:.3f} cpu s = {100 * crc / rows['analyze'][1]:.1f} % of analyze")
        print(f"--verify (sha256 of every part): +{full:.3f} cpu s = {100 * full / rows['analyze'][1]:.1f} % of analyze")
        print("command: " + " ".join([sys.executable, *sys.argv]))
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    t0 = time.perf_counter()
    rc = main()
    print(f"({time.perf_counter() - t0:.0f} s)")
    sys.exit(rc)
