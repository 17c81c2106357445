"""Pruning cells that are no longer in the config, as a run of the history.

``cells_not_in_config`` lists the cells a store holds (logits, or rows of the latest run)
that a config no longer names; the report flags them. ``prune_cells`` publishes a new
run without their rows (the previous run keeps them, so reading it undoes the prune)
and removes their per-cell analysis caches, so that a later ``gla run`` does not bring
them back as "cells not selected keep their last results". Logits are kept unless
asked (``logits=True``): re-extracting costs GPU time, and without them the pruned
cells' results stay readable in the earlier runs only.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
from gla.extract import cellformat as cf
from gla.pipeline import publication
from gla.pipeline.incremental import cache_dir
from gla.pipeline.lock import store_lock
from gla.pipeline.store import Store

Cell = tuple[str, str]


def published_cells(store: str | Path, run: publication.Run | None = None) -> list[Cell]:
    """The cells of a run (default: the latest), from its commit record."""
    run = run or publication.latest(store)
    if run is None:
        return []
    return sorted(tuple(name.split("/", 1)) for name in (run.record.get("cell_keys") or {}))


def store_cells(store: str | Path) -> list[Cell]:
    """Every cell the store holds: sealed logits or rows in the latest run."""
    return sorted({*Store(store).cells(), *published_cells(store)})


def cells_not_in_config(store: str | Path, wanted: Iterable[Cell]) -> list[Cell]:
    """Cells present in the store (logits or the latest run) that ``wanted`` (the
    config's model × dataset pairs, e.g. ``[(m.name, d.name) for m, d in config.cells()]``)
    does not name, sorted. What ``gla prune`` removes and the report flags."""
    keep = set(wanted)
    return [c for c in store_cells(store) if c not in keep]


@dataclass
class PruneResult:
    cells: list[Cell] = field(default_factory=list)  # the cells pruned
    run_id: str | None = None  # the new run (None: nothing published)
    logits_removed: list[Cell] = field(default_factory=list)


def _without(df: pl.LazyFrame, cells: list[Cell]) -> pl.DataFrame:
    names = df.collect_schema().names()
    if "model" not in names or "dataset" not in names:
        return df.collect()
    gone = pl.lit(False)
    for m, d in cells:
        gone = gone | ((pl.col("model") == m) & (pl.col("dataset") == d))
    return df.filter(~gone).collect()


def _pruned_tables(store: Path, run: publication.Run, cells: list[Cell]) -> dict[str, pl.DataFrame]:
    return {name: _without(pl.scan_parquet(publication.table_path(store, name, run)), cells)
            for name in run.tables}


def prune_cells(store: str | Path, cells: list[Cell], *, config_hash: str | None = None,
                command: str = "", logits: bool = False, keep_runs: int | None = None,
                keep_days: float | None = None) -> PruneResult:
    """Publish the latest run without ``cells`` (a run of kind "prune"), then remove
    their caches (and logits with ``logits=True``). Holds the store lock."""
    store = Path(store)
    out = PruneResult(cells=sorted(cells))
    with store_lock(store, "gla prune"):
        parent = publication.latest(store)
        in_run = [c for c in out.cells if c in set(published_cells(store, parent))]
        if parent is not None and in_run:
            keys = {k: v for k, v in (parent.record.get("cell_keys") or {}).items()
                    if tuple(k.split("/", 1)) not in set(in_run)}
            meta = {"kind": "prune", "command": command, "config_hash": config_hash, "code_version": parent.record.get("code_version"),
                    "cells": {"added": [], "changed": [], "removed": [f"{m}/{d}" for m, d in in_run],
                              "kept": sorted(keys)},
                    "estimators": parent.record.get("estimators", []), "cell_keys": keys}
            run = publication.publish(store, _pruned_tables(store, parent, in_run), meta,
                                      keep_runs=keep_runs, keep_days=keep_days)
            out.run_id = run.id if run else None
        for m, d in out.cells:  # after the run: a crash before it leaves everything as it was
            shutil.rmtree(cache_dir(store, m, d), ignore_errors=True)
            cell = cf.cell_dir(store, m, d)
            if logits and cell.is_dir():
                (cell / cf.CELL_RECORD).unlink(missing_ok=True)  # first: the cell is gone for readers
                shutil.rmtree(cell)
                out.logits_removed.append((m, d))
    return out
