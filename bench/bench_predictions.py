"""Cost of keeping per-sample predictions for paired run diffs (issue 14.2).

One 50,000-sample × 1,000-class cell, six methods, one estimator: the predictions table
(sample hash, label, pred) as Parquet, the time to build and write it, and the time of a
full paired diff of two runs (McNemar per cell × method and per class, BH per class).

    .venv/bin/python bench/bench_predictions.py [--rows 50000] [--classes 1000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import polars as pl
from gla.analyze import diff, predictions

METHODS = ("zs", "zs_debiased", "ft", "ft_la", "ensemble", "gla")


def per_class(model, dataset, method, y, p, C):
    n = np.bincount(y, minlength=C)
    x = np.bincount(y[p == y], minlength=C)
    return pl.DataFrame({
        "model": [model] * C, "dataset": [dataset] * C, "estimator": ["gla"] * C, "method": [method] * C,
        "class_index": pl.Series(np.arange(C, dtype=np.int32)), "n": pl.Series(n.astype(np.int64)),
        "accuracy": pl.Series(x / np.maximum(n, 1)), "group": ["head"] * (C // 3) + ["tail"] * (C - C // 3),
    })  # fmt: skip


def run(rows: int, C: int, seed: int, ids, y, out: str) -> tuple[dict, float, float]:
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    h = predictions.sample_hashes(ids)
    t_hash = time.perf_counter() - t0
    preds, pcs, summ = [], [], []
    for m in METHODS:
        p = np.where(rng.random(rows) < 0.7, y, rng.integers(0, C, rows))
        preds.append(predictions.frame("vitb32", "big", "gla", m, h, y, p))
        pcs.append(per_class("vitb32", "big", m, y, p, C))
        summ.append({"model": "vitb32", "dataset": "big", "estimator": "gla", "method": m, "accuracy": float((p == y).mean())})
    t1 = time.perf_counter()
    table = pl.concat(preds)
    table.write_parquet(out)
    t_write = time.perf_counter() - t1
    return {"summary": pl.DataFrame(summ), "per_class": pl.concat(pcs), "predictions": table}, t_hash, t_write


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--classes", type=int, default=1000)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    ids = [f"images/train/{i:08d}.jpg" for i in range(a.rows)]
    y = rng.integers(0, a.classes, a.rows)
    with tempfile.TemporaryDirectory() as tmp:
        old, th, tw = run(a.rows, a.classes, 1, ids, y, os.path.join(tmp, "old.parquet"))
        new, _, _ = run(a.rows, a.classes, 2, ids, y, os.path.join(tmp, "new.parquet"))
        size = os.path.getsize(os.path.join(tmp, "old.parquet"))
        t0 = time.perf_counter()
        old["predictions"] = pl.read_parquet(os.path.join(tmp, "old.parquet"))
        new["predictions"] = pl.read_parquet(os.path.join(tmp, "new.parquet"))
        t_read = time.perf_counter() - t0
        t0 = time.perf_counter()
        d = diff.diff_runs(old, new)
        t_diff = time.perf_counter() - t0
    assert d.tests["paired"].all()
    n_rows = a.rows * len(METHODS)
    print(f"cell {a.rows:,} samples x {a.classes:,} classes, {len(METHODS)} methods, 1 estimator ({n_rows:,} rows)")
    print(f"predictions Parquet: {size / 1e6:.2f} MB ({size / n_rows:.2f} bytes/row); "
          f"logits of the same cell (zs+ft float32): {2 * a.rows * a.classes * 4 / 1e6:.0f} MB")
    print(f"hash sample ids {th:.3f} s, build + write {tw:.3f} s, read two runs {t_read:.3f} s, "
          f"paired diff {t_diff:.3f} s ({d.classes.height:,} class tests)")
    print(f"command: .venv/bin/python bench/bench_predictions.py --rows {a.rows} --classes {a.classes}")


if __name__ == "__main__":
    main()
