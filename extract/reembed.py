"""Zero-shot logits for new templates or class names from stored image embeddings.

A cell extracted with ``image_embeddings = true`` keeps each image's normalised float16
embedding. ``rezero_cell`` rebuilds the zero-shot head for the model spec's (new)
templates and the dataset spec's (new) class names on the CPU (text tower only, no
images), recomputes ``zs = logit_scale * cos(emb, head)`` and rewrites the cell in place
(``ft``, labels and embeddings are kept). The new cell key is the one an extraction with
the same config computes, so a later ``gla extract`` finds the cell complete.

CLI: ``gla extract CONFIG --from-embeddings`` (after editing ``templates`` or
``class_names`` in the config).

Class names must keep their count and order (labels and ft logits index them): a
renaming is fine, a reordering of the same names is refused. zs values differ from an
extraction from images by the float16 rounding of the stored embedding
(|Δ| ≲ 1e-3 · logit_scale).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from gla.extract import cellformat as cf
from gla.extract.cellkey import cell_key, generation
from gla.extract.errors import ExtractError
from gla.extract.models import load_model
from gla.extract.templates import load_templates, templates_hash
from gla.extract.zeroshot import logit_params, zeroshot_head, zs_from_embeddings

log = logging.getLogger("extract")


def rezero_cell(
    store: str | os.PathLike,
    model: dict[str, Any],
    dataset: dict[str, Any],
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Recompute a sealed cell's zs from its image embeddings; returns a summary dict."""
    cell = cf.cell_dir(store, model["name"], dataset["name"])
    # The current generation stays whole until the new one is swapped in, so a killed
    # run just starts over from it.
    manifests = {s: cf.read_manifest(cell, s) for s in cf.sealed_splits(cell)}
    splits = sorted(manifests)
    meta = _embedding_metadata(cell, manifests)
    components = dict(meta.get("components") or {})
    if not components:
        raise ExtractError(f"cell {cell} was not written by `gla extract` (no components in metadata)")
    class_names = _class_names(cell, dataset, list(meta.get("class_names") or []))
    templates = load_templates(model.get("templates") or "simple")
    components.update(class_names=class_names, templates_hash=templates_hash(templates))
    key = cell_key(components)
    summary = {"cell": str(cell), "cell_key": key, "rows": 0, "splits": splits}
    if all(m.get("cell_key") == key for m in manifests.values()):
        summary["status"] = "skipped"
        return summary

    loaded = load_model(model, device="cpu", precision="fp32")
    if loaded.identity != components.get("model"):
        raise ExtractError(
            f"models[{model['name']!r}] is not the model that wrote {cell} "
            "(different arch or checkpoint): re-extract from images"
        )
    head = zeroshot_head(loaded, class_names, templates, store)
    scale, bias = logit_params(loaded.model)
    new_meta = {**meta, "class_names": class_names, "templates_hash": components["templates_hash"],
                "n_templates": len(templates), "components": components, "cell_key": key,
                "zs_from": "image_emb"}
    zs_of = lambda emb: zs_from_embeddings(emb, head, scale, bias)  # noqa: E731
    summary["rows"] = _rewrite(cell, manifests, key, new_meta, zs_of)
    summary["status"] = "written"
    log.info("%s: zs recomputed from image embeddings for %d rows", cell, summary["rows"])
    return summary


def _embedding_metadata(cell: Path, manifests: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The metadata of the cell's parts, which must carry the image_emb column."""
    if not manifests:
        raise ExtractError(f"cell {cell} has no sealed split: run `gla extract` first")
    first = next((m["parts"][0]["file"] for m in manifests.values() if m["parts"]), None)
    if first is None:
        raise ExtractError(f"cell {cell} has no rows")
    schema = pq.read_schema(cell / first)
    if "image_emb" not in schema.names:
        raise ExtractError(
            f"cell {cell} has no image_emb column: extract it with extract.image_embeddings = true"
        )
    return cf.table_metadata(schema)


def _class_names(cell: Path, dataset: dict[str, Any], old_names: list[str]) -> list[str]:
    """The dataset spec's class names (else the cell's): a renaming, never a reordering."""
    class_names = list(dataset.get("class_names") or []) or old_names
    if len(class_names) != len(old_names):
        raise ExtractError(
            f"datasets[{dataset['name']!r}].class_names has {len(class_names)} names, "
            f"the cell {cell} has {len(old_names)} classes"
        )
    if class_names != old_names and sorted(class_names) == sorted(old_names):
        # An extraction maps a reordered list onto the labels (imagefolder folders,
        # manifest label names); the stored labels and ft columns keep the old order.
        raise ExtractError(
            f"datasets[{dataset['name']!r}].class_names reorders the classes of {cell}: "
            "labels and ft logits follow the old order; re-extract from images"
        )
    return class_names


def _rewrite(cell: Path, manifests: dict[str, dict[str, Any]], key: str, meta: dict[str, Any],
             zs_of: Callable[[np.ndarray], np.ndarray]) -> int:
    """Write every split again as generation ``key`` with ``zs_of(image_emb)`` as zs (ft,
    labels and embeddings kept), seal it and swap the generation in. Returns the rows."""
    gen = generation(key)
    sealed: dict[str, str] = {}
    rows = 0
    for split, m in manifests.items():
        tables = []
        for entry in m["parts"]:
            t = pq.read_table(cell / entry["file"])
            emb = np.asarray(t.column("image_emb").combine_chunks().flatten()).reshape(t.num_rows, -1)
            ft = None
            if "ft" in t.column_names:
                ft = np.asarray(t.column("ft").combine_chunks().flatten()).reshape(t.num_rows, -1)
            tables.append(cf.build_table(
                t.column("sample_id").to_pylist(), split, t.column("label").to_numpy(), zs_of(emb), ft,
                emb, metadata=meta, dtype="float32"))
            rows += t.num_rows
        names = [cf.write_part(cell, split, i, t, gen).name for i, t in enumerate(tables)]
        sealed[split] = cf.seal_split(cell, split, names, gen, extra={"cell_key": key})
    cf.commit_cell(cell, sealed, replace=True, extra={"cell_key": key})
    return rows
