"""The report's HTML: one self-contained page (inline CSS, inline PNGs, no scripts)."""

from __future__ import annotations

import html
import time
from typing import Any

import polars as pl
from gla.extract import cellformat as cf
from gla.pipeline.report import figures
from gla.pipeline.report.style import label
from gla.pipeline.report.tables import ReportData, gain_table, method_rank, methods

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

METHOD_COLUMNS = [
    ("method", "method", "text"), ("n", "n", "int"), ("accuracy", "accuracy", "pct"),
    ("balanced_accuracy", "balanced acc.", "pct"), ("acc_head", "head", "pct"),
    ("acc_medium", "medium", "pct"), ("acc_tail", "tail", "pct"),
    ("acc_many", "many-shot", "pct"), ("acc_medium_shot", "medium-shot", "pct"),
    ("acc_few", "few-shot", "pct"), ("nll", "NLL", "num"), ("ece", "ECE", "pct"),
]  # fmt: skip


def fmt(v: Any, kind: str = "pct") -> str:
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


def table(df: pl.DataFrame, cols: list[tuple[str, str, str]], row_class: Any = None) -> str:
    """cols: (column, header, kind) with kind in pct/pp/num/text/int."""
    head = "".join(f'<th class="{"l" if kind == "text" else ""}">{html.escape(h)}</th>' for _, h, kind in cols)
    out = [f"<table><thead><tr>{head}</tr></thead><tbody>"]
    for row in df.iter_rows(named=True):
        cells = []
        for c, _, kind in cols:
            v = row.get(c)
            css = "l" if kind == "text" else ""
            if kind == "pp" and isinstance(v, float) and v == v:
                css = "pos" if v > 0 else "neg" if v < 0 else ""
            cells.append(f'<td class="{css}">{fmt(v, kind)}</td>')
        out.append(f'<tr class="{row_class(row) if row_class else ""}">' + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def img(b64: str, alt: str) -> str:
    return f'<img src="data:image/png;base64,{b64}" alt="{html.escape(alt)}">'


def anchor(model: str, dataset: str) -> str:
    return "cell-" + cf.safe_name(f"{model}--{dataset}")


def _head(data: ReportData, cells: list) -> list[str]:
    split = data.summary.get_column("split")[0] if "split" in data.summary.columns else "?"
    return [
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
    ]


def _overview(data: ReportData) -> list[str]:
    gains = gain_table(data.summary)
    cols = [("model", "model", "text"), ("dataset", "dataset", "text")]
    cols += [(m, label(m), "pct") for m in methods(data.summary)]
    cols += [("gain", "GLA gain (pp)", "pp"), ("gain_of", "gain of", "text")]
    return [
        "<h2 id='overview'>Matrix overview</h2>",
        f"<figure>{img(figures.png_b64(figures.heatmap(gains)), 'GLA gain per cell heatmap')}"
        "<figcaption>GLA gain per cell in accuracy points: acc(GLA) − acc(fine-tuned) where the cell "
        "has fine-tuned logits, otherwise acc(zero-shot − log π̂p) − acc(zero-shot).</figcaption></figure>",
        table(gains, cols),
    ]


def _cell(data: ReportData, model: str, dataset: str, cell_png: str) -> list[str]:
    summ = method_rank(data.cell("summary", model, dataset))
    # Columns present with at least one value (count groups need training counts).
    have = [c for c in METHOD_COLUMNS if c[0] in summ.columns and summ.get_column(c[0]).null_count() < summ.height]
    pri = data.cell("priors", model, dataset)
    est = ", ".join(sorted(set(pri.get_column("estimator").to_list()))) or "—"
    nclass = data.cell("per_class", model, dataset).get_column("class_index").n_unique()
    return [
        f"<section class='cell' id='{anchor(model, dataset)}'><h3>{html.escape(model)} / {html.escape(dataset)}</h3>",
        f"<p class='meta'>{nclass} classes · prior estimators: {html.escape(est)}</p>",
        table(summ, have, row_class=lambda r: "gla" if r.get("method") == "gla" else ""),
        f"<figure>{img(cell_png, f'{model} / {dataset} plots')}<figcaption>"
        "Left to right: accuracy on head / medium / tail classes (thirds by π̂p) for each method; "
        "per-class accuracy against π̂p (log scale; lines are least-squares fits in log π̂p) before and "
        "after de-biasing; estimated π̂p against the downstream training share πs; reliability "
        "diagram (accuracy against mean confidence per bin; marker area ∝ samples in the bin)."
        "</figcaption></figure></section>",
    ]


def render(data: ReportData, *, max_cells: int = DEFAULT_MAX_CELLS, figures_for=None) -> str:
    """The page. ``figures_for(model, dataset)`` returns a cell's PNG (base64); by default
    it is drawn afresh (the writer passes its cache)."""
    figures_for = figures_for or (lambda m, d: figures.png_b64(cell_figure(data, m, d), dpi=80))
    cells = data.cells()
    parts = _head(data, cells) + _overview(data)
    detailed = cells[:max_cells]
    if len(cells) > max_cells:
        parts.append(
            f"<p class='note'>Per-cell details below for the first {max_cells} of {len(cells)} cells "
            "(<code>gla report --max-cells N</code> for more); the table above covers all.</p>"
        )
    parts.append("<h2 id='cells'>Cells</h2><nav class='toc'>")
    parts += [f"<a href='#{anchor(m, d)}'>{html.escape(m)} / {html.escape(d)}</a><br>" for m, d in detailed]
    parts.append("</nav>")
    for m, d in detailed:
        parts += _cell(data, m, d, figures_for(m, d))
    parts.append("</main></body></html>")
    return "\n".join(parts)


def cell_figure(data: ReportData, model: str, dataset: str):
    return figures.cell_figure(
        model, dataset, *(data.cell(t, model, dataset) for t in ("summary", "per_class", "priors", "calibration"))
    )
