"""The report's plots, drawn with matplotlib's object API (Figure + FigureCanvasAgg).

No pyplot, no global backend and no rcParams: every font size is passed where it is
used, so rendering a report changes nothing in the process. Each function returns one
:class:`~matplotlib.figure.Figure` with one panel; :func:`png_b64` turns it into an
inline PNG. Rules every plot keeps: accuracies in % on a [0, 100] axis, one quantity per
colour scale, legends outside the data area, and estimators that coincide or did not
converge said so in the legend.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import polars as pl
from gla.pipeline.report import findings, style
from gla.pipeline.report.style import FONT
from gla.pipeline.report.tables import CellView
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

# Every cell figure has this size, so that the page shows them at one scale (one font
# size); the constrained layout fits the legend beside the axes inside it.
CELL_SIZE = (6.4, 3.5)
DPI = 100


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png_b64(fig: Figure, dpi: int = DPI) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _titles(ax, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=FONT["title"], pad=9)  # clear of marks drawn on the 100 % line
    ax.set_xlabel(xlabel, fontsize=FONT["label"])
    ax.set_ylabel(ylabel, fontsize=FONT["label"])
    ax.tick_params(labelsize=FONT["tick"])


def _legend_outside(ax, **kw) -> None:
    """Legend to the right of the axes, never on the data (savefig's tight box keeps it)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.04, 1.0), borderaxespad=0.0, frameon=False,
                  fontsize=FONT["legend"], **kw)


def _log_axis(ax, which: str) -> None:
    """Log scale labelled in plain decimals (0.01, 0.1, …) at majors only: minor labels
    of a short range (2×10⁻¹ 3×10⁻¹ …) run into each other. Call once the limits are set."""
    axis = ax.xaxis if which == "x" else ax.yaxis
    lo, hi = ax.get_xlim() if which == "x" else ax.get_ylim()
    short = np.log10(max(hi, 1e-300) / max(lo, 1e-300)) < 1.5
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if short else (1.0,)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    axis.set_minor_formatter(NullFormatter())


def _percent_axis(ax, which: str = "y") -> None:
    (ax.set_ylim if which == "y" else ax.set_xlim)(0, 100)


def heatmap(cells: pl.DataFrame, column: str, method: str, baseline: str,
            flagged: set[tuple[str, str]] = frozenset()) -> Figure:
    """One quantity per cell, ``column`` = acc(method) − acc(baseline), on its own
    diverging scale centred at 0. Models and datasets without any value (no fine-tuned
    logits) are left out; a missing cell inside the grid is hatched and says "n/a".
    Cells in ``flagged`` carry a warning: outlined, value marked "!"."""
    have = cells.filter(pl.col(column).is_not_null())
    models = sorted(set(have.get_column("model").to_list()))
    datasets = sorted(set(have.get_column("dataset").to_list()))
    grid = np.full((len(models), len(datasets)), np.nan)
    for m, d, g in have.select("model", "dataset", column).iter_rows():
        grid[models.index(m), datasets.index(d)] = 100.0 * g
    fig = new_figure(min(14.0, 3.4 + 0.9 * len(datasets)), min(14.0, 2.0 + 0.45 * len(models)))
    ax = fig.add_subplot()
    finite = grid[np.isfinite(grid)]
    lim = max(0.05, float(np.abs(finite).max())) if finite.size else 1.0
    ax.set_facecolor("#eeeeee")
    im = ax.imshow(np.ma.masked_invalid(grid), cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xticks(range(len(datasets)), datasets, rotation=30, ha="right")
    ax.set_yticks(range(len(models)), models)
    ax.tick_params(labelsize=FONT["label"])
    for i, j in np.ndindex(grid.shape) if grid.size <= 400 else ():
        _heat_label(ax, i, j, grid[i, j], lim, (models[i], datasets[j]) in flagged)
    bar = fig.colorbar(im, ax=ax)
    bar.set_label(f"{method} − {baseline} (points)", fontsize=FONT["label"])
    bar.ax.tick_params(labelsize=FONT["tick"])
    ax.set_title(f"acc({method}) − acc({baseline}), accuracy points", fontsize=FONT["title"])
    return fig


def _heat_label(ax, i: int, j: int, value: float, lim: float, flag: bool) -> None:
    if value != value:  # no value for this model × dataset: hatched, said in words
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor="#bbbbbb", lw=0))
        ax.text(j, i, "n/a", ha="center", va="center", fontsize=FONT["note"], color="#555555")
        return
    dark = abs(value) > 0.6 * lim
    ax.text(j, i, f"{value:+.1f}" + (" !" if flag else ""), ha="center", va="center", fontsize=FONT["note"],
            color="white" if dark else "black", fontweight="bold" if flag else None)
    if flag:
        ax.add_patch(_outline(j, i))


def _outline(j: int, i: int) -> Rectangle:
    return Rectangle((j - 0.46, i - 0.46), 0.92, 0.92, fill=False, edgecolor="#b45309", linewidth=2.0)


def group_bars(view: CellView) -> Figure:
    """Head / medium / tail accuracy per method, with 95 % intervals when summary has them."""
    summ, methods = view.summary, view.methods
    groups = [g for g in ("acc_head", "acc_medium", "acc_tail") if g in summ.columns]
    fig = new_figure(*CELL_SIZE)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(methods))
    for k, m in enumerate(methods):
        vals = np.array([_pct(findings._metric(summ, m, g)) for g in groups])
        err = None
        if all(f"{g}_ci_low" in summ.columns for g in groups):
            lo = np.array([_pct(findings._metric(summ, m, f"{g}_ci_low")) for g in groups])
            hi = np.array([_pct(findings._metric(summ, m, f"{g}_ci_high")) for g in groups])
            err = np.nan_to_num(np.vstack([vals - lo, hi - vals]), nan=0.0).clip(0)
        ax.bar(np.arange(len(groups)) + (k - (len(methods) - 1) / 2) * width, vals, width, yerr=err,
               error_kw={"elinewidth": 0.6, "capsize": 0}, label=style.label(m), color=style.color(m),
               edgecolor="black" if m == "gla" else "none", linewidth=0.6)
    ax.set_xticks(range(len(groups)), [g.removeprefix("acc_") for g in groups])
    _percent_axis(ax)
    _titles(ax, "accuracy on head / medium / tail classes (by π̂p)", "", "accuracy (%)")
    _legend_outside(ax)
    return fig


def _pct(v: float | None) -> float:
    return np.nan if v is None else 100.0 * v


def before_method(methods: list[str]) -> str:
    return "zs" if "zs" in methods else methods[0]


def class_accuracy(view: CellView) -> Figure:
    """Per-class accuracy against the estimated pretraining prior (log x), with
    least-squares lines in log π̂p."""
    methods = view.methods
    fig = new_figure(*CELL_SIZE)
    ax = fig.add_subplot()
    for k, m in enumerate([before_method(methods), *(m for m in ("zs_debiased", "gla") if m in methods)]):
        rows = view.per_class.filter(pl.col("method") == m).drop_nulls(["prior_pretrain", "accuracy"])
        x = rows.get_column("prior_pretrain").to_numpy()
        y = 100.0 * rows.get_column("accuracy").to_numpy()
        ok = x > 0
        # Hollow, one shape and size per method: a class where two methods score the same
        # shows both marks (concentric). clip_on=False: 0 % and 100 % stay visible.
        ax.scatter(x[ok], y[ok], **style.hollow(k, style.color(m), points=int(ok.sum())), label=style.label(m),
                   clip_on=False, zorder=3)
        if ok.sum() >= 3:
            coef = np.polyfit(np.log10(x[ok]), y[ok], 1)
            xs = np.geomspace(x[ok].min(), x[ok].max(), 20)
            ax.plot(xs, np.polyval(coef, np.log10(xs)), color=style.color(m), lw=1.2)
    ax.set_xscale("log")
    _log_axis(ax, "x")
    _percent_axis(ax)
    _titles(ax, "per-class accuracy against π̂p", "estimated pretraining prior π̂p (log scale)", "per-class accuracy (%)")
    _legend_outside(ax)
    return fig


def prior_scatter(view: CellView) -> Figure | None:
    """Each estimator's π̂p against the downstream training share πs (log-log). Hollow
    markers of distinct shapes and sizes: coinciding estimates show as concentric marks,
    and the legend names the estimator each one equals, and any that did not converge."""
    pc = view.per_class
    if "prior_downstream" not in pc.columns:
        return None
    down = pc.filter(pl.col("method") == before_method(view.methods)).select(
        "class_index", "prior_downstream").unique("class_index")
    same = findings.coincident_estimators(view.priors)
    failed = findings.non_converged(view.priors)
    fig = new_figure(*CELL_SIZE)
    ax = fig.add_subplot()
    plotted = []
    for k, e in enumerate(sorted(set(view.priors.get_column("estimator").to_list()))):
        j = view.priors.filter(pl.col("estimator") == e).select("class_index", "prior").join(
            down, on="class_index").drop_nulls()
        x, y = j.get_column("prior_downstream").to_numpy(), j.get_column("prior").to_numpy()
        ok = (x > 0) & (y > 0)
        if not ok.any():
            continue
        name = e + (f" (= {same[e]})" if e in same else "") + (" — NOT converged" if e in failed else "")
        c = style.ESTIMATOR_COLORS[k % len(style.ESTIMATOR_COLORS)]
        ax.scatter(x[ok], y[ok], **style.hollow(k, c, dashed=e in failed, points=int(ok.sum())), label=name, zorder=3)
        plotted.append(np.concatenate([x[ok], y[ok]]))
    if not plotted:
        return None
    allv = np.concatenate(plotted)
    a, b = allv.min() / 1.5, allv.max() * 1.5
    ax.plot([a, b], [a, b], color="black", lw=0.7, ls="--", label="π̂p = πs")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(a, b)
    ax.set_ylim(a, b)
    _log_axis(ax, "x")
    _log_axis(ax, "y")
    _titles(ax, "estimated prior π̂p against downstream share πs", "downstream training share πs (log)", "estimated π̂p (log)")
    _legend_outside(ax, title="estimator", title_fontsize=FONT["legend"])
    return fig


def reliability(view: CellView) -> Figure | None:
    """Accuracy against mean confidence per bin, in %; marker area ∝ the bin's share of
    samples. The legend carries each method's ECE."""
    cal = view.get("calibration")
    if cal is None:
        return None
    fig = new_figure(*CELL_SIZE)
    ax = fig.add_subplot()
    ax.plot([0, 100], [0, 100], color="black", lw=0.7, ls="--", label="perfect calibration")
    shown = False
    pair = findings.adjusted_pair(view.methods) or ()  # the pair whose ECE change the cell states
    for m in dict.fromkeys(x for x in (before_method(view.methods), *pair) if x in view.methods):
        rows = cal.filter((pl.col("method") == m) & (pl.col("count") > 0)).sort("bin")
        if not rows.height:
            continue
        ece = findings._metric(view.summary, m, "ece")
        name = style.label(m) + (f" (ECE {100 * ece:.1f} %)" if ece is not None else "")
        x, y = 100 * rows.get_column("confidence").to_numpy(), 100 * rows.get_column("accuracy").to_numpy()
        cnt = rows.get_column("count").to_numpy()
        ax.plot(x, y, color=style.color(m), lw=1, alpha=0.8, label=name)
        ax.scatter(x, y, s=6 + 60 * cnt / cnt.sum(), color=style.color(m), zorder=3, clip_on=False)
        shown = True
    if not shown:
        return None
    _percent_axis(ax, "x")
    _percent_axis(ax, "y")
    ax.set_aspect("equal")
    _titles(ax, "reliability diagram", "mean confidence (%)", "accuracy (%)")
    _legend_outside(ax)
    return fig


def kshot_curve(view: CellView) -> Figure | None:
    """Accuracy against training shots per class (log x), one line per method."""
    ks = view.get("kshot")
    if ks is None:
        return None
    fig = new_figure(*CELL_SIZE)
    ax = fig.add_subplot()
    for m in style.ordered_methods(ks.get_column("method").unique().to_list()):
        rows = ks.filter(pl.col("method") == m).sort("shots")
        ax.plot(rows["shots"].to_numpy(), 100 * rows["accuracy"].to_numpy(), marker="o", ms=3, lw=1.1,
                color=style.color(m), label=style.label(m), clip_on=False)
    shots = sorted(set(ks.get_column("shots").to_list()))
    ax.set_xscale("log")
    ax.set_xticks(shots, [str(k) for k in shots])
    ax.xaxis.set_minor_formatter(NullFormatter())
    _percent_axis(ax)
    _titles(ax, "few-shot: accuracy against shots per class", "training images per class (log scale)", "accuracy (%)")
    _legend_outside(ax)
    return fig


TRAJECTORY_CLASSES = 6  # the classes whose π̂t moves most across windows


def shift_trajectory(view: CellView) -> Figure | None:
    """π̂t per time window (each window estimated from windows ≤ t) for the classes whose
    estimate moves most, with the window's labelled share (dashed) when it has labels."""
    tp = view.get("target_priors")
    if tp is None or "window" not in tp.columns:
        return None
    tp = tp.filter(pl.col("window").is_not_null())
    if tp.height == 0:
        return None
    ests = sorted(set(tp.get_column("target_estimator").to_list()))
    est = "em" if "em" in ests else ests[0]
    rows = tp.filter(pl.col("target_estimator") == est).sort("window_index", "class_index")
    windows = rows.select("window_index", "window").unique().sort("window_index")
    moving = (rows.group_by("class_index", "class_name")
              .agg((pl.col("prior").max() - pl.col("prior").min()).alias("range"))
              .sort(["range", "class_index"], descending=[True, False]).head(TRAJECTORY_CLASSES))
    fig = new_figure(*CELL_SIZE)
    ax = fig.add_subplot()
    colors = [f"C{i}" for i in range(10)]
    x = windows["window_index"].to_numpy()
    for i, (k, name) in enumerate(moving.select("class_index", "class_name").iter_rows()):
        r = rows.filter(pl.col("class_index") == k)
        ax.plot(r["window_index"].to_numpy(), r["prior"].to_numpy(), marker="o", ms=3.5, lw=1.2,
                color=colors[i % 10], label=str(name))
        if r["label_share"].null_count() < r.height:
            ax.plot(r["window_index"].to_numpy(), r["label_share"].to_numpy(), ls="--", lw=0.9, marker="o",
                    ms=3.5, mfc="none", color=colors[i % 10])
    ax.set_xticks(x, [str(w) for w in windows["window"].to_list()])
    ax.set_ylim(bottom=0)
    _titles(ax, f"π̂t per window ({est}), {moving.height} classes that move most", "window",
            "estimated label share")
    _legend_outside(ax, title="class (dashed: labelled share)", title_fontsize=FONT["legend"])
    return fig


# name → (function, caption). A function returns None when its table or column is absent.
CELL_FIGURES = {
    "groups": (group_bars, "Accuracy on head / medium / tail classes (C//3, C//3, rest by π̂p) for each method; "
               "bars show 95 % intervals when the store has them."),
    "classes": (class_accuracy, "Per-class accuracy against π̂p (log scale) before and after de-biasing; "
                "lines are least-squares fits in log π̂p."),
    "priors": (prior_scatter, "Estimated π̂p of every estimator against the downstream training share πs. "
               "Hollow marks of different shapes and sizes: estimators with the same estimate appear as "
               "concentric marks and are named “(= …)” in the legend."),
    "reliability": (reliability, "Reliability diagram: accuracy against mean confidence per bin (marker area ∝ the "
                    "bin's share of samples); the dashed line is perfect calibration, the legend gives each ECE."),
    "kshot": (kshot_curve, "Few-shot sweep: each method with the k-shot fine-tuned model (temperatures on), "
              "against the number of training images per class."),
    "shift": (shift_trajectory, "Label shift over time: π̂t of each window, estimated from that window and "
              "the ones before it only, for the classes whose estimate moves most; dashed, the window's "
              "labelled share when it has labels."),
}


def cell_figures(view: CellView) -> dict[str, Figure]:
    """The cell's figures by name, in page order; absent tables give no figure."""
    out = {}
    for name, (draw, _) in CELL_FIGURES.items():
        fig = draw(view)
        if fig is not None:
            out[name] = fig
    return out

