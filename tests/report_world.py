"""Stores and tables for the report tests: a real analysed store, and the audit tables
(intervals, comparisons, helps / hurts, provenance, warnings, a non-converged and a
coinciding estimator) added to it as schema-conformant synthetic rows.

The synthetic rows are built through ``gla.analyze.schema`` (``conform``), so they have
the columns and dtypes the analysis writes. Columns the report reads that the schema does
not declare yet (``PENDING``: the per-class paired statistics) are appended after the
declared ones; once the schema declares them they go through ``conform`` too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
from gla.analyze import schema
from gla.pipeline.cell_analysis import StoreAnalysisOptions
from gla.pipeline.incremental import analyze_cells
from gla.pipeline.runner import Runner
from gla.pipeline.synthetic import write_cell
from statsmodels.stats.proportion import proportion_confint

CELLS = [("clip-a", "fashion", True), ("clip-a", "animals", True), ("clip-b", "fashion", False)]
# (de-biased method, baseline) pairs the per-class statistics compare.
PAIRS = (("gla", "ft"), ("zs_debiased", "zs"))
PENDING = {
    "summary": tuple(m + s for m in schema.CI_METRICS for s in schema.CI_SUFFIXES),
    "per_class": ("baseline", "delta", "delta_ci_low", "delta_ci_high", "q_value", "helps", "hurts"),
}
WARNED = ("clip-b", "fashion")  # carries a warnings row
NOT_CONVERGED = ("clip-a", "animals")  # its eigen estimate did not converge
COINCIDE = ("clip-a", "fashion")  # gets a second estimator equal to gla
LOSING = (2, 5)  # classes of clip-a/fashion made to lose under gla (both tables get rows)


def make_store(root: Path, options=None) -> Path:
    for i, (m, d, ft) in enumerate(CELLS):
        if not (root / "logits" / m / d).exists():
            write_cell(root, m, d, num_classes=12, fit_per_class=10, eval_rows=600, seed=i, ft=ft)
    analyze_cells(root, options or StoreAnalysisOptions(estimators=("gla", "eigen")),
                  runner=Runner(workers=0, quiet=True))
    return root


def conform(name: str, df: pl.DataFrame) -> pl.DataFrame:
    """``df`` through the schema; the PENDING columns the schema lacks kept after it."""
    later = [c for c in PENDING.get(name, ()) if c in df.columns and c not in schema.columns(name)]
    return pl.concat([schema.conform(name, df.drop(later)), df.select(later)], how="horizontal")


def audit_tables(tables: dict[str, pl.DataFrame | None]) -> dict[str, pl.DataFrame | None]:
    """The analysed tables with every audit table and column the report can show."""
    out = dict(tables)
    out["summary"] = with_intervals(tables["summary"])
    out["per_class"] = with_class_stats(tables["per_class"])
    out["comparisons"] = comparisons(out["summary"])
    out["provenance"] = provenance(tables["priors"])
    out["warnings"] = schema.frame("warnings", [{
        "model": WARNED[0], "dataset": WARNED[1], "code": "uniform_pi_s",
        "message": "no training counts: π_s is uniform, so ft_la equals ft"}])
    out["priors"] = odd_priors(tables["priors"])
    return out


def with_intervals(summary: pl.DataFrame) -> pl.DataFrame:
    """Wilson 95 % intervals (statsmodels) and standard errors for every CI metric."""
    cols = {}
    n = summary.get_column("n").to_numpy()
    for m in schema.CI_METRICS:
        if m not in summary.columns:
            continue
        p = summary.get_column(m).to_numpy().astype(float)
        k = np.round(np.nan_to_num(p) * n)
        lo, hi = proportion_confint(k, np.maximum(n, 1), alpha=0.05, method="wilson")
        cols |= {f"{m}_se": np.sqrt(p * (1 - p) / np.maximum(n, 1)), f"{m}_ci_low": np.where(np.isnan(p), np.nan, lo),
                 f"{m}_ci_high": np.where(np.isnan(p), np.nan, hi)}
    done = summary.drop([c for c in cols if c in summary.columns])
    return conform("summary", pl.concat([done, pl.DataFrame(cols, nan_to_null=True)], how="horizontal"))


def with_class_stats(per_class: pl.DataFrame) -> pl.DataFrame:
    """For each de-biased method: its change per class against the baseline, a normal
    95 % interval of it and helps / hurts where the interval excludes 0. Two classes of
    COINCIDE are made to lose under gla first."""
    lose = (pl.col("model") == COINCIDE[0]) & (pl.col("dataset") == COINCIDE[1]) & (pl.col("method") == "gla") \
        & pl.col("class_index").is_in(LOSING)
    pc = per_class.with_columns(pl.when(lose).then(pl.col("accuracy") - 0.1).otherwise(pl.col("accuracy")).alias("accuracy"))
    key = ["model", "dataset", "estimator", "class_index"]
    parts = [pc.filter(~pl.col("method").is_in([a for a, _ in PAIRS]))]
    for after, base in PAIRS:
        b = pc.filter(pl.col("method") == base).select(*key, pl.col("accuracy").alias("_b"))
        a = pc.filter(pl.col("method") == after).join(b, on=key, how="left")
        se = ((pl.col("accuracy") * (1 - pl.col("accuracy")) + pl.col("_b") * (1 - pl.col("_b"))) / pl.col("n")).sqrt()
        d = pl.col("accuracy") - pl.col("_b")
        a = a.with_columns(pl.lit(base).alias("baseline"), d.alias("delta"), (d - 1.96 * se).alias("delta_ci_low"),
                           (d + 1.96 * se).alias("delta_ci_high"))
        a = a.with_columns((pl.col("delta_ci_low") > 0).alias("helps"), (pl.col("delta_ci_high") < 0).alias("hurts"),
                           pl.lit(0.01).alias("q_value")).drop("_b")
        parts.append(a)
    return conform("per_class", pl.concat(parts, how="diagonal_relaxed"))


def comparisons(summary: pl.DataFrame) -> pl.DataFrame:
    rows = []
    acc = {(r["model"], r["dataset"], r["estimator"], r["method"]): r for r in summary.iter_rows(named=True)}
    for (m, d, e, meth), r in acc.items():
        for after, base in PAIRS:
            if meth == after and (m, d, e, base) in acc:
                delta = r["accuracy"] - acc[(m, d, e, base)]["accuracy"]
                rows.append({"model": m, "dataset": d, "estimator": e, "method": after, "baseline": base,
                             "n": r["n"], "delta": delta, "delta_ci_low": delta - 0.012,
                             "delta_ci_high": delta + 0.011, "mcnemar_p": 0.03})
    return schema.frame("comparisons", rows)


def provenance(priors: pl.DataFrame) -> pl.DataFrame:
    rows = [{"model": m, "dataset": d, "estimator": e, "fit_split": "val", "n_fit": 120, "eval_split": "test",
             "n_eval": 600, "temperature": 1.0, "smoothing": 0.0, "target_prior_source": "balanced",
             "options_fingerprint": "0f1e2d3c4b5a69788796a5b4", "code_version": "abcdef0123456789ffff",
             "model_arch": "ViT-B-32", "model_weights": "none" if m == "clip-b" else "laion2b_s34b_b79k",
             "finetuned_sha256": None if m == "clip-b" else "9" * 64, "templates_sha256": "7" * 64,
             "dataset_fingerprint": "5" * 64, "created_at": "2026-12-02T04:00:00Z"}
            for m, d, e in priors.select("model", "dataset", "estimator").unique().sort("model", "dataset", "estimator").iter_rows()]
    return schema.frame("provenance", rows)


def odd_priors(priors: pl.DataFrame) -> pl.DataFrame:
    """NOT_CONVERGED's eigen estimate marked not converged; COINCIDE gets a
    ``prior-matching`` estimate equal to its gla one."""
    bad = (pl.col("model") == NOT_CONVERGED[0]) & (pl.col("dataset") == NOT_CONVERGED[1]) & (pl.col("estimator") == "eigen")
    pri = priors.with_columns(pl.when(bad).then(False).otherwise(pl.col("converged")).alias("converged"),
                              pl.when(bad).then(pl.lit("stopped after 3 iterations")).otherwise(pl.col("message")).alias("message"))
    same = pri.filter((pl.col("model") == COINCIDE[0]) & (pl.col("dataset") == COINCIDE[1]) & (pl.col("estimator") == "gla"))
    return schema.conform("priors", pl.concat([pri, same.with_columns(pl.lit("prior-matching").alias("estimator"))]))
