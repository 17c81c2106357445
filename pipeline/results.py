"""The result tables, as the store code sees them: names, contract, empty forms, order.

The tables, their columns and dtypes are defined once, in ``gla.analyze.schema``; the
per-cell cache and the publication handle any table listed there by name, through this
module (``COLUMNS``: the columns each contract table must carry).
"""

from __future__ import annotations

from collections.abc import Iterable

import polars as pl
from gla.analyze import schema

TABLES: tuple[str, ...] = tuple(schema.TABLES)
CONTRACT: tuple[str, ...] = tuple(schema.CONTRACT)  # every publication holds these
COLUMNS: dict[str, tuple[str, ...]] = {name: schema.required(name) for name in schema.CONTRACT}


def is_optional(name: str) -> bool:
    return name not in schema.TABLES or schema.table(name).optional


def empty(name: str) -> pl.DataFrame:
    """The table with no rows (its full schema)."""
    return schema.empty(name)


def ordered(names: Iterable[str]) -> list[str]:
    """Table names in the canonical order (known tables first, then others by name)."""
    names = set(names)
    return [n for n in TABLES if n in names] + sorted(names - set(TABLES))
