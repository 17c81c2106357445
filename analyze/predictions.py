"""The compact per-sample predictions table that makes two runs pairable.

One row per eval sample × estimator × method: a stable 64-bit hash of the sample id,
the label and the predicted class. Correctness is ``pred == label``. Two runs whose
predictions cover the same (sample, label) pairs are compared sample by sample (exact
McNemar); see ``analyze.diff``. The hash is blake2b of the UTF-8 id, so it is the same
across library versions and machines (polars' own hash is not promised to be).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np
import polars as pl

KEYS = ("model", "dataset", "estimator", "method")
SCHEMA = {
    "model": pl.String, "dataset": pl.String, "estimator": pl.String, "method": pl.String,
    "sample_hash": pl.UInt64, "label": pl.Int32, "pred": pl.Int32,
}  # fmt: skip


def sample_hashes(sample_ids: Iterable[str]) -> np.ndarray:
    """uint64 blake2b-64 of each sample id (stable across runs, versions and machines)."""
    digest = b"".join(hashlib.blake2b(str(s).encode(), digest_size=8).digest() for s in sample_ids)
    return np.frombuffer(digest, dtype="<u8").copy()


def empty() -> pl.DataFrame:
    return pl.DataFrame(schema=SCHEMA)


def frame(model: str, dataset: str, estimator: str, method: str, hashes, labels, preds) -> pl.DataFrame:
    """The predictions of one cell × estimator × method (arrays of equal length)."""
    h = np.asarray(hashes, dtype=np.uint64)
    y = np.asarray(labels)
    p = np.asarray(preds)
    if y.shape != h.shape or p.shape != h.shape:
        raise ValueError(f"hashes {h.shape}, labels {y.shape} and preds {p.shape} differ in length")
    cell = {"model": model, "dataset": dataset, "estimator": estimator, "method": method}
    df = pl.DataFrame({
        "sample_hash": pl.Series(h, dtype=pl.UInt64),
        "label": pl.Series(y.astype(np.int32, copy=False)),
        "pred": pl.Series(p.astype(np.int32, copy=False)),
    })  # fmt: skip
    return df.with_columns(pl.lit(v, dtype=pl.String).alias(k) for k, v in cell.items()).select(list(SCHEMA))
