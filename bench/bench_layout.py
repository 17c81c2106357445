"""Physical layout of the logits in Parquet: write and read-to-numpy time.

Compares, for an N × C float32 logit matrix (default 50,000 × 1,000):
  fsl     one fixed_size_list<float32>[C] column      (what extract/cellformat.py writes)
  cols    C scalar float32 columns (one per class)
  blob    one fixed_size_binary[4·C] column (raw row bytes; reinterpret with numpy)
each with snappy (the cellformat default) and without compression. "read" is
ParquetFile → (N, C) float32 numpy array (row-major), best of --repeat runs; "stream" is the
pipeline's own access path (4,096-row buffered batches as zero-copy views, none kept); the file is in
the page cache, so this is decode cost, not disk. "read_table peak MB" is the extra peak
RSS of a fresh process reading the file with pq.read_table (a list column also materialises
Parquet's repetition/definition levels; pipeline.store reads in batches to avoid it).

    .venv/bin/python bench/bench_layout.py [--rows 50000] [--classes 1000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def best(fn, repeat):
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def fsl_table(x):
    n, c = x.shape
    return pa.table({"zs": pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), c)})


def fsl_read(path, n, c):
    col = pq.read_table(path).column("zs")
    out = np.empty((n, c), np.float32)
    row = 0
    for ch in col.chunks:
        k = len(ch)
        out[row : row + k] = ch.flatten().to_numpy().reshape(k, c)
        row += k
    return out


def cols_table(x):
    return pa.table({f"c{k}": x[:, k] for k in range(x.shape[1])})


def cols_read(path, n, c):
    t = pq.read_table(path)
    out = np.empty((n, c), np.float32)
    for k, name in enumerate(t.column_names):
        out[:, k] = t.column(name).to_numpy()
    return out


def blob_table(x):
    n, c = x.shape
    buf = pa.py_buffer(np.ascontiguousarray(x))
    return pa.table({"zs": pa.FixedSizeBinaryArray.from_buffers(pa.binary(4 * c), n, [None, buf])})


def blob_read(path, n, c):
    col = pq.read_table(path).column("zs")
    out = np.empty((n, c), np.float32)
    row = 0
    for ch in col.chunks:
        k = len(ch)
        data = np.frombuffer(ch.buffers()[1], dtype=np.float32, count=k * c, offset=ch.offset * 4 * c)
        out[row : row + k] = data.reshape(k, c)
        row += k
    return out


def batch_view(rb, c):
    """One record batch -> (rows, C) float32 view, for any layout."""
    if rb.num_columns == 1:
        col = rb.column(0)
        if pa.types.is_fixed_size_binary(col.type):
            return np.frombuffer(col.buffers()[1], dtype=np.float32, count=len(col) * c,
                                 offset=col.offset * 4 * c).reshape(len(col), c)
        return col.flatten().to_numpy().reshape(len(col), c)
    return np.stack([rb.column(k).to_numpy() for k in range(rb.num_columns)], axis=1)


def stream(path, n, c, batch_rows=4096):
    """How pipeline.store.iter_split reads: buffered batches, zero-copy views, none kept."""
    pf = pq.ParquetFile(path, buffer_size=8 << 20, pre_buffer=False)
    rows = 0
    for rb in pf.iter_batches(batch_rows):
        rows += batch_view(rb, c).shape[0]
    assert rows == n


LAYOUTS = {"fsl": (fsl_table, fsl_read), "cols": (cols_table, cols_read), "blob": (blob_table, blob_read)}


_PEAK = (
    "import sys, pyarrow.parquet as pq\n"
    "def hwm():\n"
    "    return int([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])\n"
    "b = hwm(); t = pq.read_table(sys.argv[1]); print((hwm() - b) / 1024)\n"
)


def peak_read_mb(path: str) -> float:
    """Extra peak RSS of a fresh process doing pq.read_table(path) (Linux VmHWM)."""
    if not os.path.exists("/proc/self/status"):
        return float("nan")
    out = subprocess.run([sys.executable, "-c", _PEAK, path], capture_output=True, text=True,
                         check=True).stdout
    return float(out.split()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--classes", type=int, default=1_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--layouts", default="fsl,cols,blob")
    args = ap.parse_args(argv)
    n, c = args.rows, args.classes
    x = (np.random.default_rng(0).standard_normal((n, c), dtype=np.float32) * 3).astype(np.float32)
    tmp = tempfile.mkdtemp(prefix="gla-bench-layout-")
    print(f"logits {n} x {c} float32 = {x.nbytes / 1e6:.0f} MB; best of {args.repeat}; "
          f"pyarrow {pa.__version__}, {os.cpu_count()} cpu")
    print(f"{'layout':<6} {'compression':<11} {'write s':>8} {'read s':>8} {'MB/s read':>9} "
          f"{'stream s':>8} {'file MB':>8} {'read_table peak MB':>18}")
    try:
        for name in args.layouts.split(","):
            make, read = LAYOUTS[name]
            table = make(x)
            for comp in ("snappy", "none"):
                path = os.path.join(tmp, f"{name}-{comp}.parquet")
                w, _ = best(lambda table=table, path=path, comp=comp: pq.write_table(
                    table, path, compression=comp, use_dictionary=False, row_group_size=65536),
                    args.repeat)
                r, got = best(lambda path=path, read=read: read(path, n, c), args.repeat)
                assert np.array_equal(got, x), f"{name} round trip differs"
                st, _ = best(lambda path=path: stream(path, n, c), args.repeat)
                print(f"{name:<6} {comp:<11} {w:8.3f} {r:8.3f} {x.nbytes / 1e6 / r:9.0f} "
                      f"{st:8.3f} {os.path.getsize(path) / 1e6:8.0f} {peak_read_mb(path):18.0f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("command: " + " ".join([sys.executable, *sys.argv]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
