"""The report's plots, drawn with matplotlib's object API (Figure + FigureCanvasAgg).

No pyplot, no global backend and no rcParams: every font size is passed where it is
used, so rendering a report changes nothing in the process. Each function returns a
:class:`~matplotlib.figure.Figure`; :func:`png_b64` turns one into an inline PNG.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import polars as pl
from gla.pipeline.report import style
from gla.pipeline.report.style import FONT
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def png_b64(fig: Figure, dpi: int = 90) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _titles(ax, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=FONT["title"])
    ax.set_xlabel(xlabel, fontsize=FONT["label"])
    ax.set_ylabel(ylabel, fontsize=FONT["label"])
    ax.tick_params(labelsize=FONT["tick"])


def heatmap(gains: pl.DataFrame) -> Figure:
    models = sorted(set(gains.get_column("model").to_list()))
    datasets = sorted(set(gains.get_column("dataset").to_list()))
    grid = np.full((len(models), len(datasets)), np.nan)
    for m, d, g in gains.select("model", "dataset", "gain").iter_rows():
        if g is not None:
            grid[models.index(m), datasets.index(d)] = 100.0 * g
    fig = new_figure(min(14.0, 2.0 + 0.9 * len(datasets)), min(14.0, 1.4 + 0.45 * len(models)))
    ax = fig.add_subplot()
    finite = grid[np.isfinite(grid)]
    lim = max(1e-9, float(np.abs(finite).max())) if finite.size else 1.0
    im = ax.imshow(np.ma.masked_invalid(grid), cmap="RdYlGn", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xticks(range(len(datasets)), datasets, rotation=30, ha="right")
    ax.set_yticks(range(len(models)), models)
    ax.tick_params(labelsize=FONT["label"])
    if grid.size <= 400:
        for i, j in zip(*np.nonzero(np.isfinite(grid)), strict=True):
            ax.text(j, i, f"{grid[i, j]:+.1f}", ha="center", va="center", fontsize=FONT["note"])
    bar = fig.colorbar(im, ax=ax)
    bar.set_label("GLA gain (accuracy points)", fontsize=FONT["label"])
    bar.ax.tick_params(labelsize=FONT["tick"])
    ax.set_title("GLA gain per cell", fontsize=FONT["title"])
    return fig


def group_bars(ax, summ: pl.DataFrame, methods: list[str]) -> None:
    """Head / medium / tail accuracy per method."""
    groups = [g for g in ("acc_head", "acc_medium", "acc_tail") if g in summ.columns]
    width = 0.8 / max(1, len(methods))
    for k, m in enumerate(methods):
        row = summ.filter(pl.col("method") == m)
        vals = [row.get_column(g)[0] if row.height else None for g in groups]
        vals = [100.0 * v if v is not None else np.nan for v in vals]
        ax.bar(np.arange(len(groups)) + (k - (len(methods) - 1) / 2) * width, vals, width,
               label=style.label(m), color=style.color(m),
               edgecolor="black" if m == "gla" else "none", linewidth=0.6)
    ax.set_xticks(range(len(groups)), [g.removeprefix("acc_") for g in groups])
    _titles(ax, "head / medium / tail (by π̂p)", "", "accuracy (%)")
    ax.legend(ncol=3, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.1), fontsize=FONT["legend"])


def before_method(methods: list[str]) -> str:
    return "zs" if "zs" in methods else methods[0]


def class_accuracy(ax, pc: pl.DataFrame, methods: list[str]) -> None:
    """Per-class accuracy against the estimated pretraining prior (log x)."""
    for m in [before_method(methods), *(m for m in ("zs_debiased", "gla") if m in methods)]:
        rows = pc.filter(pl.col("method") == m).drop_nulls(["prior_pretrain", "accuracy"])
        x = rows.get_column("prior_pretrain").to_numpy()
        y = 100.0 * rows.get_column("accuracy").to_numpy()
        ok = x > 0
        ax.scatter(x[ok], y[ok], s=9, alpha=0.65, color=style.color(m), label=style.label(m))
        if ok.sum() >= 3:
            coef = np.polyfit(np.log10(x[ok]), y[ok], 1)
            xs = np.geomspace(x[ok].min(), x[ok].max(), 20)
            ax.plot(xs, np.polyval(coef, np.log10(xs)), color=style.color(m), lw=1.2)
    ax.set_xscale("log")
    _titles(ax, "per-class accuracy vs π̂p", "estimated pretraining prior π̂p (log)", "per-class accuracy (%)")
    ax.legend(frameon=False, fontsize=FONT["legend"])


def prior_scatter(ax, pc: pl.DataFrame, pri: pl.DataFrame, methods: list[str]) -> None:
    """Each estimator's π̂p against the downstream training share πs."""
    down = None
    if "prior_downstream" in pc.columns:
        down = pc.filter(pl.col("method") == before_method(methods)).select(
            "class_index", "prior_downstream").unique("class_index")
    plotted = False
    if down is not None and down.height:
        for e in sorted(set(pri.get_column("estimator").to_list())):
            j = pri.filter(pl.col("estimator") == e).select("class_index", "prior").join(down, on="class_index").drop_nulls()
            x = j.get_column("prior_downstream").to_numpy()
            y = j.get_column("prior").to_numpy()
            ok = (x > 0) & (y > 0)
            if ok.any():
                ax.scatter(x[ok], y[ok], s=9, alpha=0.7, label=e)
                plotted = True
    if plotted:
        lo, hi = ax.get_xlim()
        lo2, hi2 = ax.get_ylim()
        a, b = min(lo, lo2), max(hi, hi2)
        ax.plot([a, b], [a, b], color="black", lw=0.7, ls="--", label="y = x")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.legend(frameon=False, fontsize=FONT["legend"])
    else:
        ax.text(0.5, 0.5, "no downstream prior", ha="center", va="center", transform=ax.transAxes)
    _titles(ax, "estimated prior vs downstream counts", "downstream training share πs", "estimated π̂p")


def reliability(ax, cal: pl.DataFrame | None, summ: pl.DataFrame, methods: list[str]) -> None:
    """Accuracy against mean confidence per bin; marker area ∝ the bin's share of samples."""
    ax.plot([0, 1], [0, 1], color="black", lw=0.7, ls="--")
    shown = False
    for m in [x for x in (before_method(methods), "ft", "gla") if x in methods] if cal is not None else []:
        rows = cal.filter((pl.col("method") == m) & (pl.col("count") > 0)).sort("bin")
        if not rows.height:
            continue
        ece = summ.filter(pl.col("method") == m).get_column("ece")
        name = style.label(m) + (f" (ECE {100 * ece[0]:.1f}%)" if ece.len() and ece[0] is not None else "")
        x, y = rows.get_column("confidence").to_numpy(), rows.get_column("accuracy").to_numpy()
        cnt = rows.get_column("count").to_numpy()
        ax.plot(x, y, color=style.color(m), lw=1, alpha=0.8, label=name)
        ax.scatter(x, y, s=4 + 120 * cnt / cnt.sum(), color=style.color(m), zorder=3)
        shown = True
    if shown:
        ax.legend(frameon=False, loc="upper left", fontsize=FONT["legend"])
    else:
        ax.text(0.5, 0.5, "no calibration table", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    _titles(ax, "reliability", "confidence", "accuracy")


def cell_figure(model: str, dataset: str, summ, pc, pri, cal) -> Figure:
    """One figure with the four per-cell panels (one cell's rows of each table)."""
    ms = style.ordered_methods(summ.get_column("method").unique().to_list())
    fig = new_figure(17, 3.6)
    axes = fig.subplots(1, 4)
    group_bars(axes[0], summ, ms)
    class_accuracy(axes[1], pc, ms)
    prior_scatter(axes[2], pc, pri, ms)
    reliability(axes[3], cal, summ, ms)
    fig.suptitle(f"{model} / {dataset}", x=0.01, ha="left", fontsize=10)
    # Fixed margins (tight_layout costs a full extra draw); savefig's tight bbox trims.
    fig.subplots_adjust(left=0.04, right=0.99, bottom=0.14, top=0.86, wspace=0.32)
    return fig
