"""What the report says in words and small tables about one cell, derived from its rows.

Each function takes a :class:`~gla.pipeline.report.tables.CellView` (or frames) and
returns text or a frame, so every statement the page makes can be tested without HTML.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
from gla.pipeline.report.markup import short
from gla.pipeline.report.style import label
from gla.pipeline.report.tables import CellView

# Priors closer than this (max |log ratio| over the classes) are "the same estimate".
SAME_PRIOR_LOG_TOL = 1e-3


def adjusted_pair(methods: list[str]) -> tuple[str, str] | None:
    """(baseline, de-biased method) the cell is judged by: ft → gla with fine-tuned
    logits, else zs → zs_debiased."""
    for base, after in (("ft", "gla"), ("zs", "zs_debiased")):
        if base in methods and after in methods:
            return base, after
    return None


def _metric(summ: pl.DataFrame, method: str, col: str) -> float | None:
    if col not in summ.columns:
        return None
    v = summ.filter(pl.col("method") == method).get_column(col)
    return None if v.len() == 0 or v[0] is None or v[0] != v[0] else float(v[0])


def calibration_sentence(view: CellView) -> str | None:
    """The change in calibration under the de-biasing, in words (ECE, then NLL)."""
    pair = adjusted_pair(view.methods)
    if pair is None:
        return None
    base, after = pair
    e0, e1 = _metric(view.summary, base, "ece"), _metric(view.summary, after, "ece")
    if e0 is None or e1 is None:
        return None
    d = 100 * (e1 - e0)
    verdict = "worse" if d > 0.005 else "better" if d < -0.005 else "unchanged"
    how = "rises" if verdict == "worse" else "falls" if verdict == "better" else "stays"
    text = (f"Calibration is {verdict} under {label(after)}: expected calibration error (ECE) {how} "
            f"from {100 * e0:.2f} % ({label(base)}) to {100 * e1:.2f} % ({d:+.2f} points).")
    n0, n1 = _metric(view.summary, base, "nll"), _metric(view.summary, after, "nll")
    if n0 is not None and n1 is not None:
        text += f" NLL goes from {n0:.4f} to {n1:.4f}."
    if verdict == "worse":
        a0, a1 = _metric(view.summary, base, "accuracy"), _metric(view.summary, after, "accuracy")
        gained = a0 is not None and a1 is not None and a1 > a0
        text += (" Accuracy rises, but the" if gained else " The") + (" adjusted logits are less well calibrated: "
                                                                       "read their softmax as scores, not probabilities.")
    return text


@dataclass(frozen=True)
class Flag:
    code: str
    message: str


def cell_flags(view: CellView) -> list[Flag]:
    """The cell's warnings table rows, then every estimator that did not converge."""
    flags = []
    warn = view.get("warnings")
    if warn is not None:
        flags += [Flag(c, m) for c, m in warn.select("code", "message").unique(maintain_order=True).iter_rows()]
    for est, msg in non_converged(view.priors).items():
        said = f"estimator {est} did not converge"
        if not any(f.code == "not_converged" and f.message.startswith(said) for f in flags):  # not twice
            flags.append(Flag("not_converged", said + (f": {msg}" if msg else "")))
    return flags


def non_converged(priors: pl.DataFrame) -> dict[str, str]:
    """estimator → solver message, for the estimators whose ``converged`` is false."""
    if "converged" not in priors.columns:
        return {}
    bad = priors.filter(pl.col("converged").not_()).unique("estimator", keep="first").sort("estimator")
    msgs = bad.get_column("message").to_list() if "message" in bad.columns else [""] * bad.height
    return {e: (m or "") for e, m in zip(bad.get_column("estimator").to_list(), msgs, strict=True)}


def coincident_estimators(priors: pl.DataFrame, tol: float = SAME_PRIOR_LOG_TOL) -> dict[str, str]:
    """estimator → the earlier estimator (by name) whose prior it matches, for each
    estimator whose estimate equals another's (they would hide each other in a plot)."""
    vecs = {}
    for est in sorted(set(priors.get_column("estimator").to_list())):
        v = priors.filter(pl.col("estimator") == est).sort("class_index").get_column("prior").to_numpy()
        vecs[est] = np.log(np.clip(v.astype(float), 1e-300, None))
    same: dict[str, str] = {}
    names = list(vecs)
    for i, b in enumerate(names):
        for a in names[:i]:
            if a not in same and vecs[a].shape == vecs[b].shape and np.max(np.abs(vecs[a] - vecs[b])) < tol:
                same[b] = a
                break
    return same


@dataclass(frozen=True)
class ClassChanges:
    """Every class's change under the de-biased ``method`` against ``baseline``: ``rows``
    sorted by delta (descending), with the paired interval and BH flags when per_class
    carries them (null otherwise)."""

    method: str
    baseline: str
    rows: pl.DataFrame

    def gains(self, k: int = 5) -> pl.DataFrame:
        return self.rows.filter(pl.col("delta") > 0).head(k)

    def losses(self, k: int = 5) -> pl.DataFrame:
        return self.rows.filter(pl.col("delta") < 0).sort(["delta", "class_index"]).head(k)

    @property
    def has_intervals(self) -> bool:
        return self.rows.get_column("delta_ci_low").null_count() < self.rows.height

    def sentence(self) -> str:
        d = self.rows.get_column("delta")
        up, down = int((d > 0).sum()), int((d < 0).sum())
        same = self.rows.height - up - down
        text = (f"Under {label(self.method)} against {label(self.baseline)}, {up} of {self.rows.height} classes "
                f"gain accuracy, {down} lose and {same} {'is' if same == 1 else 'are'} unchanged.")
        if {"helps", "hurts"} <= set(self.rows.columns) and self.has_intervals:
            helps, hurts = (int(self.rows.get_column(c).fill_null(False).sum()) for c in ("helps", "hurts"))
            text += (f" Significant after Benjamini–Hochberg control at 5 % across the classes: {helps} "
                     f"helped, {hurts} hurt.")
        return text


_CHANGE_COLUMNS = ("class_index", "class_name", "group", "n", "accuracy", "delta", "delta_ci_low",
                   "delta_ci_high", "q_value", "helps", "hurts", "baseline")
_CHANGE_STATS = ("delta_ci_low", "delta_ci_high", "q_value", "helps", "hurts")


def class_changes(view: CellView) -> ClassChanges | None:
    """Each class's change under the de-biased method against its baseline (see
    :func:`adjusted_pair`), with the per-class paired interval and the helps / hurts
    flags when per_class carries them for that baseline."""
    pair = adjusted_pair(view.methods)
    if pair is None:
        return None
    base, after = pair
    pc = view.per_class
    theirs = pc.filter(pl.col("method") == base).select("class_index", pl.col("accuracy").alias("base_accuracy"))
    rows = pc.filter(pl.col("method") == after).select(c for c in _CHANGE_COLUMNS if c in pc.columns)
    rows = rows.join(theirs, on="class_index", how="left")
    if "delta" not in rows.columns or ("baseline" in rows.columns and (rows.get_column("baseline") != base).any()):
        # Older stores (or another baseline): the difference of the two accuracies, no interval.
        rows = rows.with_columns((pl.col("accuracy") - pl.col("base_accuracy")).alias("delta"))
        rows = rows.drop([c for c in _CHANGE_STATS if c in rows.columns])
    for c in ("delta_ci_low", "delta_ci_high"):
        if c not in rows.columns:
            rows = rows.with_columns(pl.lit(None, dtype=pl.Float64).alias(c))
    rows = rows.drop_nulls("delta").sort(["delta", "class_index"], descending=[True, False])
    return ClassChanges(after, base, rows)


def provenance_line(view: CellView) -> str | None:
    """One line: how the cell's numbers were made (the provenance row of its estimator)."""
    prov = view.get("provenance")
    if prov is None:
        return None
    if view.estimator is not None and "estimator" in prov.columns and (prov["estimator"] == view.estimator).any():
        prov = prov.filter(pl.col("estimator") == view.estimator)
    r = prov.row(0, named=True)
    parts = [
        f"fit on {r.get('fit_split')} (n = {r.get('n_fit')})",
        f"scored on {r.get('eval_split')} (n = {r.get('n_eval')})",
        f"estimator {r.get('estimator')}",
    ]
    for key, name in (("temperature", "temperature"), ("smoothing", "smoothing"),
                      ("target_prior_source", "target prior")):
        if r.get(key) is not None:
            parts.append(f"{name} {r[key]:g}" if isinstance(r[key], float) else f"{name} {r[key]}")
    model = " ".join(short(x, hashes_from=32) for x in (r.get("model_arch"), r.get("model_weights")) if x)
    if model:
        parts.append(f"model {model[:60]}")
    for key, name in (("finetuned_sha256", "fine-tuned"), ("templates_sha256", "templates"),
                      ("dataset_fingerprint", "data"), ("options_fingerprint", "options"),
                      ("code_version", "code")):
        if key in r and r[key]:
            parts.append(f"{name} {short(r[key], hashes_from=13)}")
    if r.get("created_at"):
        parts.append(f"inputs sealed {r['created_at']}")
    return " · ".join(parts)
