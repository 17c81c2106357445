"""The result tables of a store: results/{summary,per_class,priors}.parquet.

``write_results`` replaces the rows of the recomputed cells and keeps every other cell's
rows. All three tables are validated and written to temporary files first; only then are
they renamed into place, so a failure leaves the existing results untouched.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from pipeline.errors import UserError
from pipeline.store import Store

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
TABLES = tuple(COLUMNS)
CELL_KEYS = ("model", "dataset")


def results_paths(store: Store | str | os.PathLike) -> dict[str, Path]:
    store = store if isinstance(store, Store) else Store(store)
    return {name: store.results_dir / f"{name}.parquet" for name in TABLES}


def validate_table(name: str, df: pl.DataFrame) -> None:
    """Raise ValueError (a programming error, not user input) if a table breaks the contract."""
    missing = [c for c in COLUMNS[name] if c not in df.columns]
    if missing:
        raise ValueError(f"results table {name}: columns missing: {', '.join(missing)}")
    for c in CELL_KEYS:
        if df[c].null_count():
            raise ValueError(f"results table {name}: column {c} has nulls")


def read_results(store: Store | str | os.PathLike) -> dict[str, pl.DataFrame | None]:
    out = {}
    for name, path in results_paths(store).items():
        if not path.exists():
            out[name] = None
            continue
        try:
            out[name] = pl.read_parquet(path)
        except Exception as e:  # noqa: BLE001 - any read failure is the same user problem
            raise UserError(f"{path}: unreadable results table ({type(e).__name__}); "
                            "remove it to start afresh") from None
    return out


def merge_tables(old: pl.DataFrame | None, new: pl.DataFrame) -> pl.DataFrame:
    """Old rows of cells not in ``new``, plus ``new``; sorted by cell (stable inside a cell)."""
    if old is None or old.height == 0:
        merged = new
    else:
        cells = new.select(CELL_KEYS).unique()
        kept = old.join(cells, on=list(CELL_KEYS), how="anti")
        merged = pl.concat([kept, new], how="diagonal_relaxed")
    return merged.sort(list(CELL_KEYS), maintain_order=True)


def write_results(store: Store | str | os.PathLike, results: Sequence) -> dict[str, Path]:
    """Merge the ``CellResult``s into the three tables and write them (all or nothing)."""
    paths = results_paths(store)
    if not results:
        return paths
    new = {
        name: pl.concat([getattr(r, name) for r in results], how="diagonal_relaxed")
        for name in TABLES
    }
    for name, df in new.items():
        validate_table(name, df)
    old = read_results(store)
    merged = {name: merge_tables(old[name], new[name]) for name in TABLES}
    folder = next(iter(paths.values())).parent
    folder.mkdir(parents=True, exist_ok=True)
    temps: dict[str, str] = {}
    try:
        for name, df in merged.items():
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".parquet.tmp", dir=folder)
            os.close(fd)
            temps[name] = tmp
            df.write_parquet(tmp)
        for name, tmp in temps.items():
            os.replace(tmp, paths[name])
    finally:
        for tmp in temps.values():
            Path(tmp).unlink(missing_ok=True)
    _invalidate_combined_marker(folder)
    return paths


def _invalidate_combined_marker(results_dir: Path) -> None:
    """The tables no longer match what ``gla run`` last combined from its per-cell caches:
    drop its marker so the next ``gla run`` rebuilds them instead of trusting them."""
    try:
        from pipeline.incremental import COMBINED_FILE
    except ImportError:  # pragma: no cover - incremental is part of the distribution
        COMBINED_FILE = "_combined.json"
    (results_dir / "cells" / COMBINED_FILE).unlink(missing_ok=True)
