"""The report's "Changes since the previous run" section, from a ``RunDiff``.

Cells added or removed, accuracy and group-accuracy changes with their interval and
exact test (significant rows first), per-class regressions under Benjamini–Hochberg
control, and the provenance changes that explain them. Plain HTML in the page's style.
"""

from __future__ import annotations

import html

import polars as pl
from gla.analyze.diff import RunDiff
from gla.pipeline.report.markup import interval, short, table

MAX_ROWS = 60
TEST_COLUMNS = [
    ("cell", "cell", "text"), ("estimator", "estimator", "text"), ("method", "method", "text"),
    ("metric", "metric", "text"), ("acc_old", "before", "pct"), ("acc_new", "after", "pct"),
    ("delta", "Δ pp", "pp"), ("delta_ci", "95 % interval (pp)", "text"), ("p_value", "p", "p"),
    ("test", "test", "text"),
]  # fmt: skip
CLASS_COLUMNS = [
    ("cell", "cell", "text"), ("method", "method", "text"), ("class_name", "class", "text"),
    ("acc_old", "before", "pct"), ("acc_new", "after", "pct"), ("delta", "Δ pp", "pp"),
    ("q_value", "BH q", "num"),
]  # fmt: skip


def _cell(df: pl.DataFrame) -> pl.DataFrame:
    return df.with_columns(pl.format("{}/{}", "model", "dataset").alias("cell"))


def _headline(tests: pl.DataFrame) -> pl.DataFrame:
    """One row per cell × estimator: the accuracy of gla (zs_debiased in a zero-shot-only
    cell), so that an unchanged matrix reads as one short table."""
    acc = tests.filter(pl.col("metric") == "accuracy")
    rank = pl.col("method").replace_strict({"gla": 0, "zs_debiased": 1}, default=2, return_dtype=pl.Int64)
    return (acc.with_columns(rank.alias("_r")).sort(["cell", "estimator", "_r"], nulls_last=True)
            .unique(["cell", "estimator"], keep="first", maintain_order=True).filter(pl.col("_r") < 2).drop("_r"))


def render(d: RunDiff, old_label: str, new_label: str, alpha: float = 0.05) -> str:
    """The section's HTML (an <h2> and its tables): cells added or removed, the changes
    that are significant, gla's accuracy per cell, per-class regressions, provenance."""
    out = [f"<h2 id='changes'>Changes since the previous run</h2><p class='meta'>"
           f"{html.escape(old_label)} → {html.escape(new_label)}</p>"]
    moved = d.cells.filter(pl.col("status") != "common")
    if moved.height:
        out.append("<p class='finding'>Cells " + "; ".join(
            f"{html.escape(r['model'])}/{html.escape(r['dataset'])} {r['status']}"
            for r in moved.iter_rows(named=True)) + ".</p>")
    tests = _cell(d.tests.filter(pl.col("delta").is_not_null()))
    tests = tests.with_columns(interval("ci_low", "ci_high", signed=True).alias("delta_ci"))
    sig = tests.filter(pl.col("p_value") < alpha).sort(["p_value", "cell", "method"])
    out.append(f"<p class='finding'>{sig.height} of {tests.height} accuracy comparisons changed "
               f"significantly (p &lt; {alpha}; McNemar when both runs scored the same samples, "
               "Fisher otherwise).</p>")
    if sig.height:
        out += ["<h3>Significant changes</h3>", table(sig.head(MAX_ROWS), TEST_COLUMNS)]
        if sig.height > MAX_ROWS:
            out.append(f"<p class='note'>The {MAX_ROWS} smallest p-values of {sig.height}; "
                       "<code>gla diff --json</code> lists all.</p>")
    head = _headline(tests)
    if head.height:
        out += ["<h3>Accuracy of gla per cell (zs_debiased without fine-tuned logits)</h3>",
                table(head.head(MAX_ROWS), TEST_COLUMNS)]
    reg = _cell(d.classes.filter(pl.col("regression")))
    out.append(f"<h3>Per-class regressions (Benjamini–Hochberg)</h3><p>{reg.height} class(es) "
               "fell significantly.</p>")
    if reg.height:
        out.append(table(reg.sort("q_value").head(MAX_ROWS), CLASS_COLUMNS))
    if d.provenance.height:
        rows = [f"<li>{html.escape(r['model'])}/{html.escape(r['dataset'])} "
                f"[{html.escape(str(r['estimator']))}] <code>{html.escape(r['field'])}</code>: "
                f"{html.escape(short(r['old']))} → {html.escape(short(r['new']))}</li>"
                for r in d.provenance.head(MAX_ROWS).iter_rows(named=True)]
        out.append("<h3>Provenance changes that may explain them</h3><ul class='prov'>" + "".join(rows) + "</ul>")
    return "\n".join(out)
