"""Distribution-shift sets: a dataset scored with the priors of a source cell.

The paper fits π_p on ImageNet and reports GLA on ImageNet-V2, -Sketch, -R, -A and
ObjectNet with those priors. Here a dataset declares ``evaluate_with = "<source>"`` in the
config; ``gla run`` records that in the store as ``datasets/<dataset>/evaluate_with.json``
(``{"source": ..., "source_classes": [...]}``), so ``gla analyze --store`` needs no config.

A shifted set may cover a subset of the source's classes (ImageNet-R and -A use 200 of
the 1,000): ``source_classes`` lists the source index of each of its classes, or, when
empty, classes are matched by name. The source's π_p, π_s and temperature are restricted
to those classes and renormalised, which is the same as scoring the source's full logits
with the other classes masked out.

Numpy and polars only; the per-cell glue lives in ``pipeline.analysis``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from gla.analyze import schema
from gla.analyze.cell import FittedPriors
from gla.analyze.priors import PriorEstimate
from gla.extract import cellformat as cf
from gla.pipeline.errors import UserError

SHIFT_FILE = "evaluate_with.json"


@dataclass(frozen=True)
class ShiftSpec:
    source: str
    source_classes: tuple[int, ...]
    path: Path


def shift_path(store_root: str | os.PathLike, dataset: str) -> Path:
    return Path(store_root) / "datasets" / cf.check_name(dataset, "dataset") / SHIFT_FILE


def write_shift(store_root: str | os.PathLike, dataset: dict[str, Any]) -> bool:
    """Record (or drop) a dataset spec's ``evaluate_with``; True when the file changed."""
    path = shift_path(store_root, dataset["name"])
    if not dataset.get("evaluate_with"):
        if path.exists():
            path.unlink()
            return True
        return False
    doc = {"source": dataset["evaluate_with"], "source_classes": [int(k) for k in dataset.get("source_classes") or []]}
    data = json.dumps(doc, sort_keys=True).encode()
    if path.is_file() and path.read_bytes() == data:
        return False
    cf.atomic_write_bytes(path, data)
    return True


def read_shift(store_root: str | os.PathLike, dataset: str) -> ShiftSpec | None:
    path = shift_path(store_root, dataset)
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
        source = cf.check_name(str(doc["source"]), "dataset")
        classes = tuple(int(k) for k in doc.get("source_classes") or [])
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: unreadable shift declaration ({e})") from None
    if source == dataset:
        raise UserError(f"{path}: dataset {dataset!r} cannot be evaluated with its own priors")
    return ShiftSpec(source, classes, path)


def class_map(shift: ShiftSpec, names: tuple[str, ...], source_names: tuple[str, ...]) -> np.ndarray:
    """Source class index of each class of the shifted set (by index list, else by name)."""
    c, cs = len(names), len(source_names)
    if shift.source_classes:
        m = np.asarray(shift.source_classes, dtype=np.int64)
        if len(m) != c:
            raise UserError(f"{shift.path}: source_classes has {len(m)} entries but the set has {c} classes")
        if m.min() < 0 or m.max() >= cs or len(set(m.tolist())) != c:
            raise UserError(f"{shift.path}: source_classes must be distinct indices in 0..{cs - 1}")
        return m
    index = {n: k for k, n in enumerate(source_names)}
    missing = [n for n in names if n not in index]
    if missing:
        raise UserError(
            f"{shift.path}: class {missing[0]!r} is not a class of source {shift.source!r} "
            "(give source_classes to map by index)"
        )
    return np.asarray([index[n] for n in names], dtype=np.int64)


def _restrict(p: np.ndarray, m: np.ndarray) -> np.ndarray:
    q = np.asarray(p, dtype=np.float64)[m]
    return q / q.sum()


def restrict_priors(fitted: FittedPriors, m: np.ndarray) -> FittedPriors:
    """The source's priors on the classes ``m`` (renormalised); temperature unchanged."""
    estimates = {k: replace(e, prior=_restrict(e.prior, m)) for k, e in fitted.estimates.items()}
    return replace(fitted, pi_p=_restrict(fitted.pi_p, m), estimates=estimates, pi_s=_restrict(fitted.pi_s, m))


def fitted_from_tables(tables: dict[str, pl.DataFrame]) -> FittedPriors:
    """The priors a cell's analysis used, read back from its tables (priors, per_class)."""
    primary = tables["summary"]["estimator"][0]
    estimates = {}
    for (est,), g in tables["priors"].sort("class_index").group_by("estimator", maintain_order=True):
        r = g.row(0, named=True)
        estimates[est] = PriorEstimate(
            prior=g["prior"].to_numpy().astype(np.float64), iterations=int(r["iterations"]),
            objective=float(r["objective"]), converged=bool(r["converged"]), method=est,
            temperature=float(r["temperature"]), message=r["message"] or "",
        )
    pc = tables["per_class"]
    first = pc.filter(pl.col("method") == pc["method"][0]).sort("class_index")
    pi_s = first["prior_downstream"].to_numpy().astype(np.float64)
    return FittedPriors(estimates[primary].prior, estimates, pi_s, primary)


def robustness_table(shifted: pl.DataFrame, source: pl.DataFrame, source_name: str,
                     classes: int, source_classes: int) -> pl.DataFrame:
    """method × shifted set, with the source's numbers (same method, its own eval split) beside."""
    src = source.select(
        "method", source_split="split", source_n="n", source_accuracy="accuracy",
        source_balanced_accuracy="balanced_accuracy",
    )
    df = shifted.select("model", "dataset", "estimator", "method", "split", "n", "accuracy",
                        "balanced_accuracy").join(src, on="method", how="left")
    df = df.with_columns(
        source_dataset=pl.lit(source_name), classes=pl.lit(classes), source_class_count=pl.lit(source_classes),
        accuracy_drop=pl.col("source_accuracy") - pl.col("accuracy"),
    )
    return schema.conform("robustness", df)
