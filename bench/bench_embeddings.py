"""Storage cost of keeping image embeddings in a cell (issue 14.4: on by default).

Writes one part of N rows with zs + ft logits (C classes, float32) through the store's
own writer (extract.cellformat), with and without the normalised float16 image
embedding of width D, and prints the file sizes and write times.

    .venv/bin/python bench/bench_embeddings.py [--rows 10000] [--classes 1000] [--dim 512]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
from gla.extract import cellformat as cf


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=512, help="embedding width (ViT-B/32: 512, ViT-L/14: 768)")
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    n, c, d = a.rows, a.classes, a.dim
    ids = [f"img/{i:08d}.jpg" for i in range(n)]
    y = rng.integers(0, c, n)
    zs = rng.standard_normal((n, c), dtype=np.float32) * 3
    ft = rng.standard_normal((n, c), dtype=np.float32) * 3
    emb = rng.standard_normal((n, d), dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    sizes, times = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, e in (("without", None), ("with", emb)):
            t0 = time.perf_counter()
            table = cf.build_table(ids, "test", y, zs, ft, e)
            path = os.path.join(tmp, f"{name}.parquet")
            cf.atomic_write_table(path, table)
            times[name] = time.perf_counter() - t0
            sizes[name] = os.path.getsize(path)
    extra = sizes["with"] - sizes["without"]
    print(f"{n:,} rows, C = {c:,} (zs + ft float32), D = {d} (float16)")
    print(f"cell part without embeddings {sizes['without'] / 1e6:.1f} MB, with {sizes['with'] / 1e6:.1f} MB: "
          f"+{extra / 1e6:.1f} MB = +{100 * extra / sizes['without']:.1f} % ({extra / n:.0f} bytes/image)")
    print(f"build + write {times['without']:.2f} s without, {times['with']:.2f} s with")
    print(f"command: .venv/bin/python bench/bench_embeddings.py --rows {n} --classes {c} --dim {d}")


if __name__ == "__main__":
    main()
