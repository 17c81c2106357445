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
from gla.pipeline import rundiff
from gla.pipeline.cell_analysis import StoreAnalysisOptions
from gla.pipeline.incremental import analyze_cells
from gla.pipeline.report import ReportData, diff_section, load_tables, render
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


def previous_run(plain: dict[str, pl.DataFrame], audit: dict[str, pl.DataFrame | None]) -> dict[str, pl.DataFrame]:
    """A run before ``audit`` that differs from it in known ways: clip-b/fashion was not in
    it (added since), gla of COINCIDE got 40 more samples wrong (a significant gain
    since), and COINCIDE's templates hash was another (a provenance change)."""
    m, d = COINCIDE
    keep = ~((pl.col("model") == WARNED[0]) & (pl.col("dataset") == WARNED[1]))
    out = {k: v.filter(keep) for k, v in plain.items() if k in rundiff.READ}
    pred = out["predictions"].with_row_index("_i")
    mine = (pl.col("model") == m) & (pl.col("dataset") == d) & (pl.col("method") == "gla") & (pl.col("pred") == pl.col("label"))
    worse = pred.filter(mine).head(40).get_column("_i")
    out["predictions"] = pred.with_columns(
        pl.when(pl.col("_i").is_in(worse.implode())).then((pl.col("label") + 1) % 12).otherwise(pl.col("pred"))
        .cast(pl.Int32).alias("pred")).drop("_i")
    cell = (pl.col("model") == m) & (pl.col("dataset") == d)
    out["provenance"] = audit["provenance"].filter(keep).with_columns(
        pl.when(cell).then(pl.lit("6" * 64)).otherwise(pl.col("templates_sha256")).alias("templates_sha256"))
    return out


def audit_page(root: Path, stale=()) -> str:
    """The report page of the analysed store at ``root`` with the audit tables and a
    diff section against :func:`previous_run`, rendered from the tables (nothing is
    written into the store, so the page does not depend on how runs are published)."""
    plain = load_tables(make_store(root))
    audit = audit_tables(plain.tables)
    latest = rundiff.latest_tables(root)  # with the per-sample predictions (the report never reads them)
    new = {"predictions": latest["predictions"], **{k: audit[k] for k in ("summary", "per_class", "provenance")}}
    section = diff_section.render(rundiff.compute(previous_run(latest, audit), new), "run before", "these results")
    return render(ReportData(store=plain.store, tables=audit), extra_sections=(section,), stale=stale)


def matrix_tables(n_models: int = 5, n_datasets: int = 10, n_classes: int = 8, seed: int = 0) -> dict:
    """A wide matrix straight from the schema (no logits): long model and dataset names,
    every method in each cell, the last model zero-shot only. For the overview's layout."""
    rng = np.random.default_rng(seed)
    models = [f"ViT-B-32-laion2b_s34b_b79k-{k}" for k in range(n_models)]
    datasets = [f"inaturalist-subset-{k:02d}" for k in range(n_datasets)]
    summ, pc, pri = [], [], []
    for mi, m in enumerate(models):
        methods = ("zs", "zs_debiased") if mi == n_models - 1 else (
            "zs", "zs_debiased", "ft", "ft_la", "ensemble", "gla", "gla_tp", "wiseft@0.5")
        for d in datasets:
            prior = rng.dirichlet(np.ones(n_classes))
            for meth in methods:
                acc = rng.uniform(0.4, 0.95, n_classes)
                summ.append({"model": m, "dataset": d, "estimator": "gla", "method": meth, "split": "test", "n": 800,
                             "accuracy": acc.mean(), "balanced_accuracy": acc.mean(), "nll": 1.0, "ece": 0.05,
                             "acc_head": acc[:2].mean(), "acc_medium": acc[2:4].mean(), "acc_tail": acc[4:].mean()})
                pc += [{"model": m, "dataset": d, "estimator": "gla", "method": meth, "class_index": c,
                        "class_name": f"class_{c}", "n": 100, "accuracy": acc[c], "prior_pretrain": prior[c],
                        "prior_downstream": 1 / n_classes, "group": "head" if c < 2 else "medium" if c < 4 else "tail"}
                       for c in range(n_classes)]
            pri += [{"model": m, "dataset": d, "estimator": "gla", "class_index": c, "class_name": f"class_{c}",
                     "prior": prior[c], "converged": True, "message": ""} for c in range(n_classes)]
    tables = {name: None for name in schema.TABLES if name != "predictions"}
    tables |= {"summary": schema.frame("summary", summ), "per_class": schema.frame("per_class", pc),
               "priors": schema.frame("priors", pri)}
    tables["comparisons"] = comparisons(tables["summary"])  # the gains' interval columns
    return tables
