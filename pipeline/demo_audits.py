"""The demo's planted audits: a deployment stream with a known, shifting label distribution,
and an eval copy with a few percent of wrong labels, derived from each cell's test split.

``plant(store)`` writes, per cell, the splits ``deploy-1..3`` (rows of the test split drawn
in the proportions ``TARGETS[w]``, one window each) and ``audit`` (the test split with
``NOISE`` of its labels flipped). They are derived deterministically from the test split
and rewritten only when that split changes, so a no-change rerun does nothing. The truth
stays checkable: each window's label share is recorded in ``target_priors.label_share``,
and a flipped row is one whose ``audit`` label differs from its ``test`` label.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from gla.analyze import synthetic
from gla.extract import cellformat as cf
from gla.pipeline.config import Config
from gla.pipeline.distshift import read_shift
from gla.pipeline.store import Store

WINDOWS = ("deploy-1", "deploy-2", "deploy-3")
AUDIT = "audit"
CLEAN = "clean"  # the other half of the test split, labels intact: the p-values' reference
SOURCE = "test"
NOISE = 0.04  # fraction of audit labels flipped
WINDOW_ROWS = 600
_SEED = 2024


def targets(num_classes: int) -> list[np.ndarray]:
    """The planted π_t of each window: a long tail (Zipf 0.7) whose head moves each window."""
    return [synthetic.zipf_prior(num_classes, 0.7, _SEED + w) for w in range(len(WINDOWS))]


def _derived_from(cell: Path, split: str) -> str | None:
    m = cf.read_manifest(cell, split)
    return None if m is None else m.get("derived_from")


def _write(cell: Path, split: str, table: pa.Table, source_id: str) -> None:
    cf.write_split(cell, split, [table], extra={"derived_from": source_id})


def _window_rows(labels: np.ndarray, prior: np.ndarray, n: int, rng) -> np.ndarray:
    """Row indices with exactly label_counts(prior, n) rows of each class (no repeats)."""
    counts = synthetic.label_counts(prior, n)
    rows = []
    for k, c in enumerate(counts):
        pool = np.flatnonzero(labels == k)
        rows.append(rng.choice(pool, min(int(c), pool.size), replace=False))
    return rng.permutation(np.concatenate(rows))


def plant_cell(store: Store, model: str, dataset: str) -> bool:
    """Write the derived splits of one cell if missing or stale; True when it wrote any."""
    cell = store.cell_path(model, dataset)
    src = cf.read_manifest(cell, SOURCE)
    if src is None:
        return False
    source_id = src["write_id"]
    if read_shift(store.root, dataset) is not None:  # a shifted set: scored with its source's priors
        return False
    if all(_derived_from(cell, s) == source_id for s in (*WINDOWS, AUDIT, CLEAN)):
        return False
    info = store.split_info(model, dataset, SOURCE)
    table = pa.concat_tables(pq.read_table(f) for f in info.files)
    keep = [c for c in table.column_names if not cf.is_extra_logit_column(c)]
    table = table.select(keep).replace_schema_metadata(table.schema.metadata)
    labels = table.column("label").to_numpy()
    rng = np.random.default_rng(_SEED)
    C = info.num_classes
    for split, prior in zip(WINDOWS, targets(C), strict=True):
        rows = _window_rows(labels, prior, WINDOW_ROWS, rng)
        t = table.take(pa.array(rows))
        t = _renamed(t, split)
        _write(cell, split, t, source_id)
    order = rng.permutation(labels.size)
    half = labels.size // 2
    _write(cell, CLEAN, _renamed(table.take(pa.array(order[:half])), CLEAN), source_id)
    t = table.take(pa.array(order[half:]))
    noisy, _ = synthetic.flip_labels(labels[order[half:]], NOISE, C, seed=_SEED)
    t = t.set_column(t.column_names.index("label"), "label", pa.array(noisy.astype(np.int32)))
    _write(cell, AUDIT, _renamed(t, AUDIT), source_id)
    return True


def _renamed(t: pa.Table, split: str) -> pa.Table:
    ids = pa.array([f"{split}/{s}" for s in t.column("sample_id").to_pylist()], pa.string())
    t = t.set_column(t.column_names.index("sample_id"), "sample_id", ids)
    return t.set_column(t.column_names.index("split"), "split", pa.array([split] * t.num_rows, pa.string()))


def planted(store: str | Path) -> bool:
    """Every cell's derived splits exist and follow its current test split."""
    s = Store(store)
    if not s.logits_dir.exists() or not s.cells():
        return False
    for m, d in s.cells():
        cell = s.cell_path(m, d)
        src = cf.read_manifest(cell, SOURCE)
        if read_shift(s.root, d) is not None:
            continue
        if src is None or any(_derived_from(cell, x) != src["write_id"] for x in (*WINDOWS, AUDIT, CLEAN)):
            return False
    return True


def with_audits(config: Config) -> Config:
    """The demo config with the audits on: π_t tracked over the deploy windows (em, bbse)
    and label issues flagged in the audit split at FDR 0.1, against the clean half."""
    c = config.model_copy(deep=True)
    c.analysis.target_estimators = ["em", "bbse"]
    c.analysis.window_splits = list(WINDOWS)
    c.analysis.label_issues = True
    c.analysis.label_issue_split = AUDIT
    c.analysis.clean_split = CLEAN
    c.analysis.fdr = 0.1
    return c


def plant(store: str | Path) -> bool:
    """Derived splits for every cell of the store; True when any was (re)written."""
    s = Store(store)
    return any([plant_cell(s, m, d) for m, d in s.cells()])


def detection(results: Path, store: str | Path) -> pl.DataFrame:
    """Precision and recall of the label-issue flags against the planted flips, per cell."""
    s = Store(store)
    issues = pl.read_parquet(results / "label_issues.parquet")
    rows = []
    for m, d in s.cells():
        if read_shift(s.root, d) is not None or cf.read_manifest(s.cell_path(m, d), AUDIT) is None:
            continue
        test = _labels(s, m, d, SOURCE).rename({"label": "true"})
        audit = _labels(s, m, d, AUDIT).with_columns(pl.col("sample_id").str.strip_prefix(f"{AUDIT}/"))
        j = audit.join(test, on="sample_id")
        planted = set(j.filter(pl.col("label") != pl.col("true"))["sample_id"].to_list())
        cell = issues.filter((pl.col("model") == m) & (pl.col("dataset") == d))
        for col in ("flagged", "cl_issue"):
            got = {x.removeprefix(f"{AUDIT}/") for x in cell.filter(pl.col(col))["sample_id"].to_list()}
            hit = len(got & planted)
            rows.append({"dataset": d, "detector": "BH" if col == "flagged" else "confident learning",
                         "planted": len(planted), "flagged": len(got),
                         "precision": hit / len(got) if got else None, "recall": hit / len(planted)})
    return pl.DataFrame(rows)


def _labels(s: Store, model: str, dataset: str, split: str) -> pl.DataFrame:
    info = s.split_info(model, dataset, split)
    t = pa.concat_tables(pq.read_table(f, columns=["sample_id", "label"]) for f in info.files)
    return pl.from_arrow(t)


def target_agreement(results: Path) -> pl.DataFrame:
    """Per dataset, target estimator and window: L1 distance of π̂_t to the window's true
    label share, and of the uniform prior (no tracking) to it."""
    p = pl.read_parquet(results / "target_priors.parquet").filter(pl.col("window").is_not_null())
    C = p.group_by("dataset").agg(pl.col("class_index").n_unique().alias("C"))
    return (
        p.join(C, on="dataset")
        .group_by("dataset", "target_estimator", "window")
        .agg(l1=(pl.col("prior") - pl.col("label_share")).abs().sum(),
             l1_uniform=(1.0 / pl.col("C") - pl.col("label_share")).abs().sum())
        .sort("dataset", "target_estimator", "window")
    )
