"""k-shot sweeps: few-shot GLA for fine-tuned checkpoints trained on k images per class.

A cell may hold ``kshot@k`` logit columns, one per shot count k (the paper's 1, 2, 4, 8,
16). Each is scored with the few-shot form of GLA, as in the released few-shot code:

- zs and each ``kshot@k`` are divided by their own confidence-matched temperature
  (``analyze.priors.confidence_temperature``, fitted on the labelled fit split; with
  temperature scope "zs", only zs is);
- π_p is estimated on the fit split's tempered zs logits;
- π_s is uniform: a k-shot training set has k images of every class;
- then every method of ``analyze.adjust`` (zs, zs_debiased, ft, ft_la, ensemble, gla)
  with ft = the tempered ``kshot@k`` logits.

Arrays in, one table out (``analyze.schema`` "kshot"), no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import polars as pl
from gla.analyze import adjust, schema, stats
from gla.analyze.priors import confidence_temperature, estimate_pretrain_prior

PREFIX = "kshot@"


def shots_of(column: str) -> int | None:
    """k of a ``kshot@k`` column name, else None."""
    if not column.startswith(PREFIX):
        return None
    try:
        return int(column[len(PREFIX):])
    except ValueError:
        return None


@dataclass
class KshotFit:
    estimator: str
    pi_p: np.ndarray  # on the tempered zs logits
    t_zs: float
    t_ft: dict[int, float]  # shots -> temperature of kshot@shots


def fit_kshot(zs_fit: np.ndarray, y_fit: np.ndarray, ft_fit: dict[int, np.ndarray], estimator: str = "gla",
              temperature_scope: str = "each") -> KshotFit:
    """Temperatures of zs and of every k-shot model, and π_p on the tempered zs.

    ``temperature_scope`` "zs" leaves the k-shot logits unscaled (temperature 1)."""
    if temperature_scope not in ("each", "zs"):
        raise ValueError(f"temperature_scope: expected each or zs, got {temperature_scope!r}")
    t_zs = confidence_temperature(zs_fit, y_fit)
    pi_p = estimate_pretrain_prior(zs_fit, y_fit, estimator, temperature=t_zs).prior
    t_ft = {k: confidence_temperature(f, y_fit) if temperature_scope == "each" else 1.0 for k, f in ft_fit.items()}
    return KshotFit(estimator, pi_p, t_zs, t_ft)


def evaluate_kshot(chunks: Iterable[tuple[np.ndarray, dict[int, np.ndarray], np.ndarray]], fit: KshotFit,
                   n_bins: int = stats.N_BINS) -> dict[tuple[int, str], stats.Tally]:
    """Tallies per (shots, method) over (zs, {shots: logits}, labels) chunks; label −1 skipped."""
    c = fit.pi_p.shape[0]
    uniform = np.full(c, 1.0 / c)
    out: dict[tuple[int, str], stats.Tally] = {}
    for zs, fts, y in chunks:
        keep = np.asarray(y) >= 0
        z = np.asarray(zs, np.float32)[keep] / np.float32(fit.t_zs)
        y = np.asarray(y)[keep]
        for k, ft in fts.items():
            f = np.asarray(ft, np.float32)[keep] / np.float32(fit.t_ft[k])
            for m, logits in adjust.iter_methods(z, f, pi_s=uniform, pi_p=fit.pi_p):
                t = stats.tally(logits, y, c, n_bins)
                out[k, m] = out[k, m].merge(t) if (k, m) in out else t
    return out


def kshot_table(model: str, dataset: str, split: str, fit: KshotFit,
                tallies: dict[tuple[int, str], stats.Tally]) -> pl.DataFrame:
    """Accuracy against the number of shots, one row per (shots, method)."""
    rows = []
    for (k, m), t in sorted(tallies.items(), key=lambda kv: (kv[0][0], adjust.METHODS.index(kv[0][1]))):
        met = stats.summary_metrics(t)
        rows.append({
            "model": model, "dataset": dataset, "estimator": fit.estimator, "shots": k, "method": m,
            "split": split, "n": met["n"], "accuracy": met["accuracy"],
            "balanced_accuracy": met["balanced_accuracy"], "nll": met["nll"],
            "temperature_zs": fit.t_zs, "temperature_ft": fit.t_ft[k],
        })
    return schema.frame("kshot", rows)
