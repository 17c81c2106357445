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
from gla.analyze import schema

SCHEMA = schema.table("predictions").dtypes


def sample_hashes(sample_ids: Iterable[str]) -> np.ndarray:
    """uint64 blake2b-64 of each sample id (stable across runs, versions and machines)."""
    digest = b"".join(hashlib.blake2b(str(s).encode(), digest_size=8).digest() for s in sample_ids)
    return np.frombuffer(digest, dtype="<u8").copy()


def empty() -> pl.DataFrame:
    return schema.empty("predictions")


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


def cell_frame(model: str, dataset: str, estimator: str, sample_ids, labels, preds: dict) -> pl.DataFrame:
    """Every method's predictions of one cell (``preds``: method -> (N,) classes)."""
    return frame_from_hashes(model, dataset, estimator, sample_hashes(sample_ids), labels, preds)


def frame_from_hashes(model: str, dataset: str, estimator: str, h, labels, preds: dict) -> pl.DataFrame:
    frames = [frame(model, dataset, estimator, m, h, labels, p) for m, p in preds.items()]
    return pl.concat(frames) if frames else empty()


class Collector:
    """Predictions of a streamed eval split, batch by batch (thread-safe: one dict slot
    per batch), put back in batch order by :meth:`table`. Only hashes are kept."""

    def __init__(self) -> None:
        self._parts: dict = {}

    def add(self, order, sample_ids, labels, preds: dict) -> None:
        """``order``: sortable batch position; ``labels`` (N,) with −1 for rows evaluate
        skipped; ``preds``: method -> list of arrays (what ``analyze.cell.evaluate`` kept)."""
        y = np.asarray(labels)
        known = y >= 0
        ids = list(sample_ids) if sample_ids is not None else [None] * y.size
        if len(ids) != y.size:
            raise ValueError(f"{len(ids)} sample ids for {y.size} labels")
        h = sample_hashes(i for i, k in zip(ids, known, strict=True) if k)
        self._parts[order] = (h, y[known], {m: np.concatenate(v) for m, v in preds.items()})

    def table(self, model: str, dataset: str, estimator: str) -> pl.DataFrame:
        if not self._parts:
            return empty()
        parts = [self._parts[k] for k in sorted(self._parts)]
        methods = list(parts[0][2])
        return frame_from_hashes(
            model, dataset, estimator, np.concatenate([p[0] for p in parts]),
            np.concatenate([p[1] for p in parts]),
            {m: np.concatenate([p[2][m] for p in parts]) for m in methods},
        )
