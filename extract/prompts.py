"""Is a cell's pending change only its prompts (templates or class names)?

Then its zero-shot logits can be re-derived from the stored image embeddings on the CPU
(``extract.reembed.rezero_cell``: text tower only, no image decoded or encoded) instead
of a full extraction. The stored cell must carry ``image_emb`` and agree with the new
config in every other component (model, checkpoints, dataset, precision, sharding).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from gla.extract import cellformat as cf

PROMPT_COMPONENTS = ("class_names", "templates_hash")


def stored_components(cell: Path) -> tuple[dict[str, Any] | None, bool]:
    """(components the sealed cell was written with, whether it has image embeddings)."""
    if not cell.is_dir():
        return None, False
    for split in cf.sealed_splits(cell):
        parts = (cf.read_manifest(cell, split) or {}).get("parts") or []
        if parts:
            try:
                schema = pq.read_schema(cell / parts[0]["file"])
            except (OSError, KeyError, ValueError):
                return None, False
            meta = cf.table_metadata(schema)
            return dict(meta.get("components") or {}) or None, "image_emb" in schema.names
    return None, False


def prompt_only_change(cell: Path, components: dict[str, Any]) -> bool:
    """True when the cell differs from ``components`` only in templates / class names
    and keeps image embeddings to re-derive zs from."""
    stored, has_emb = stored_components(cell)
    if stored is None or not has_emb:
        return False
    rest = {k: v for k, v in stored.items() if k not in PROMPT_COMPONENTS}
    new_rest = {k: v for k, v in components.items() if k not in PROMPT_COMPONENTS}
    return rest == new_rest and any(stored.get(k) != components.get(k) for k in PROMPT_COMPONENTS)
