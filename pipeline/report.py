"""The self-contained HTML audit report: ``<store>/report/index.html``.

Every number and plot comes from the store's Parquet tables
(``results/{summary,per_class,priors,calibration}.parquet``). The page has no scripts and
no external URLs: CSS is inline and plots are matplotlib PNGs (Agg backend) inlined as
base64 data URIs, so the file can be mailed, archived or opened offline.

Contents: a matrix overview (GLA gain per cell as a heatmap and the summary table), then
per cell the methods table, head/medium/tail accuracy before and after GLA, per-class
accuracy against the estimated pretraining prior π_p (log x, as in the GLA paper's
figure), the estimated prior against the downstream training distribution, and a
reliability diagram.

The report is rebuilt only when the tables change (``report/.index.html.key.json`` holds a
hash of the tables and of this code), so a no-change rerun is instant.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import html
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gla.analyze import schema
from gla.analyze.schema import TABLES
from gla.extract import cellformat as cf
from gla.pipeline.errors import UserError

METHOD_ORDER = ("zs", "zs_debiased", "ft", "ft_la", "ensemble", "gla")
METHOD_LABEL = {
    "zs": "zero-shot",
    "zs_debiased": "zero-shot − log π̂p",
    "ft": "fine-tuned",
    "ft_la": "fine-tuned − log πs (LA)",
    "ensemble": "zs + ft",
    "gla": "GLA",
}
METHOD_COLOR = {
    "zs": "#8c8c8c",
    "zs_debiased": "#4c72b0",
    "ft": "#dd8452",
    "ft_la": "#937860",
    "ensemble": "#8172b3",
    "gla": "#c44e52",
}
REPORT_VERSION = 1
DEFAULT_MAX_CELLS = 60

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d1d1f;background:#fafafa}
main{max-width:1200px;margin:0 auto;padding:1.5rem}
h1{font-size:1.6rem;margin:.2rem 0}h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.3rem}
h3{font-size:1.05rem;margin:1.6rem 0 .4rem}
p.meta,p.note{color:#555;font-size:.85rem;margin:.2rem 0}
table{border-collapse:collapse;font-size:.82rem;margin:.5rem 0 1rem;background:#fff}
th,td{border:1px solid #ddd;padding:.2rem .5rem;text-align:right;white-space:nowrap}
th{background:#f0f0f3}td.l,th.l{text-align:left}
tr.gla td{font-weight:600}td.pos{color:#1a7f37}td.neg{color:#b42318}
figure{margin:.4rem 0 1rem}figure img{max-width:100%;height:auto;border:1px solid #e3e3e3;background:#fff}
figcaption{font-size:.8rem;color:#555;max-width:1100px}
nav.toc{font-size:.85rem;columns:3;margin:.5rem 0}nav.toc a{color:#1f4fa0;text-decoration:none}
section.cell{background:#fff;border:1px solid #e6e6e6;border-radius:6px;padding:.2rem 1rem .6rem;margin:1rem 0}
"""


# --------------------------------------------------------------------------- data


@dataclass
class ReportData:
    summary: Any
    per_class: Any
    priors: Any
    calibration: Any | None
    store: Path
    TABLES = ("summary", "per_class", "priors", "calibration")  # the tables the report reads

    def cells(self) -> list[tuple[str, str]]:
        rows = self.summary.select("model", "dataset").unique().sort("model", "dataset")
        return [(r[0], r[1]) for r in rows.iter_rows()]


def load_tables(store: str | os.PathLike) -> ReportData:
    import polars as pl

    store = Path(store)
    res = store / "results"
    frames: dict[str, Any] = {}
    for name in ReportData.TABLES:
        path = res / f"{name}.parquet"
        if not path.exists():
            if schema.table(name).optional:
                frames[name] = None
                continue
            raise UserError(f"{path}: not found (run `gla analyze --store {store}` first)")
        try:
            frames[name] = pl.read_parquet(path)
        except Exception as e:  # noqa: BLE001 - any read failure is a bad file
            raise UserError(f"{path}: unreadable Parquet ({e})") from None
    for name, df in frames.items():
        if df is None:
            continue
        missing = [c for c in schema.required(name) if c not in df.columns]
        if missing:
            raise UserError(f"{res / (name + '.parquet')}: column {missing[0]} is missing")
    if frames["summary"].height == 0:
        raise UserError(f"{res / 'summary.parquet'}: has no rows (no cell was analysed)")
    return ReportData(store=store, **frames)


def tables_key(store: str | os.PathLike) -> str:
    """Hash of the tables' bytes and this module's code: the report's content key."""
    h = hashlib.sha256(f"report={REPORT_VERSION};code={_code_digest()}".encode())
    res = Path(store) / "results"
    for name in TABLES:
        p = res / f"{name}.parquet"
        if p.exists():
            h.update(name.encode() + cf.file_sha256(p).encode())
    return h.hexdigest()[:24]


# --------------------------------------------------------------------------- plots


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8, "legend.fontsize": 7})
    return plt


def _png(fig: Any, dpi: int = 90) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    _plt().close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _img(b64: str, alt: str) -> str:
    return f'<img src="data:image/png;base64,{b64}" alt="{html.escape(alt)}">'


def _methods(df: Any) -> list[str]:
    present = set(df.get_column("method").unique().to_list())
    return [m for m in METHOD_ORDER if m in present] + sorted(present - set(METHOD_ORDER))


def gain_table(summary: Any) -> Any:
    """Per cell: accuracy of each method and the GLA gain (pp).

    Gain = acc(gla) − acc(ft) when the cell has fine-tuned logits; for a zero-shot-only
    cell, acc(zs_debiased) − acc(zs) (de-biasing the zero-shot model by π̂p).
    """
    import polars as pl

    wide = summary.pivot(on="method", index=["model", "dataset"], values="accuracy", aggregate_function="first")
    for m in METHOD_ORDER:
        if m not in wide.columns:
            wide = wide.with_columns(pl.lit(None, dtype=pl.Float64).alias(m))
    return wide.with_columns(
        pl.when(pl.col("gla").is_not_null() & pl.col("ft").is_not_null())
        .then(pl.col("gla") - pl.col("ft"))
        .otherwise(pl.col("zs_debiased") - pl.col("zs"))
        .alias("gain"),
        pl.when(pl.col("gla").is_not_null() & pl.col("ft").is_not_null())
        .then(pl.lit("gla − ft"))
        .otherwise(pl.lit("zs_debiased − zs"))
        .alias("gain_of"),
    ).select(
        "model", "dataset", *METHOD_ORDER,
        *sorted(c for c in wide.columns if c not in METHOD_ORDER and c not in ("model", "dataset")),
        "gain", "gain_of",
    ).sort("model", "dataset")


def heatmap_png(gains: Any) -> str:
    import numpy as np

    plt = _plt()
    models = sorted(set(gains.get_column("model").to_list()))
    datasets = sorted(set(gains.get_column("dataset").to_list()))
    grid = np.full((len(models), len(datasets)), np.nan)
    for m, d, g in gains.select("model", "dataset", "gain").iter_rows():
        if g is not None:
            grid[models.index(m), datasets.index(d)] = 100.0 * g
    w = min(14.0, 2.0 + 0.9 * len(datasets))
    h = min(14.0, 1.4 + 0.45 * len(models))
    fig, ax = plt.subplots(figsize=(w, h))
    finite = grid[np.isfinite(grid)]
    lim = max(1e-9, float(np.abs(finite).max())) if finite.size else 1.0
    im = ax.imshow(np.ma.masked_invalid(grid), cmap="RdYlGn", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xticks(range(len(datasets)), datasets, rotation=30, ha="right")
    ax.set_yticks(range(len(models)), models)
    if grid.size <= 400:
        for i in range(len(models)):
            for j in range(len(datasets)):
                if np.isfinite(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:+.1f}", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=ax, label="GLA gain (accuracy points)")
    ax.set_title("GLA gain per cell")
    return _png(fig)


def cell_png(model: str, dataset: str, data: ReportData) -> str:
    """One figure with the four per-cell panels."""
    import numpy as np
    import polars as pl

    plt = _plt()
    sel = (pl.col("model") == model) & (pl.col("dataset") == dataset)
    summ = data.summary.filter(sel)
    pc = data.per_class.filter(sel)
    pri = data.priors.filter(sel)
    cal = data.calibration.filter(sel) if data.calibration is not None else None
    methods = _methods(summ)
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))

    # (1) head / medium / tail accuracy per method
    ax = axes[0]
    groups = [g for g in ("acc_head", "acc_medium", "acc_tail") if g in summ.columns]
    width = 0.8 / max(1, len(methods))
    for k, m in enumerate(methods):
        row = summ.filter(pl.col("method") == m)
        vals = [row.get_column(g)[0] if row.height else None for g in groups]
        vals = [100.0 * v if v is not None else np.nan for v in vals]
        ax.bar(np.arange(len(groups)) + (k - (len(methods) - 1) / 2) * width, vals, width,
               label=METHOD_LABEL.get(m, m), color=METHOD_COLOR.get(m, None),
               edgecolor="black" if m == "gla" else "none", linewidth=0.6)
    ax.set_xticks(range(len(groups)), [g.removeprefix("acc_") for g in groups])
    ax.set_ylabel("accuracy (%)")
    ax.set_title("head / medium / tail (by π̂p)")
    ax.legend(ncol=3, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.1))

    # (2) per-class accuracy against the estimated pretraining prior
    ax = axes[1]
    before = "zs" if "zs" in methods else methods[0]
    afters = [m for m in ("zs_debiased", "gla") if m in methods]
    for m in [before, *afters]:
        rows = pc.filter(pl.col("method") == m).drop_nulls(["prior_pretrain", "accuracy"])
        x = rows.get_column("prior_pretrain").to_numpy()
        y = 100.0 * rows.get_column("accuracy").to_numpy()
        ok = x > 0
        ax.scatter(x[ok], y[ok], s=9, alpha=0.65, color=METHOD_COLOR.get(m), label=METHOD_LABEL.get(m, m))
        if ok.sum() >= 3:
            coef = np.polyfit(np.log10(x[ok]), y[ok], 1)
            xs = np.geomspace(x[ok].min(), x[ok].max(), 20)
            ax.plot(xs, np.polyval(coef, np.log10(xs)), color=METHOD_COLOR.get(m), lw=1.2)
    ax.set_xscale("log")
    ax.set_xlabel("estimated pretraining prior π̂p (log)")
    ax.set_ylabel("per-class accuracy (%)")
    ax.set_title("per-class accuracy vs π̂p")
    ax.legend(frameon=False)

    # (3) estimated prior against the downstream training distribution
    ax = axes[2]
    down = (
        pc.filter(pl.col("method") == before)
        .select("class_index", "prior_downstream")
        .unique("class_index")
        if "prior_downstream" in pc.columns
        else None
    )
    estimators = sorted(set(pri.get_column("estimator").to_list()))
    plotted = False
    if down is not None and down.height:
        for e in estimators:
            j = pri.filter(pl.col("estimator") == e).join(down, on="class_index").drop_nulls()
            x = j.get_column("prior_downstream").to_numpy()
            y = j.get_column("prior").to_numpy()
            ok = (x > 0) & (y > 0)
            if ok.any():
                ax.scatter(x[ok], y[ok], s=9, alpha=0.7, label=e)
                plotted = True
    if plotted:
        lo, hi = ax.get_xlim()[0], ax.get_xlim()[1]
        lo2, hi2 = ax.get_ylim()
        a, b = min(lo, lo2), max(hi, hi2)
        ax.plot([a, b], [a, b], color="black", lw=0.7, ls="--", label="y = x")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.legend(frameon=False)
    else:
        ax.text(0.5, 0.5, "no downstream prior", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("downstream training share πs")
    ax.set_ylabel("estimated π̂p")
    ax.set_title("estimated prior vs downstream counts")

    # (4) reliability diagram
    ax = axes[3]
    ax.plot([0, 1], [0, 1], color="black", lw=0.7, ls="--")
    shown = False
    if cal is not None and cal.height:
        for m in [x for x in (before, "ft", "gla") if x in methods]:
            rows = cal.filter((pl.col("method") == m) & (pl.col("count") > 0)).sort("bin")
            if rows.height:
                ece = summ.filter(pl.col("method") == m).get_column("ece")
                label = METHOD_LABEL.get(m, m) + (f" (ECE {100 * ece[0]:.1f}%)" if ece.len() and ece[0] is not None else "")
                x = rows.get_column("confidence").to_numpy()
                y = rows.get_column("accuracy").to_numpy()
                cnt = rows.get_column("count").to_numpy()
                ax.plot(x, y, color=METHOD_COLOR.get(m), lw=1, alpha=0.8, label=label)
                # Marker area ∝ the bin's share of samples: sparse bins are visibly sparse.
                ax.scatter(x, y, s=4 + 120 * cnt / cnt.sum(), color=METHOD_COLOR.get(m), zorder=3)
                shown = True
    if shown:
        ax.legend(frameon=False, loc="upper left")
    else:
        ax.text(0.5, 0.5, "no calibration table", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title("reliability")
    fig.suptitle(f"{model} / {dataset}", x=0.01, ha="left", fontsize=10)
    # Fixed margins (tight_layout costs a full extra draw); savefig's tight bbox trims.
    fig.subplots_adjust(left=0.04, right=0.99, bottom=0.14, top=0.86, wspace=0.32)
    return _png(fig, dpi=80)


# --------------------------------------------------------------------------- html


def _fmt(v: Any, kind: str = "pct") -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        if v != v:  # NaN
            return "—"
        if kind == "pct":
            return f"{100 * v:.2f}"
        if kind == "pp":
            return f"{100 * v:+.2f}"
        return f"{v:.4f}"
    return html.escape(str(v))


def _table(df: Any, cols: list[tuple[str, str, str]], row_class: Any = None) -> str:
    """cols: (column, header, kind) with kind in pct/pp/num/text/int."""
    head = "".join(
        f'<th class="{"l" if kind == "text" else ""}">{html.escape(h)}</th>' for _, h, kind in cols
    )
    out = [f"<table><thead><tr>{head}</tr></thead><tbody>"]
    for row in df.iter_rows(named=True):
        cls = row_class(row) if row_class else ""
        cells = []
        for c, _, kind in cols:
            v = row.get(c)
            css = "l" if kind == "text" else ""
            if kind == "pp" and isinstance(v, float) and v == v:
                css = "pos" if v > 0 else "neg" if v < 0 else ""
            cells.append(f'<td class="{css}">{_fmt(v, kind)}</td>')
        out.append(f'<tr class="{cls}">' + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _anchor(model: str, dataset: str) -> str:
    return "cell-" + cf.safe_name(f"{model}--{dataset}")


class FigureCache:
    """Per-cell figures kept beside the report (``.<name>.figures/``), keyed by a hash of
    the cell's rows in every table and of this module: a rerun after one cell changed
    redraws only that cell's figure. Unused entries are removed after each render."""

    def __init__(self, folder: Path | None):
        self.folder = folder
        self.used: set[str] = set()

    def get(self, model: str, dataset: str, data: ReportData) -> str:
        if self.folder is None:
            return cell_png(model, dataset, data)
        name = f"{_anchor(model, dataset)}-{_cell_digest(model, dataset, data)}.png"
        self.used.add(name)
        path = self.folder / name
        try:
            return base64.b64encode(path.read_bytes()).decode("ascii")
        except OSError:
            pass
        b64 = cell_png(model, dataset, data)
        cf.atomic_write_bytes(path, base64.b64decode(b64))
        return b64

    def prune(self) -> None:
        if self.folder is not None and self.folder.is_dir():
            for f in self.folder.glob("*.png"):
                if f.name not in self.used:
                    f.unlink(missing_ok=True)


@functools.lru_cache(maxsize=1)
def _code_digest() -> str:
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def _cell_digest(model: str, dataset: str, data: ReportData) -> str:
    import polars as pl

    h = hashlib.sha256(f"{REPORT_VERSION}:{_code_digest()}".encode())
    sel = (pl.col("model") == model) & (pl.col("dataset") == dataset)
    for df in (data.summary, data.per_class, data.priors, data.calibration):
        if df is None:
            h.update(b"-")
            continue
        part = df.filter(sel)
        h.update(",".join(f"{c}:{t}" for c, t in part.schema.items()).encode())
        h.update(part.hash_rows(seed=0).to_numpy().tobytes())
    return h.hexdigest()[:20]


def render(data: ReportData, *, max_cells: int = DEFAULT_MAX_CELLS, figures: FigureCache | None = None) -> str:
    import polars as pl

    figures = figures or FigureCache(None)

    cells = data.cells()
    gains = gain_table(data.summary)
    methods = _methods(data.summary)
    split = data.summary.get_column("split")[0] if "split" in data.summary.columns else "?"
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        "<title>GLA audit report</title>",
        f"<style>{CSS}</style></head><body><main>",
        "<h1>GLA audit report</h1>",
        f"<p class='meta'>store <code>{html.escape(str(data.store))}</code> · {len(cells)} cell(s) · "
        f"evaluation split <code>{html.escape(str(split))}</code> · generated "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}</p>",
        "<p class='note'>Every number and plot below is read from the store's Parquet tables "
        "<code>results/summary.parquet</code>, <code>per_class.parquet</code>, <code>priors.parquet</code>"
        + (", <code>calibration.parquet</code>" if data.calibration is not None else "")
        + ". Accuracies are in %; π̂p is the estimated pretraining label prior, πs the downstream "
        "training distribution. Head / medium / tail are the thirds of the classes sorted by π̂p; "
        "many / medium / few-shot are classes with more than 100, 20–100 and fewer than 20 training "
        "samples.</p>",
        "<h2 id='overview'>Matrix overview</h2>",
        f"<figure>{_img(heatmap_png(gains), 'GLA gain per cell heatmap')}"
        "<figcaption>GLA gain per cell in accuracy points: acc(GLA) − acc(fine-tuned) where the cell "
        "has fine-tuned logits, otherwise acc(zero-shot − log π̂p) − acc(zero-shot).</figcaption></figure>",
    ]
    cols = [("model", "model", "text"), ("dataset", "dataset", "text")]
    cols += [(m, METHOD_LABEL.get(m, m), "pct") for m in methods]
    cols += [("gain", "GLA gain (pp)", "pp"), ("gain_of", "gain of", "text")]
    parts.append(_table(gains, cols))

    detailed = cells[:max_cells]
    if len(cells) > max_cells:
        parts.append(
            f"<p class='note'>Per-cell details below for the first {max_cells} of {len(cells)} cells "
            "(<code>gla report --max-cells N</code> for more); the table above covers all.</p>"
        )
    parts.append("<h2 id='cells'>Cells</h2><nav class='toc'>")
    parts += [
        f"<a href='#{_anchor(m, d)}'>{html.escape(m)} / {html.escape(d)}</a><br>" for m, d in detailed
    ]
    parts.append("</nav>")
    mcols = [
        ("method", "method", "text"), ("n", "n", "int"), ("accuracy", "accuracy", "pct"),
        ("balanced_accuracy", "balanced acc.", "pct"), ("acc_head", "head", "pct"),
        ("acc_medium", "medium", "pct"), ("acc_tail", "tail", "pct"),
        ("acc_many", "many-shot", "pct"), ("acc_medium_shot", "medium-shot", "pct"),
        ("acc_few", "few-shot", "pct"), ("nll", "NLL", "num"), ("ece", "ECE", "pct"),
    ]
    order = {m: i for i, m in enumerate(METHOD_ORDER)}
    for m, d in detailed:
        sel = (pl.col("model") == m) & (pl.col("dataset") == d)
        summ = data.summary.filter(sel)
        summ = summ.with_columns(
            pl.col("method").replace_strict(order, default=len(order), return_dtype=pl.Int64).alias("_o")
        ).sort("_o")
        # Columns present with at least one value (count groups need training counts).
        have = [c for c in mcols if c[0] in summ.columns and summ.get_column(c[0]).null_count() < summ.height]
        pri = data.priors.filter(sel)
        est = ", ".join(sorted(set(pri.get_column("estimator").to_list()))) or "—"
        nclass = data.per_class.filter(sel).get_column("class_index").n_unique()
        parts += [
            f"<section class='cell' id='{_anchor(m, d)}'><h3>{html.escape(m)} / {html.escape(d)}</h3>",
            f"<p class='meta'>{nclass} classes · prior estimators: {html.escape(est)}</p>",
            _table(summ, have, row_class=lambda r: "gla" if r.get("method") == "gla" else ""),
            f"<figure>{_img(figures.get(m, d, data), f'{m} / {d} plots')}<figcaption>"
            "Left to right: accuracy on head / medium / tail classes (thirds by π̂p) for each method; "
            "per-class accuracy against π̂p (log scale; lines are least-squares fits in log π̂p) before and "
            "after de-biasing; estimated π̂p against the downstream training share πs; reliability "
            "diagram (accuracy against mean confidence per bin; marker area ∝ samples in the bin)."
            "</figcaption></figure></section>",
        ]
    parts.append("</main></body></html>")
    return "\n".join(parts)


def write_report(
    store: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    max_cells: int = DEFAULT_MAX_CELLS,
    force: bool = False,
) -> tuple[Path, bool]:
    """Write the report (atomically). Returns (path, written); ``written`` is False when
    the tables are unchanged since the report at ``path`` was made."""
    store = Path(store)
    path = Path(out) if out else store / "report" / "index.html"
    key = f"{tables_key(store)}-{max_cells}"
    marker = path.parent / f".{path.name}.key.json"
    if not force and path.exists() and marker.exists():
        try:
            if json.loads(marker.read_text()).get("key") == key:
                return path, False
        except ValueError:
            pass
    data = load_tables(store)
    figures = FigureCache(path.parent / f".{path.stem}.figures")
    page = render(data, max_cells=max_cells, figures=figures)
    marker.unlink(missing_ok=True)
    cf.atomic_write_bytes(path, page.encode("utf-8"))  # mode from the umask: for sharing
    cf.atomic_write_bytes(marker, json.dumps({"key": key}).encode())
    figures.prune()
    return path, True
