"""The result tables of a store: results/{summary,per_class,priors,calibration}.parquet.

This module names them and the columns each must carry (DESIGN.md's contract; the
tables may carry more). They are written by ``pipeline.incremental.combine`` from the
per-cell caches, all or nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

from gla.pipeline.store import Store

COLUMNS: dict[str, tuple[str, ...]] = {
    "summary": (
        "model", "dataset", "method", "split", "n", "accuracy", "balanced_accuracy", "nll",
        "ece", "acc_head", "acc_medium", "acc_tail",
    ),
    "per_class": (
        "model", "dataset", "method", "class_index", "class_name", "n", "accuracy",
        "prior_pretrain", "prior_downstream", "group",
    ),
    "priors": ("model", "dataset", "estimator", "class_index", "class_name", "prior"),
}
# The three tables of the contract, then the reliability bins behind the report's diagrams.
TABLES = (*COLUMNS, "calibration")


def results_paths(store: Store | str | os.PathLike) -> dict[str, Path]:
    store = store if isinstance(store, Store) else Store(store)
    return {name: store.results_dir / f"{name}.parquet" for name in TABLES}
