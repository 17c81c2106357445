"""Provenance: how each cell's numbers were made, one row per model × dataset × estimator.

Every value comes from a real source: the options the cell was analysed with, the
split manifests (rows, part checksums, seal time), the logit files' metadata (model
identity, fine-tuned checkpoint, templates hash, written by ``extract`` or
``gla import``), the training-counts file, and the hash of the analysis code (the same
hash the per-cell caches are keyed by). ``code_version`` lives here so that the
per-cell worker (``pipeline.cell_analysis``) and the cache (``pipeline.incremental``)
share the one definition without importing each other.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import polars as pl
from gla.analyze import schema
from gla.extract import records
from gla.pipeline.store import SplitInfo

_ROOT = Path(__file__).resolve().parent.parent
# Code the analysis outputs depend on besides analyze/*.py (a change invalidates every cache).
CODE_FILES = ("pipeline/cell_analysis.py", "pipeline/cell_audits.py", "pipeline/distshift.py",
              "pipeline/provenance.py", "pipeline/store.py", "pipeline/incremental.py")  # fmt: skip
RANDOM_INIT = ("random-init", "none", "")  # what extract's model identity records for no weights


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Hash of the analysis code: ``analyze/*.py`` and ``CODE_FILES`` (16 hex digits)."""
    return records.code_version(_ROOT / "analyze", files=[_ROOT / f for f in CODE_FILES])


def model_identity(meta: dict[str, Any]) -> dict[str, str | None]:
    """model_arch, model_weights, finetuned_sha256 and templates_sha256 from a split's
    metadata. Imported logits name no model: arch and weights are null there."""
    model = meta.get("model") or {}
    if "checkpoint_sha256" in model:
        weights = str(model["checkpoint_sha256"])
    elif "pretrained" in model:
        weights = "none" if str(model["pretrained"]) in RANDOM_INIT else str(model["pretrained"])
    else:
        weights = None
    ft = meta.get("finetuned") or {}
    templates = meta.get("templates_hash")
    return {
        "model_arch": str(model["arch"]) if model.get("arch") else None,
        "model_weights": weights,
        "finetuned_sha256": str(ft["sha256"]) if isinstance(ft, dict) and ft.get("sha256") else None,
        "templates_sha256": str(templates) if templates else None,
    }


def is_random_init(meta: dict[str, Any]) -> bool:
    return model_identity(meta)["model_weights"] == "none"


def dataset_fingerprint(splits: Iterable[tuple[str, SplitInfo]], counts_file: Path | None) -> str:
    """Hash of what the numbers were computed from: each input split's rows and part
    checksums (content, not write ids: a re-import of the same data keeps it) and the
    training-counts file's bytes. ``splits``: (label, info), e.g. ("val", info)."""
    h = hashlib.sha256()
    for label, info in splits:
        h.update(f"{label}:{info.rows}:{','.join(info.part_sha256)}\n".encode())
    if counts_file is not None and counts_file.is_file():
        h.update(f"counts:{records.sha256(counts_file)}\n".encode())
    return h.hexdigest()[:16]


def target_prior_source(path: str | None) -> str:
    """``balanced``, or the target-prior file with (the start of) its sha256."""
    if not path:
        return "balanced"
    try:
        return f"{path} (sha256 {records.sha256(path)[:16]})"
    except OSError:
        return f"{path} (unreadable)"


def conventions(options: Any) -> str:
    """The conventions of ``docs/conventions.md`` as one readable string."""
    return ",".join(f"{k}={getattr(options, k)}" for k in
                    ("groups", "shot_accuracy", "temperature_scope", "fit_label_distribution"))


def _temperatures(priors: pl.DataFrame) -> dict[str, float]:
    first = priors.unique("estimator", keep="first", maintain_order=True)
    return {r["estimator"]: 1.0 if r["temperature"] is None else float(r["temperature"])
            for r in first.iter_rows(named=True)}


def provenance_table(
    model: str,
    dataset: str,
    *,
    estimators: Sequence[str],
    priors: pl.DataFrame,
    fit: tuple[str, int],
    evaluated: tuple[str, int],
    options: Any,
    meta: dict[str, Any],
    fingerprint: str,
    sealed: Iterable[str],
    ft_temperature: float = 1.0,
) -> pl.DataFrame:
    """One row per estimator. ``fit``/``evaluated``: (split label, rows used); ``options``:
    a ``StoreAnalysisOptions``; ``meta``: the eval split's metadata; ``sealed``: seal
    times (ISO-8601 UTC) of the input splits, the newest of which is ``created_at``;
    ``ft_temperature``: what the ft logits were divided by."""
    temps = _temperatures(priors)
    common = {
        "model": model, "dataset": dataset,
        "fit_split": fit[0], "n_fit": int(fit[1]), "eval_split": evaluated[0], "n_eval": int(evaluated[1]),
        "temperature_ft": float(ft_temperature), "conventions": conventions(options),
        "smoothing": float(options.smoothing), "target_prior_source": target_prior_source(options.target_prior),
        "options_fingerprint": options.fingerprint(), "code_version": code_version(),
        **model_identity(meta), "dataset_fingerprint": fingerprint,
        "created_at": max((s for s in sealed if s), default=None),
    }  # fmt: skip
    rows = [{**common, "estimator": e, "temperature": temps.get(e, 1.0)} for e in estimators]
    return schema.frame("provenance", rows)
