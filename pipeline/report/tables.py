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
from gla.extract import cellformat as cf
from gla.pipeline.errors import UserError
from gla.pipeline.report.style import METHOD_ORDER, ordered_methods

# The tables the report reads: every table of the schema. The contract tables must exist
# (a store without them has nothing to report); an optional table's section appears only
# when the table exists and has rows. Required columns come from the schema.
READ = tuple(schema.TABLES)


@dataclass
class ReportData:
    store: Path
    tables: dict[str, pl.DataFrame | None] = field(default_factory=dict)

    def get(self, name: str) -> pl.DataFrame | None:
        return self.tables.get(name)

    @property
    def summary(self) -> pl.DataFrame:
        return self.tables["summary"]

    @property
    def per_class(self) -> pl.DataFrame:
        return self.tables["per_class"]

    @property
    def priors(self) -> pl.DataFrame:
        return self.tables["priors"]

    @property
    def calibration(self) -> pl.DataFrame | None:
        return self.tables.get("calibration")

    def cells(self) -> list[tuple[str, str]]:
        rows = self.summary.select("model", "dataset").unique().sort("model", "dataset")
        return [(r[0], r[1]) for r in rows.iter_rows()]

    def cell(self, name: str, model: str, dataset: str) -> pl.DataFrame | None:
        """The rows of one table for one cell (None when the table is absent)."""
        df = self.tables.get(name)
        if df is None:
            return None
        return df.filter((pl.col("model") == model) & (pl.col("dataset") == dataset))


def table_path(store: Path, name: str) -> Path:
    return store / "results" / f"{name}.parquet"


def load_tables(store: str | os.PathLike) -> ReportData:
    store = Path(store)
    frames: dict[str, pl.DataFrame | None] = {}
    for name in READ:
        path = table_path(store, name)
        if not path.exists():
            if not schema.table(name).optional:
                raise UserError(f"{path}: not found (run `gla analyze --store {store}` first)")
            frames[name] = None
            continue
        try:
            frames[name] = pl.read_parquet(path)
        except Exception as e:  # noqa: BLE001 - any read failure is a bad file
            raise UserError(f"{path}: unreadable Parquet ({e})") from None
        missing = [c for c in schema.required(name) if c not in frames[name].columns]
        if missing:
            raise UserError(f"{path}: column {missing[0]} is missing")
    if frames["summary"].height == 0:
        raise UserError(f"{table_path(store, 'summary')}: has no rows (no cell was analysed)")
    return ReportData(store=store, tables=frames)


def tables_digest(store: Path) -> hashlib._Hash:
    """sha256 over the bytes of every table the report reads (the report's input)."""
    h = hashlib.sha256()
    for name in READ:
        p = table_path(store, name)
        if p.exists():
            h.update(name.encode() + cf.file_sha256(p).encode())
    return h


def methods(df: pl.DataFrame) -> list[str]:
    return ordered_methods(df.get_column("method").unique().to_list())


def method_rank(df: pl.DataFrame) -> pl.DataFrame:
    """Rows sorted in METHOD_ORDER (unknown methods last)."""
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    rank = pl.col("method").replace_strict(order, default=len(order), return_dtype=pl.Int64)
    return df.with_columns(rank.alias("_o")).sort("_o", "method").drop("_o")


def gain_table(summary: pl.DataFrame) -> pl.DataFrame:
    """Per cell: accuracy of each method and the GLA gain (pp).

    Gain = acc(gla) − acc(ft) when the cell has fine-tuned logits; for a zero-shot-only
    cell, acc(zs_debiased) − acc(zs) (de-biasing the zero-shot model by π̂p).
    """
    wide = summary.pivot(on="method", index=["model", "dataset"], values="accuracy", aggregate_function="first")
    for m in METHOD_ORDER:
        if m not in wide.columns:
            wide = wide.with_columns(pl.lit(None, dtype=pl.Float64).alias(m))
    has_ft = pl.col("gla").is_not_null() & pl.col("ft").is_not_null()
    extra = sorted(c for c in wide.columns if c not in METHOD_ORDER and c not in ("model", "dataset"))
    return wide.with_columns(
        pl.when(has_ft).then(pl.col("gla") - pl.col("ft")).otherwise(pl.col("zs_debiased") - pl.col("zs")).alias("gain"),
        pl.when(has_ft).then(pl.lit("gla − ft")).otherwise(pl.lit("zs_debiased − zs")).alias("gain_of"),
    ).select("model", "dataset", *METHOD_ORDER, *extra, "gain", "gain_of").sort("model", "dataset")
