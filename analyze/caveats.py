"""Warnings: conditions under which a cell's numbers could mislead a reader.

Arrays and tables in, the ``warnings`` table (``analyze.schema``) out; no I/O. The
pipeline gathers the facts (training counts, the model's weights, the range of the zs
logits, the cell's priors and per_class tables) and :func:`cell_warnings` turns them into
one row per condition, each with a stable ``code`` and a one-line ``message``:

- ``uniform_train_prior``: no training counts, so π_s is uniform and ft_la equals ft;
- ``train_counts_missing_classes``: some classes have a training count of 0 (only
  smoothing keeps log π_s finite, so π_s of those classes is an artefact of it);
- ``random_init_weights``: the zero-shot model has no pretrained weights;
- ``cosine_logits``: every |zs| ≤ 1, the range of cosines (a logit scale of ~100 missing);
- ``not_converged``: a π_p estimator stopped before meeting its tolerance;
- ``small_group``: a head/medium/tail or many/medium/few group has fewer than
  ``MIN_GROUP_CLASSES`` classes or fewer than ``MIN_GROUP_SAMPLES`` eval samples;
- ``unlabelled_eval``: the eval split has no labels, so no method is scored: the cell
  gives its priors and the estimated π_t only.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from gla.analyze import schema

MIN_GROUP_CLASSES = 5
MIN_GROUP_SAMPLES = 100
COSINE_BOUND = 1.0 + 1e-4  # float16 storage rounds a cosine of 1 to at most 1 + 2**-11
CODES = ("uniform_train_prior", "train_counts_missing_classes", "random_init_weights",
         "cosine_logits", "not_converged", "small_group", "unlabelled_eval")  # fmt: skip
_GROUPS = (("group", "{} group (by π_p)", ("head", "medium", "tail")),
           ("count_group", "{}-shot group (by training count)", ("many", "medium", "few")))  # fmt: skip


def _counts_warnings(counts: np.ndarray | None, has_ft: bool, class_names: list[str]) -> list[tuple[str, str]]:
    if counts is None:
        if not has_ft:  # no method uses π_s without fine-tuned logits
            return []
        return [("uniform_train_prior", "no training counts: π_s is uniform, so ft_la = ft and gla "
                 "leaves the training label bias in (gla import --train-counts)")]
    missing = np.flatnonzero(np.asarray(counts) == 0)
    if not len(missing):
        return []
    names = ", ".join(repr(class_names[k]) for k in missing[:3]) + (" …" if len(missing) > 3 else "")
    return [("train_counts_missing_classes",
             f"{len(missing)} of {len(counts)} classes have training count 0 ({names}): "
             "their π_s is the smoothing alone")]


def _logit_warnings(random_init: bool, zs_absmax: float | None) -> list[tuple[str, str]]:
    out = []
    if random_init:
        out.append(("random_init_weights", "random-init weights (pretrained = \"none\"): zs and π_p "
                    "describe no pretraining"))
    if zs_absmax is not None and zs_absmax <= COSINE_BOUND:
        out.append(("cosine_logits", f"max |zs| is {zs_absmax:.3g}: cosines, not logits? (CLIP "
                    "scales them by ~100; unscaled, softmax is near uniform)"))
    return out


def _convergence_warnings(priors: pl.DataFrame) -> list[tuple[str, str]]:
    if priors.is_empty() or "converged" not in priors.columns:
        return []
    first = priors.unique("estimator", keep="first", maintain_order=True)
    out = []
    for r in first.filter(pl.col("converged").not_()).iter_rows(named=True):
        why = f": {r['message']}" if r.get("message") else ""
        out.append(("not_converged", f"estimator {r['estimator']} did not converge after "
                    f"{r['iterations']} iterations{why}"))
    return out


def _group_warnings(per_class: pl.DataFrame) -> list[tuple[str, str]]:
    """Small groups, from one method's rows (the group of a class is the same for all)."""
    if per_class.is_empty():
        return []
    one = per_class.filter(pl.col("method") == per_class["method"][0])
    out = []
    for col, label, groups in _GROUPS:
        if col not in one.columns or one[col].null_count() == one.height:
            continue
        sizes = one.group_by(col).agg(pl.len().alias("classes"), pl.col("n").sum().alias("n"))
        by = {r[col]: r for r in sizes.iter_rows(named=True)}
        for g in groups:
            r = by.get(g)
            if r is None or (r["classes"] >= MIN_GROUP_CLASSES and r["n"] >= MIN_GROUP_SAMPLES):
                continue
            k = r["classes"]
            out.append(("small_group", f"{label.format(g)}: {k} class{'es' * (k != 1)}, {r['n']} "
                        f"samples; its accuracy is noisy (want ≥ {MIN_GROUP_CLASSES} and ≥ "
                        f"{MIN_GROUP_SAMPLES})"))
    return out


def cell_warnings(
    model: str,
    dataset: str,
    *,
    class_names: list[str],
    counts: np.ndarray | None,
    has_ft: bool,
    random_init: bool,
    zs_absmax: float | None,
    priors: pl.DataFrame,
    per_class: pl.DataFrame,
    unlabelled_eval: str | None = None,
) -> pl.DataFrame:
    """The ``warnings`` rows of one cell (an empty table when nothing could mislead).

    ``counts``: the training counts as used (None when the dataset has none);
    ``zs_absmax``: max |zs| over the scored rows (None: not measured); ``priors`` and
    ``per_class``: the cell's tables (per_class of its primary estimator);
    ``unlabelled_eval``: the name of the eval split when none of its rows has a label."""
    found = (_counts_warnings(counts, has_ft, class_names) + _logit_warnings(random_init, zs_absmax)
             + _convergence_warnings(priors) + _group_warnings(per_class))
    if unlabelled_eval is not None:
        found.append(("unlabelled_eval", f"eval split {unlabelled_eval!r} has no labels: no method is "
                      "scored; the cell gives π_p and the estimated π_t (target_priors) only"))
    rows = [{"model": model, "dataset": dataset, "code": c, "message": m} for c, m in found]
    return schema.frame("warnings", rows)
