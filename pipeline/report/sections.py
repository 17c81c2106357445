"""Report sections of the optional audit tables: label shift, label issues, distribution
shift. Each appears only when its table exists and has rows (for the cell, or at all).

A section is a function of a :class:`CellView` (or of the whole data, for matrix-wide
tables) returning HTML parts; an empty list means "nothing to show".
"""

from __future__ import annotations

import html

import polars as pl
from gla.pipeline.report.markup import WARN, table
from gla.pipeline.report.style import ordered_methods
from gla.pipeline.report.tables import CellView, ReportData, primary_estimator

TOP = 10  # rows of each "most …" table


def _whole_split(tp: pl.DataFrame) -> pl.DataFrame:
    return tp.filter(pl.col("window").is_null()) if "window" in tp.columns else tp


def label_shift(view: CellView) -> list[str]:
    """π̂t of the eval split estimated without labels, per target estimator, against the
    labelled share when the split has labels; the classes that moved most from uniform."""
    tp = view.get("target_priors")
    if tp is None:
        return []
    whole = _whole_split(tp)
    if whole.height == 0:
        return []
    ests = sorted(set(whole.get_column("target_estimator").to_list()))
    wide = whole.pivot(on="target_estimator", index=["class_index", "class_name"], values="prior",
                       aggregate_function="first")
    has_share = "label_share" in whole.columns and whole.get_column("label_share").null_count() < whole.height
    if has_share:
        share = whole.select("class_index", "label_share").unique("class_index")
        wide = wide.join(share, on="class_index", how="left")
    n_classes = wide.height
    wide = wide.with_columns((pl.col(ests[0]) - 1.0 / n_classes).abs().alias("_move")).sort(
        ["_move", "class_index"], descending=[True, False]).head(TOP)
    cols = [("class_name", "class", "text")] + [(e, f"π̂t ({e})", "num") for e in ests]
    if has_share:
        cols.append(("label_share", "labelled share", "num"))
    parts = [f"<h4>Label shift: π̂t of the {html.escape(str(whole.get_column('split')[0]))} split, "
             "estimated without its labels</h4>"]
    if has_share:
        parts.append(f"<p class='finding'>{html.escape(_tv_sentence(whole, ests))}</p>")
    parts += [table(wide, cols),
              f"<p class='note'>The {min(TOP, n_classes)} classes whose π̂t ({html.escape(ests[0])}) is farthest "
              f"from uniform (1/{n_classes}).</p>"]
    if "converged" in whole.columns:
        bad = sorted(set(whole.filter(pl.col("converged").not_()).get_column("target_estimator").to_list()))
        if bad:
            parts.append(f"<div class='warn'><span class='flag'>{WARN} target estimator(s) did not converge: "
                         f"{html.escape(', '.join(bad))}</span></div>")
    return parts + _window_table(view)


def _tv_sentence(whole: pl.DataFrame, ests: list[str]) -> str:
    tv = []
    for e in ests:
        rows = whole.filter(pl.col("target_estimator") == e).drop_nulls(["prior", "label_share"])
        tv.append(f"{e} {0.5 * (rows['prior'] - rows['label_share']).abs().sum():.3f}")
    return "Total variation distance between π̂t and the labelled class shares: " + ", ".join(tv) + "."


def _window_table(view: CellView) -> list[str]:
    wa = view.get("window_accuracy")
    if wa is None:
        return []
    if "target_estimator" in wa.columns:
        wa = wa.with_columns(pl.when(pl.col("target_estimator").is_not_null() & (pl.col("target_estimator") != ""))
                             .then(pl.format("{} ({})", "method", "target_estimator"))
                             .otherwise(pl.col("method")).alias("method"))
    wide = wa.pivot(on="method", index=["window_index", "window"], values="accuracy",
                    aggregate_function="first").sort("window_index")
    ms = ordered_methods(c for c in wide.columns if c not in ("window_index", "window"))
    cols = [("window", "window", "text")] + [(m, m, "pct") for m in ms]
    return ["<h4>Accuracy per time window (%)</h4>", table(wide, cols)]


def label_issues(view: CellView) -> list[str]:
    """How many labels look wrong, the class pairs most confused in the labels, and the
    flagged samples with the strongest evidence."""
    li, cc = view.get("label_issues"), view.get("class_confusions")
    if li is None and cc is None:
        return []
    parts = ["<h4>Label issues</h4>"]
    names = dict(view.per_class.select("class_index", "class_name").unique().iter_rows())
    if li is not None:
        flagged = li.filter(pl.col("flagged")) if "flagged" in li.columns else li
        tested = int(cc.get_column("n_tested")[0]) if cc is not None and "n_tested" in cc.columns else None
        of = f" of {tested} labelled samples" if tested else ""
        parts.append(f"<p class='finding'>{flagged.height} label(s){of} flagged as likely wrong "
                     "(conformal p-values, Benjamini–Hochberg).</p>")
        top = flagged.sort(["p_value", "sample_id"]).head(TOP).with_columns(
            pl.col("label").replace_strict(names, default=None, return_dtype=pl.String).alias("given"),
            pl.col("suggested_label").replace_strict(names, default=None, return_dtype=pl.String).alias("suggested"))
        if top.height:
            parts.append(table(top, [("sample_id", "sample", "text"), ("given", "given label", "text"),
                                     ("suggested", "suggested", "text"), ("p_value", "p-value", "num")]))
    if cc is not None:
        top = cc.sort(["count", "label", "suggested_label"], descending=[True, False, False]).head(TOP)
        cols = [("label_name", "given label", "text"), ("suggested_name", "likely true label", "text"),
                ("count", "confident joint", "int")]
        if "n_flagged" in top.columns:
            cols.append(("n_flagged", "flagged", "int"))
        parts += ["<p class='note'>Class pairs most often confused in the labels:</p>", table(top, cols)]
    return parts


def distribution_shift(data: ReportData) -> list[str]:
    """Matrix-wide: each shifted set scored with its source cell's priors; per method the
    accuracy on the shifted set, and the change from the source for ft and gla."""
    rob = data.get("robustness")
    if rob is None or rob.height == 0:
        return []
    est = primary_estimator(rob)
    if est is not None:
        rob = rob.filter(pl.col("estimator") == est)
    index = ["model", "source_dataset", "dataset"]
    wide = rob.pivot(on="method", index=index, values="accuracy", aggregate_function="first")
    ms = ordered_methods(rob.get_column("method").unique().to_list())
    cols = [("model", "model", "text"), ("source_dataset", "source", "text"), ("dataset", "shifted set", "text")]
    cols += [(m, m, "pct") for m in ms]
    for m in (x for x in ("ft", "gla") if x in ms):
        change = rob.filter(pl.col("method") == m).select(
            *index, (pl.col("accuracy") - pl.col("source_accuracy")).alias(f"{m}_change"))
        wide = wide.join(change, on=index, how="left")
        cols.append((f"{m}_change", f"{m}: change from source (pp)", "pp"))
    return ["<h2 id='shift'>Distribution shift</h2>",
            "<p class='note'>Accuracy (%) of each method on each shifted set, scored with the π̂p, πs and "
            "temperature of its source cell; the last columns give the change from the source's eval split.</p>",
            table(wide.sort(index), cols)]


def kshot(view: CellView) -> list[str]:
    """The k-shot sweep: accuracy per shot count and method (the figure plots it)."""
    ks = view.get("kshot")
    if ks is None:
        return []
    wide = ks.pivot(on="method", index="shots", values="accuracy", aggregate_function="first").sort("shots")
    ms = ordered_methods(ks.get_column("method").unique().to_list())
    cols = [("shots", "shots per class", "int")] + [(m, m, "pct") for m in ms]
    return ["<h4>Few-shot sweep: accuracy (%) by training images per class</h4>", table(wide, cols)]


def unscored_cells(data: ReportData) -> list[str]:
    """Cells whose eval split has no labels (deployment data): nothing is scored there, so
    what they give is the label distribution estimated without labels."""
    tp = data.tables.get("target_priors")
    if tp is None:
        return []
    cells = sorted(set(tp.select("model", "dataset").iter_rows()) - set(data.cells()))
    if not cells:
        return []
    parts = ["<h2 id='unscored'>Cells with an unlabelled eval split</h2>",
             "<p class='note'>No method can be scored on a split without labels; these cells give the "
             "priors and the label distribution π̂t estimated without labels.</p>"]
    for m, d in cells:
        parts += [f"<h3>{html.escape(m)} / {html.escape(d)}</h3>", *label_shift(data.view(m, d))]
    return parts


CELL_SECTIONS = (label_shift, label_issues, kshot)
MATRIX_SECTIONS = (distribution_shift, unscored_cells)
