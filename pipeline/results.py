"""Where a store's published result tables live: results/<table>.parquet.

The tables, their columns and dtypes are defined once, in ``gla.analyze.schema``; this
module re-exports the names readers use (``TABLES``; ``COLUMNS``: the columns each
contract table must carry) and maps them to paths.
"""

from __future__ import annotations

import os
from pathlib import Path

from gla.analyze import schema
from gla.pipeline.store import Store

TABLES = tuple(schema.TABLES)
COLUMNS: dict[str, tuple[str, ...]] = {name: schema.required(name) for name in schema.CONTRACT}


def results_paths(store: Store | str | os.PathLike) -> dict[str, Path]:
    store = store if isinstance(store, Store) else Store(store)
    return {name: store.results_dir / f"{name}.parquet" for name in TABLES}
