"""Planted runs for the diff and gate tests: per-sample predictions in, run tables out.

The summary and per_class tables are computed here by brute force (numpy over the
predictions), independently of analyze.cell, so the diff is checked against them.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from gla.analyze import predictions

METHODS = ("zs", "zs_debiased", "ft", "ft_la", "ensemble", "gla")


def groups(C: int) -> np.ndarray:
    """head/medium/tail by class index thirds (class 0 is the largest prior)."""
    return np.array(["head"] * (C // 3) + ["medium"] * (C // 3) + ["tail"] * (C - 2 * (C // 3)))


def run_tables(cells: dict, C: int) -> dict[str, pl.DataFrame]:
    """cells: {(model, dataset): {"ids": [...], "labels": y, "preds": {method: pred}}}."""
    g = groups(C)
    summary, per_class, preds = [], [], []
    for (model, dataset), cell in cells.items():
        y = np.asarray(cell["labels"])
        h = predictions.sample_hashes(cell["ids"])
        for method, p in cell["preds"].items():
            ok = np.asarray(p) == y
            n_k = np.bincount(y, minlength=C)
            x_k = np.bincount(y[ok], minlength=C)
            with np.errstate(invalid="ignore"):
                acc_k = x_k / n_k
            row = {"model": model, "dataset": dataset, "estimator": "gla", "method": method,
                   "split": "test", "n": len(y), "accuracy": ok.mean(),
                   "balanced_accuracy": np.nanmean(acc_k), "nll": 1.0 - ok.mean(), "ece": 0.01}
            for grp in ("head", "medium", "tail"):
                sel = np.isin(y, np.flatnonzero(g == grp))
                row[f"acc_{grp}"] = ok[sel].mean()
            summary.append(row)
            per_class.append(pl.DataFrame({
                "model": [model] * C, "dataset": [dataset] * C, "method": [method] * C,
                "class_index": pl.Series(np.arange(C, dtype=np.int32)),
                "class_name": [f"c{k}" for k in range(C)],
                "n": pl.Series(n_k.astype(np.int64)), "accuracy": pl.Series(acc_k, nan_to_null=True),
                "group": g.tolist(),
            }))  # fmt: skip
            preds.append(predictions.frame(model, dataset, "gla", method, h, y, p))
    return {"summary": pl.DataFrame(summary), "per_class": pl.concat(per_class),
            "predictions": pl.concat(preds)}


def draw_cell(rng, n: int, C: int, acc: dict[str, np.ndarray], prefix: str = "s") -> dict:
    """A fresh eval split of n samples (balanced labels) and per-method predictions whose
    per-class accuracy is acc[method][k]; wrong predictions go to a random other class."""
    y = rng.integers(0, C, size=n)
    ids = [f"{prefix}{i}" for i in rng.permutation(10 * n)[:n]]
    return {"ids": ids, "labels": y, "preds": {m: predict(rng, y, a, C) for m, a in acc.items()}}


def predict(rng, y: np.ndarray, acc_k: np.ndarray, C: int) -> np.ndarray:
    """Predictions right with probability acc_k[y], else a random other class."""
    ok = rng.random(y.size) < acc_k[y]
    return np.where(ok, y, (y + rng.integers(1, C, size=y.size)) % C)


def accuracies(rng, C: int) -> dict[str, np.ndarray]:
    return {m: rng.uniform(0.4, 0.9, size=C) for m in METHODS}
