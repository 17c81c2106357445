"""The store's result tables as the report reads them, and the numbers derived from them.

Reading is the only I/O here; everything else takes and returns polars frames, so each
derived number (the gain per cell, …) can be tested without a store.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
from gla.analyze import schema
from gla.pipeline import publication
from gla.pipeline.errors import UserError
from gla.pipeline.report.style import METHOD_ORDER, ordered_methods

# The tables the report reads: every table of the schema but the per-sample ones it never
# shows (reading them would cost memory in proportion to the eval sets). The contract
# tables must exist (a store without them has nothing to report); an optional table's
# section appears only when the table exists and has rows. Required columns come from
# the schema.
PER_SAMPLE = ("predictions",)
READ = tuple(n for n in schema.TABLES if n not in PER_SAMPLE)


class TableSet:
    """Tables by name (None for a table the store lacks), with the two every view has."""

    tables: dict[str, pl.DataFrame | None]

    def get(self, name: str) -> pl.DataFrame | None:
        """The table, or None when it is absent or has no rows (its section is left out)."""
        df = self.tables.get(name)
        return None if df is None or df.height == 0 else df

    @property
    def summary(self) -> pl.DataFrame:
        return self.tables["summary"]

    @property
    def per_class(self) -> pl.DataFrame:
        return self.tables["per_class"]


@dataclass
class ReportData(TableSet):
    store: Path
    tables: dict[str, pl.DataFrame | None] = field(default_factory=dict)

    @property
    def priors(self) -> pl.DataFrame:
        return self.tables["priors"]

    def cells(self) -> list[tuple[str, str]]:
        rows = self.summary.select("model", "dataset").unique().sort("model", "dataset")
        return [(r[0], r[1]) for r in rows.iter_rows()]

    def cell(self, name: str, model: str, dataset: str) -> pl.DataFrame | None:
        """The rows of one table for one cell (None when the table is absent)."""
        df = self.tables.get(name)
        if df is None:
            return None
        return df.filter((pl.col("model") == model) & (pl.col("dataset") == dataset))

    def view(self, model: str, dataset: str) -> CellView:
        """One cell's rows, the per-method tables cut to the cell's primary estimator."""
        summ = self.cell("summary", model, dataset)
        est = primary_estimator(summ)
        rows = {name: _of_estimator(self.cell(name, model, dataset), est) for name in self.tables if name != "priors"}
        return CellView(model, dataset, est, rows, self.cell("priors", model, dataset))


@dataclass
class CellView(TableSet):
    """What the report shows for one cell. ``tables`` holds every table read (None when
    the store lacks it); tables keyed by estimator hold the ``estimator`` rows only,
    except ``priors``, which keeps every estimator for comparing them."""

    model: str
    dataset: str
    estimator: str | None
    tables: dict[str, pl.DataFrame | None]
    priors: pl.DataFrame

    @property
    def methods(self) -> list[str]:
        return methods(self.summary)


def primary_estimator(summary: pl.DataFrame) -> str | None:
    """The estimator a cell's sections show when summary holds several: gla (the
    default) when present, else the first by name."""
    if "estimator" not in summary.columns:
        return None
    names = sorted(set(summary.get_column("estimator").drop_nulls().to_list()))
    return "gla" if "gla" in names else (names[0] if names else None)


def _of_estimator(df: pl.DataFrame | None, estimator: str | None) -> pl.DataFrame | None:
    if df is None or estimator is None or "estimator" not in df.columns:
        return df
    return df.filter(pl.col("estimator") == estimator)


def table_path(store: Path, name: str) -> Path | None:
    """The latest run's file of table ``name`` (verified); None when it has none."""
    return publication.table_path(store, name)


def load_tables(store: str | os.PathLike) -> ReportData:
    store = Path(store)
    run = publication.latest(store)
    if run is None:
        raise UserError(f"{store / 'results'}: no published run (run `gla analyze --store {store}` first)")
    frames: dict[str, pl.DataFrame | None] = {}
    for name in READ:
        path = publication.table_path(store, name, run)
        if path is None:
            if not schema.table(name).optional:
                raise UserError(f"{publication.record_path(store, run.id)}: run has no {name} table")
            frames[name] = None
            continue
        try:
            frames[name] = pl.read_parquet(path)
        except Exception as e:  # noqa: BLE001 - any read failure is a bad file
            raise UserError(f"{path}: unreadable Parquet ({e})") from None
        missing = [c for c in schema.required(name) if c not in frames[name].columns]
        if missing:
            raise UserError(f"{path}: column {missing[0]} is missing")
    unscored = frames.get("target_priors") is not None and frames["target_priors"].height > 0
    if frames["summary"].height == 0 and not unscored:
        raise UserError(f"{publication.table_path(store, 'summary', run)}: has no rows (no cell was analysed)")
    return ReportData(store=store, tables=frames)


def tables_digest(store: Path) -> hashlib._Hash:
    """sha256 over the checksums of every table the report reads (the report's input),
    as the latest run's commit record gives them."""
    h = hashlib.sha256()
    run = publication.latest(store)
    for name in READ:
        rec = run.tables.get(name) if run else None
        if rec:
            h.update(name.encode() + str(rec["sha256"]).encode())
    return h


def methods(df: pl.DataFrame) -> list[str]:
    return ordered_methods(df.get_column("method").unique().to_list())


def method_rank(df: pl.DataFrame) -> pl.DataFrame:
    """Rows sorted in METHOD_ORDER (unknown methods last)."""
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    rank = pl.col("method").replace_strict(order, default=len(order), return_dtype=pl.Int64)
    return df.with_columns(rank.alias("_o")).sort("_o", "method").drop("_o")


# The two gains the overview shows, each on its own colour scale: (column, method,
# baseline). gla − ft needs fine-tuned logits; zs_debiased − zs exists in every cell.
GAINS = (("gain_gla_ft", "gla", "ft"), ("gain_zs_debiased", "zs_debiased", "zs"))


def primary_rows(df: pl.DataFrame, summary: pl.DataFrame) -> pl.DataFrame:
    """``df`` cut to each cell's primary estimator (as :func:`primary_estimator` picks it)."""
    if "estimator" not in summary.columns or "estimator" not in df.columns:
        return df
    est = summary.group_by("model", "dataset").agg(
        pl.col("estimator").filter(pl.col("estimator") == "gla").first().fill_null(pl.col("estimator").min())
    )
    return df.join(est, on=["model", "dataset", "estimator"])


def gain_table(summary: pl.DataFrame, comparisons: pl.DataFrame | None = None) -> pl.DataFrame:
    """Per cell: accuracy of each method and two gains, as accuracy differences:
    ``gain_gla_ft`` = acc(gla) − acc(ft) (null without fine-tuned logits) and
    ``gain_zs_debiased`` = acc(zs_debiased) − acc(zs) (de-biasing the zero-shot model).
    With the comparisons table, each gain also gets its paired 95 % interval
    (``<gain>_ci_low``, ``<gain>_ci_high``)."""
    primary = primary_rows(summary, summary)
    wide = primary.pivot(on="method", index=["model", "dataset"], values="accuracy", aggregate_function="first")
    for m in METHOD_ORDER:
        if m not in wide.columns:
            wide = wide.with_columns(pl.lit(None, dtype=pl.Float64).alias(m))
    extra = sorted(c for c in wide.columns if c not in METHOD_ORDER and c not in ("model", "dataset"))
    out = wide.with_columns(
        (pl.col(method) - pl.col(baseline)).alias(col) for col, method, baseline in GAINS
    ).select("model", "dataset", *METHOD_ORDER, *extra, *(g[0] for g in GAINS))
    if comparisons is not None and comparisons.height:
        comp = primary_rows(comparisons, summary)
        for col, method, baseline in GAINS:
            ci = comp.filter((pl.col("method") == method) & (pl.col("baseline") == baseline)).select(
                "model", "dataset", pl.col("delta_ci_low").alias(f"{col}_ci_low"),
                pl.col("delta_ci_high").alias(f"{col}_ci_high")).unique(["model", "dataset"])
            out = out.join(ci, on=["model", "dataset"], how="left")
    return out.sort("model", "dataset")
