"""What changed between two runs' result tables, and whether the change is real.

Tables in, tables out (polars, no I/O). A run is a ``{table name: DataFrame}`` with at
least ``summary`` and ``per_class``; ``provenance`` and ``predictions`` (see
``analyze.predictions``) are used when present. :func:`diff_runs` returns:

- ``cells``: every model × dataset with ``status`` added / removed / common;
- ``metrics``: old, new and delta of every summary metric per cell × estimator × method;
- ``tests``: accuracy and each group accuracy (``acc_head`` … ``acc_few``) tested old
  against new. When both runs scored the same samples with the same labels (their
  predictions tables cover the same sample hashes) the test is paired: exact McNemar
  and the Bonett–Price interval. Otherwise it is unpaired: Fisher's exact test and
  Newcombe's interval, from the per-class counts. A group is the new run's class set
  (head/medium/tail by π_p, many/medium/few by training count), for both runs, so the
  test compares the same classes;
- ``classes``: the same test for every class, with Benjamini–Hochberg q-values across
  the classes of each cell × estimator × method and ``regression``/``improvement``
  flags at the given FDR;
- ``provenance``: every provenance field whose value differs (templates, checkpoints,
  estimator options, code, data), which is what explains a delta.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import polars as pl
from gla.analyze import significance as sig

CELL = ("model", "dataset")
KEYS = ("model", "dataset", "estimator", "method")
# Accuracy-type summary metrics with an exact test: metric -> (per_class column, label).
TESTABLE: dict[str, tuple[str, str] | None] = {
    "accuracy": None,
    "acc_head": ("group", "head"),
    "acc_medium": ("group", "medium"),
    "acc_tail": ("group", "tail"),
    "acc_many": ("count_group", "many"),
    "acc_medium_shot": ("count_group", "medium"),
    "acc_few": ("count_group", "few"),
}
_NOT_METRICS = {*KEYS, "split", "target_estimator"}
_COUNTS = ("n_old", "x_old", "n_new", "x_new", "n_better", "n_worse")


@dataclass
class RunDiff:
    cells: pl.DataFrame
    metrics: pl.DataFrame
    tests: pl.DataFrame
    classes: pl.DataFrame
    provenance: pl.DataFrame

    def tables(self) -> dict[str, pl.DataFrame]:
        return {k: getattr(self, k) for k in ("cells", "metrics", "tests", "classes", "provenance")}


def cell_status(old_summary: pl.DataFrame, new_summary: pl.DataFrame) -> pl.DataFrame:
    o = old_summary.select(CELL).unique().with_columns(pl.lit(True).alias("_o"))
    n = new_summary.select(CELL).unique().with_columns(pl.lit(True).alias("_n"))
    j = o.join(n, on=CELL, how="full", coalesce=True)
    status = (
        pl.when(pl.col("_o").is_null()).then(pl.lit("added"))
        .when(pl.col("_n").is_null()).then(pl.lit("removed"))
        .otherwise(pl.lit("common"))
    )  # fmt: skip
    return j.select(*CELL, status.alias("status")).sort(CELL)


def _keys(a: pl.DataFrame, b: pl.DataFrame) -> list[str]:
    return [k for k in KEYS if k in a.columns and k in b.columns]


def metric_deltas(old_summary: pl.DataFrame, new_summary: pl.DataFrame) -> pl.DataFrame:
    """Long table: keys, metric, old, new, delta for every numeric summary metric
    (standard errors and interval ends left out) on rows present in both runs."""
    keys = _keys(old_summary, new_summary)

    def metrics(df: pl.DataFrame) -> list[str]:
        return [
            c for c, t in df.schema.items()
            if c not in _NOT_METRICS and t.is_numeric() and not c.endswith(("_se", "_ci_low", "_ci_high"))
        ]  # fmt: skip

    cols = [c for c in metrics(new_summary) if c in metrics(old_summary)]
    if not cols:
        return pl.DataFrame(schema={**{k: pl.String for k in keys}, "metric": pl.String,
                                    "old": pl.Float64, "new": pl.Float64, "delta": pl.Float64})

    def long(df: pl.DataFrame, name: str) -> pl.DataFrame:
        df = df.select(*keys, *(pl.col(c).cast(pl.Float64) for c in cols))
        return df.unpivot(index=keys, on=cols, variable_name="metric", value_name=name)

    j = long(old_summary, "old").join(long(new_summary, "new"), on=[*keys, "metric"], how="inner")
    return j.with_columns((pl.col("new") - pl.col("old")).alias("delta")).sort([*keys, "metric"])


def _with_estimator(per_class: pl.DataFrame, summary: pl.DataFrame) -> pl.DataFrame:
    """per_class keyed by estimator too (older tables name it in summary only)."""
    if "estimator" in per_class.columns or "estimator" not in summary.columns:
        return per_class
    est = summary.select("model", "dataset", "method", "estimator").unique()
    return per_class.join(est, on=["model", "dataset", "method"], how="left")


def _class_counts_unpaired(old_pc: pl.DataFrame, new_pc: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    def side(df: pl.DataFrame, s: str) -> pl.DataFrame:
        n = pl.col("n").cast(pl.Int64)
        x = (pl.col("accuracy").fill_null(0.0) * n).round(0).cast(pl.Int64)
        return df.select(*keys, "class_index", n.alias(f"n_{s}"), x.alias(f"x_{s}"))

    groups = [c for c in ("class_name", "group", "count_group") if c in new_pc.columns]
    labels = new_pc.select(*keys, "class_index", *groups)
    return side(old_pc, "old").join(side(new_pc, "new"), on=[*keys, "class_index"], how="inner").join(
        labels, on=[*keys, "class_index"], how="left"
    )


def _paired_counts(old_pred: pl.DataFrame, new_pred: pl.DataFrame, keys: list[str]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(per class counts, pairable keys): the cell × estimator × method rows whose two
    prediction sets cover the same (sample, label) pairs; the others are not pairable."""

    def side(df: pl.DataFrame) -> pl.DataFrame:
        return df.select(*keys, "sample_hash", "label", (pl.col("pred") == pl.col("label")).alias("ok"))

    o, n = side(old_pred), side(new_pred)
    m = o.join(n, on=[*keys, "sample_hash"], how="inner", suffix="_new")
    same = m.filter(pl.col("label") == pl.col("label_new")).group_by(keys).len("n_match")
    pairable = (
        o.group_by(keys).len("n_o").join(n.group_by(keys).len("n_n"), on=keys)
        .join(same, on=keys)
        .filter((pl.col("n_o") == pl.col("n_n")) & (pl.col("n_o") == pl.col("n_match")))
        .select(keys)
    )  # fmt: skip
    ok, okn = pl.col("ok"), pl.col("ok_new")
    return (
        m.join(pairable, on=keys, how="semi")
        .group_by([*keys, "label"])
        .agg(
            pl.len().cast(pl.Int64).alias("n"),
            ok.sum().cast(pl.Int64).alias("x_old"),
            okn.sum().cast(pl.Int64).alias("x_new"),
            (okn & ~ok).sum().cast(pl.Int64).alias("n_better"),
            (ok & ~okn).sum().cast(pl.Int64).alias("n_worse"),
        )
        .rename({"label": "class_index"})
        .with_columns(pl.col("class_index").cast(pl.Int32)),
        pairable,
    )


def class_counts(old: dict[str, pl.DataFrame], new: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """keys × class_index: n and correct counts in each run, paired discordant counts
    (null when unpaired), ``paired``, and the new run's class name and groups."""
    old_pc = _with_estimator(old["per_class"], old["summary"])
    new_pc = _with_estimator(new["per_class"], new["summary"])
    keys = _keys(old_pc, new_pc)
    out = _class_counts_unpaired(old_pc, new_pc, keys).with_columns(
        pl.col("class_index").cast(pl.Int32),
        pl.lit(None, dtype=pl.Int64).alias("n_better"),
        pl.lit(None, dtype=pl.Int64).alias("n_worse"),
        pl.lit(False).alias("paired"),
    )
    op, np_ = old.get("predictions"), new.get("predictions")
    if op is None or np_ is None or not op.height or not np_.height:
        return out
    pk = _keys(op, np_)
    if pk != keys:
        return out
    counts, pairable = _paired_counts(op, np_, keys)
    flagged = out.join(pairable.with_columns(pl.lit(True).alias("_p")), on=keys, how="left")
    j = flagged.join(counts, on=[*keys, "class_index"], how="left", suffix="_p")
    p = pl.col("_p").fill_null(False)
    zero = pl.lit(0, dtype=pl.Int64)
    return j.select(
        *keys, "class_index", *(c for c in ("class_name", "group", "count_group") if c in j.columns),
        pl.when(p).then(pl.col("n").fill_null(zero)).otherwise(pl.col("n_old")).alias("n_old"),
        pl.when(p).then(pl.col("x_old_p").fill_null(zero)).otherwise(pl.col("x_old")).alias("x_old"),
        pl.when(p).then(pl.col("n").fill_null(zero)).otherwise(pl.col("n_new")).alias("n_new"),
        pl.when(p).then(pl.col("x_new_p").fill_null(zero)).otherwise(pl.col("x_new")).alias("x_new"),
        pl.when(p).then(pl.col("n_better_p").fill_null(zero)).alias("n_better"),
        pl.when(p).then(pl.col("n_worse_p").fill_null(zero)).alias("n_worse"),
        p.alias("paired"),
    )


def _test_row(r: dict, level: float) -> dict:
    n_o, x_o, n_n, x_n = r["n_old"], r["x_old"], r["n_new"], r["x_new"]
    if not n_o or not n_n:
        return {"acc_old": math.nan, "acc_new": math.nan, "delta": math.nan, "ci_low": math.nan,
                "ci_high": math.nan, "p_value": math.nan, "test": "none"}
    a_o, a_n = x_o / n_o, x_n / n_n
    if r["paired"]:
        lo, hi = sig.paired_interval(n_n, r["n_better"], r["n_worse"], level)
        p, test = sig.mcnemar_exact(r["n_better"], r["n_worse"]), "mcnemar"
    else:
        lo, hi = sig.unpaired_interval(x_n, n_n, x_o, n_o, level)
        p, test = sig.fisher_exact(x_n, n_n, x_o, n_o), "fisher"
    return {"acc_old": a_o, "acc_new": a_n, "delta": a_n - a_o, "ci_low": lo, "ci_high": hi,
            "p_value": p, "test": test}


def with_tests(counts: pl.DataFrame, level: float = 0.95) -> pl.DataFrame:
    """Each row of counts with acc_old, acc_new, delta, its interval, p_value and test."""
    rows = [_test_row(r, level) for r in counts.select(*_COUNTS, "paired").iter_rows(named=True)]
    res = pl.DataFrame(rows, schema={"acc_old": pl.Float64, "acc_new": pl.Float64, "delta": pl.Float64,
                                     "ci_low": pl.Float64, "ci_high": pl.Float64,
                                     "p_value": pl.Float64, "test": pl.String})
    return pl.concat([counts, res], how="horizontal").with_columns(pl.col(pl.Float64).fill_nan(None))


def accuracy_tests(counts: pl.DataFrame, level: float = 0.95) -> pl.DataFrame:
    """keys × metric (accuracy and every group accuracy the new run defines)."""
    keys = [k for k in KEYS if k in counts.columns]
    parts = []
    for metric, sel in TESTABLE.items():
        if sel is not None and sel[0] not in counts.columns:
            continue
        sub = counts if sel is None else counts.filter(pl.col(sel[0]) == sel[1])
        if not sub.height:
            continue
        parts.append(
            sub.group_by(keys).agg(
                *(pl.col(c).sum() for c in _COUNTS[:4]),
                *(pl.col(c).sum().alias(c) for c in _COUNTS[4:]),
                pl.col("paired").all(),
            ).with_columns(pl.lit(metric).alias("metric"))
        )
    if not parts:
        return with_tests(counts.head(0).select(*keys, *_COUNTS, "paired").with_columns(pl.lit("").alias("metric")))
    df = pl.concat(parts).select(*keys, "metric", *_COUNTS, "paired").sort([*keys, "metric"])
    df = df.with_columns(*(pl.when(pl.col("paired")).then(pl.col(c)).alias(c) for c in _COUNTS[4:]))
    return with_tests(df, level)


def class_changes(counts: pl.DataFrame, fdr: float = 0.05, level: float = 0.95) -> pl.DataFrame:
    """Per class tests with BH q-values across the classes of each keys group, and
    ``regression`` / ``improvement`` flags (q <= fdr, by the sign of delta)."""
    keys = [k for k in KEYS if k in counts.columns]
    df = with_tests(counts.sort([*keys, "class_index"]), level)
    gid = df.select(pl.struct(keys).rank("dense").alias("g"))["g"].to_numpy()
    p = df["p_value"].fill_null(np.nan).to_numpy()
    q = np.full(p.shape, np.nan)
    for g in np.unique(gid):
        sel = gid == g
        q[sel] = sig.bh_adjust(p[sel])
    df = df.with_columns(pl.Series("q_value", q, nan_to_null=True))
    hit = pl.col("q_value") <= fdr
    return df.with_columns(
        (hit & (pl.col("delta") < 0)).fill_null(False).alias("regression"),
        (hit & (pl.col("delta") > 0)).fill_null(False).alias("improvement"),
    )


def provenance_changes(old_prov: pl.DataFrame | None, new_prov: pl.DataFrame | None) -> pl.DataFrame:
    """model, dataset, estimator, field, old, new: every differing provenance value."""
    schema = {"model": pl.String, "dataset": pl.String, "estimator": pl.String,
              "field": pl.String, "old": pl.String, "new": pl.String}
    if old_prov is None or new_prov is None or not old_prov.height or not new_prov.height:
        return pl.DataFrame(schema=schema)
    keys = [k for k in ("model", "dataset", "estimator") if k in old_prov.columns and k in new_prov.columns]
    fields = [c for c in new_prov.columns if c in old_prov.columns and c not in keys]
    if not fields:
        return pl.DataFrame(schema=schema)

    def long(df: pl.DataFrame, name: str) -> pl.DataFrame:
        df = df.select(*keys, *(pl.col(c).cast(pl.String) for c in fields))
        return df.unpivot(index=keys, on=fields, variable_name="field", value_name=name)

    j = long(old_prov, "old").join(long(new_prov, "new"), on=[*keys, "field"], how="inner")
    j = j.filter(pl.col("old").ne_missing(pl.col("new")))
    for k in schema:
        if k not in j.columns:
            j = j.with_columns(pl.lit(None, dtype=pl.String).alias(k))
    return j.select(list(schema)).sort(["model", "dataset", "estimator", "field"], nulls_last=True)


def diff_runs(old: dict[str, pl.DataFrame], new: dict[str, pl.DataFrame], *, fdr: float = 0.05,
              level: float = 0.95) -> RunDiff:
    """Every difference between two runs' tables (see the module docstring)."""
    counts = class_counts(old, new)
    return RunDiff(
        cells=cell_status(old["summary"], new["summary"]),
        metrics=metric_deltas(old["summary"], new["summary"]),
        tests=accuracy_tests(counts, level),
        classes=class_changes(counts, fdr, level),
        provenance=provenance_changes(old.get("provenance"), new.get("provenance")),
    )
