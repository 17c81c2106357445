"""The names of the result tables and their empty forms, for the store code.

The per-cell cache and the publication handle any table by name; this module says which
tables exist, which every publication must contain (``CONTRACT``), which may be absent
(``is_optional``) and what an empty one looks like. (Until ``analyze/schema.py`` defines
every table, the names and empty schemas live here.)
"""

from __future__ import annotations

from collections.abc import Iterable

import polars as pl

_EMPTY: dict[str, dict[str, pl.DataType]] = {
    "summary": {"model": pl.String, "dataset": pl.String, "method": pl.String, "split": pl.String,
                "n": pl.Int64, "accuracy": pl.Float64, "balanced_accuracy": pl.Float64,
                "nll": pl.Float64, "ece": pl.Float64, "acc_head": pl.Float64,
                "acc_medium": pl.Float64, "acc_tail": pl.Float64},
    "per_class": {"model": pl.String, "dataset": pl.String, "method": pl.String,
                  "class_index": pl.Int32, "class_name": pl.String, "n": pl.Int64,
                  "accuracy": pl.Float64, "prior_pretrain": pl.Float64,
                  "prior_downstream": pl.Float64, "group": pl.String},
    "priors": {"model": pl.String, "dataset": pl.String, "estimator": pl.String,
               "class_index": pl.Int32, "class_name": pl.String, "prior": pl.Float64},
}  # fmt: skip

# The tables every publication holds (DESIGN.md's contract), then the optional ones.
CONTRACT: tuple[str, ...] = tuple(_EMPTY)
TABLES: tuple[str, ...] = (*CONTRACT, "calibration")
COLUMNS: dict[str, tuple[str, ...]] = {name: tuple(cols) for name, cols in _EMPTY.items()}


def is_optional(name: str) -> bool:
    return name not in CONTRACT


def empty(name: str) -> pl.DataFrame:
    """The table with no rows."""
    return pl.DataFrame(schema=_EMPTY[name])


def ordered(names: Iterable[str]) -> list[str]:
    """Table names in the canonical order (known tables first, then others by name)."""
    names = set(names)
    return [n for n in TABLES if n in names] + sorted(names - set(TABLES))
