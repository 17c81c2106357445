"""The report's HTML: one self-contained page (inline CSS, inline PNGs, no scripts).

The overview, then per cell: warnings (visibly marked), one provenance line, the methods
table, the change in calibration in words, the classes that gain and lose most, and one
figure per plot. Sections of optional tables appear only when the table has rows.
"""

from __future__ import annotations

import html
import time
from collections.abc import Callable, Collection

import polars as pl
from gla.pipeline.report import figures, findings, sections
from gla.pipeline.report.markup import WARN, anchor, img, interval, table
from gla.pipeline.report.style import label
from gla.pipeline.report.tables import GAINS, CellView, ReportData, gain_table, method_rank, methods

DEFAULT_MAX_CELLS = 60

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0;color:#1d1d1f;background:#fafafa}
main{max-width:1320px;margin:0 auto;padding:1.5rem}
h1{font-size:1.6rem;margin:.2rem 0}h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.3rem}
h3{font-size:1.05rem;margin:1.6rem 0 .4rem}h4{font-size:.92rem;margin:1rem 0 .2rem}
p.meta,p.note{color:#555;font-size:.85rem;margin:.2rem 0}
table{border-collapse:collapse;font-size:.82rem;margin:.5rem 0 1rem;background:#fff}
th,td{border:1px solid #ddd;padding:.2rem .5rem;text-align:right;white-space:nowrap}
th{background:#f0f0f3;white-space:normal}td.l,th.l{text-align:left}
div.tw{max-width:100%;overflow-x:auto}
tr.gla td{font-weight:600}td.pos{color:#1a7f37}td.neg{color:#b42318}
figure{margin:.4rem 0 1rem}figure img{max-width:100%;box-sizing:border-box;height:auto;border:1px solid #e3e3e3;background:#fff}
figcaption{font-size:.8rem;color:#555;max-width:1100px}
nav.toc{font-size:.85rem;columns:3;margin:.5rem 0}nav.toc a{color:#1f4fa0;text-decoration:none}
section.cell{background:#fff;border:1px solid #e6e6e6;border-radius:6px;padding:.2rem 1rem .6rem;margin:1rem 0}
section.flagged{border:2px solid #d97706}
div.warn{background:#fff7e6;border-left:4px solid #d97706;padding:.3rem .7rem;margin:.4rem 0;font-size:.85rem}
div.warn ul{margin:.2rem 0;padding-left:1.2rem}span.flag{color:#b45309;font-weight:600}
p.prov{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.72rem;color:#444;margin:.2rem 0;overflow-wrap:anywhere}
p.finding{font-size:.9rem;margin:.4rem 0}
ul.prov{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.75rem;overflow-wrap:anywhere}
div.figs{display:grid;grid-template-columns:repeat(2,minmax(0,1fr));gap:.6rem 1rem}
div.figs figure{margin:0}div.figs figure.wide{grid-column:1/-1}
div.pair{display:flex;flex-wrap:wrap;gap:0 1.5rem}div.pair>div{flex:0 1 auto;max-width:100%}
p.cap{font-size:.82rem;font-weight:600;margin:.3rem 0 0}
"""

METHOD_COLUMNS = [
    ("method", "method", "text"), ("n", "n", "int"), ("accuracy", "accuracy", "pct"),
    ("accuracy_ci", "95 % CI", "text"), ("top5", "top-5", "pct"),
    ("balanced_accuracy", "balanced acc.", "pct"), ("acc_head", "head", "pct"),
    ("acc_medium", "medium", "pct"), ("acc_tail", "tail", "pct"),
    ("acc_many", "many-shot", "pct"), ("acc_medium_shot", "medium-shot", "pct"),
    ("acc_few", "few-shot", "pct"), ("nll", "NLL", "num"), ("ece", "ECE", "pct"),
]  # fmt: skip
STALE = findings.Flag("not_in_config", "this cell is no longer in the config: its numbers come from an earlier "
                      "run and are not recomputed (gla prune removes it)")
GAIN_LABEL = {"gain_gla_ft": "gla − ft", "gain_zs_debiased": "zs_debiased − zs"}


def _head(data: ReportData, cells: list) -> list[str]:
    split = data.summary.get_column("split")[0] if data.summary.height and "split" in data.summary.columns else "?"
    present = [n for n, df in data.tables.items() if df is not None]
    return [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        "<title>GLA audit report</title>",
        f"<style>{CSS}</style></head><body><main>",
        "<h1>GLA audit report</h1>",
        f"<p class='meta'>store <code>{html.escape(str(data.store))}</code> · {len(cells)} cell(s) · "
        f"evaluation split <code>{html.escape(str(split))}</code> · generated "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}</p>",
        "<p class='note'>Every number and plot below is read from the Parquet tables of the store's "
        "latest published run (<code>results/runs/&lt;run id&gt;/</code>; <code>gla history</code> lists "
        "the runs): " + ", ".join(f"<code>{n}</code>" for n in present)
        + ". Accuracies are in %; π̂p is the estimated pretraining label prior, πs the downstream "
        "training distribution. Head / medium / tail: the classes sorted by π̂p, C//3 head, C//3 medium, "
        "the rest tail (by default; docs/conventions.md); many / medium / few-shot are classes with more "
        f"than 100, 20–100 and fewer than 20 training samples (mean of per-class accuracies). {WARN} marks a cell with a warning or an estimator that did not converge.</p>",
    ]


def _flag_text(flags: list[findings.Flag]) -> str:
    if not flags:
        return ""
    codes = sorted({f.code for f in flags})
    return f"{WARN} " + ", ".join(codes)


def _overview(data: ReportData, views: dict[tuple[str, str], CellView],
              flags: dict[tuple[str, str], list]) -> list[str]:
    if not views:  # only unlabelled cells: nothing scored to overview (sections.unscored_cells)
        return []
    gains = gain_table(data.summary, data.get("comparisons"))
    gains = gains.with_columns(pl.Series(
        "flags", [_flag_text(flags.get(k, [])) for k in gains.select("model", "dataset").iter_rows()], dtype=pl.String))
    flagged = {k for k, v in flags.items() if v}
    out = ["<h2 id='overview'>Matrix overview</h2>", *_stale_overview(flags), *_calibration_overview(views),
           "<div class='figs'>"]
    for col, method, baseline in GAINS:
        if gains.get_column(col).null_count() == gains.height:
            continue
        q = GAIN_LABEL[col]
        fig = figures.heatmap(gains, col, method, baseline, flagged)
        # A map wider than half the page gets the whole row: shrunk into a column its
        # labels would be unreadable.
        wide = " class='wide'" if fig.get_figwidth() * figures.DPI > 560 else ""
        out.append(
            f"<figure{wide}>{img(figures.png_b64(fig), f'{q} per cell heatmap')}<figcaption>{html.escape(q)} per cell "
            f"in accuracy points, on its own colour scale centred at 0 (blue: {html.escape(method)} better). "
            "An outlined value marked “!” carries a warning.</figcaption></figure>"
        )
    out.append("</div>")
    # Flags right after the cell's name: in a wide matrix the table scrolls, and what
    # scrolls out of view must not be the warning.
    cols = [("model", "model", "text"), ("dataset", "dataset", "text"), ("flags", "flags", "text")]
    cols += [(m, m, "pct") for m in methods(data.summary)]  # short names: the matrix stays narrow
    for c, _, _ in GAINS:
        cols.append((c, f"{GAIN_LABEL[c]} (pp)", "pp"))
        if f"{c}_ci_low" in gains.columns:
            gains = gains.with_columns(interval(f"{c}_ci_low", f"{c}_ci_high", signed=True).alias(f"{c}_ci"))
            cols.append((f"{c}_ci", "95 % CI (pp)", "text"))
    out.append(table(gains, cols))
    out.append("<p class='note'>Accuracy (%) per method: zs zero-shot, zs_debiased = zs − log π̂p, ft fine-tuned, "
               "ft_la = ft − log πs (logit adjustment), ensemble = zs + ft, gla = zs + ft − log πs − log π̂p; "
               "wiseft@α: the weight-space interpolation of the zero-shot and fine-tuned models.</p>")
    return out


def _stale_overview(flags: dict[tuple[str, str], list]) -> list[str]:
    gone = [c for c, v in flags.items() if STALE in v]
    if not gone:
        return []
    names = ", ".join(f"{html.escape(m)} / {html.escape(d)}" for m, d in gone)
    return [f"<div class='warn'><span class='flag'>{WARN} {len(gone)} cell(s) in these results are no longer in "
            f"the config</span>: {names}. Their numbers are from an earlier run; <code>gla prune</code> removes "
            "them.</div>"]


def _calibration_overview(views: dict[tuple[str, str], CellView]) -> list[str]:
    worse, total = [], 0
    for (m, d), v in views.items():
        pair = findings.adjusted_pair(v.methods)
        if pair is None:
            continue
        e0, e1 = (findings._metric(v.summary, k, "ece") for k in pair)
        if e0 is not None and e1 is not None:
            total += 1
            if e1 > e0:
                worse.append(f"{m} / {d}")
    if not total:
        return []
    named = f" ({html.escape(', '.join(worse[:10]))}{', …' if len(worse) > 10 else ''})" if worse else ""
    return [f"<p class='finding'>Calibration: ECE is higher after de-biasing (GLA against fine-tuned, or "
            f"zero-shot − log π̂p against zero-shot) in <b>{len(worse)} of {total}</b> cell(s){named}; each cell "
            "states its own change below.</p>"]


def _warn_box(flags: list[findings.Flag]) -> str:
    if not flags:
        return ""
    by_code: dict[str, list[str]] = {}
    for f in flags:  # one line per code: six small-group warnings read as one
        by_code.setdefault(f.code, []).append(f.message)
    items = "".join(f"<li><code>{html.escape(code)}</code>{f' ({len(msgs)})' if len(msgs) > 1 else ''}: "
                    f"{html.escape('; '.join(msgs))}</li>" for code, msgs in by_code.items())
    return f"<div class='warn'><span class='flag'>{WARN} Warnings for this cell</span><ul>{items}</ul></div>"


def _methods_table(view: CellView) -> str:
    summ = method_rank(view.summary)
    if "target_estimator" in summ.columns:  # gla_tp once per π_t estimator: say which
        summ = summ.with_columns(pl.when(pl.col("target_estimator").is_not_null() & (pl.col("target_estimator") != "")).then(
            pl.format("{} ({})", "method", "target_estimator")).otherwise(pl.col("method")).alias("method"))
    if {"accuracy_ci_low", "accuracy_ci_high"} <= set(summ.columns):
        summ = summ.with_columns(interval("accuracy_ci_low", "accuracy_ci_high").alias("accuracy_ci"))
    # Columns present with at least one value (count groups need training counts).
    have = [c for c in METHOD_COLUMNS if c[0] in summ.columns and summ.get_column(c[0]).null_count() < summ.height]
    return table(summ, have, row_class=lambda r: "gla" if r.get("method") == "gla" else "")


def _class_changes(view: CellView) -> list[str]:
    got = findings.class_changes(view)
    if got is None:
        return []
    cols = [("class_name", "class", "text"), ("group", "group", "text"), ("n", "n", "int"),
            ("base_accuracy", f"{got.baseline} (%)", "pct"), ("accuracy", f"{got.method} (%)", "pct"),
            ("delta", "Δ pp", "pp"), ("delta_ci", "95 % CI (pp)", "text")]
    if {"helps", "hurts"} <= set(got.rows.columns):
        cols.append(("verdict", "BH 5 %", "text"))
    note = ("paired 95 % interval per class; “helps” / “hurts”: significant after Benjamini–Hochberg "
            "control at 5 % across the cell's classes" if got.has_intervals else
            "this store's per_class table has no per-class intervals (re-run <code>gla analyze</code>)")
    halves = []
    for title, rows, verb in ((f"largest gains under {label(got.method)}", got.gains(), "gains"),
                              (f"largest losses under {label(got.method)}", got.losses(), "loses")):
        body = table(_with_verdict(rows), cols) if rows.height else f"<p class='note'>No class {verb} accuracy.</p>"
        halves.append(f"<div><p class='cap'>{html.escape(title)}</p>{body}</div>")
    return [f"<h4>Classes that gain and lose most under {html.escape(label(got.method))} "
            f"(against {html.escape(label(got.baseline))})</h4>",
            f"<p class='finding'>{html.escape(got.sentence())}</p>",
            f"<div class='pair'>{''.join(halves)}</div>", f"<p class='note'>{note}.</p>"]


def _with_verdict(rows: pl.DataFrame) -> pl.DataFrame:
    rows = rows.with_columns(interval("delta_ci_low", "delta_ci_high", signed=True).alias("delta_ci"))
    if {"helps", "hurts"} <= set(rows.columns):
        rows = rows.with_columns(
            pl.when(pl.col("helps")).then(pl.lit("helps")).when(pl.col("hurts")).then(pl.lit("hurts"))
            .otherwise(pl.lit("")).alias("verdict"))
    return rows


def _cell(view: CellView, flags: list[findings.Flag], pngs: dict[str, str]) -> list[str]:
    m, d = view.model, view.dataset
    est = ", ".join(sorted(set(view.priors.get_column("estimator").to_list()))) or "—"
    nclass = view.per_class.get_column("class_index").n_unique()
    prov = findings.provenance_line(view)
    calib = findings.calibration_sentence(view)
    shown = f" · methods use the {html.escape(view.estimator)} estimate" if view.estimator else ""
    figs = "".join(
        f"<figure>{img(b64, f'{m} / {d}: {name}')}<figcaption>{figures.CELL_FIGURES[name][1]}</figcaption></figure>"
        for name, b64 in pngs.items()
    )
    return [
        f"<section class='cell{' flagged' if flags else ''}' id='{anchor(m, d)}'>"
        f"<h3>{WARN + ' ' if flags else ''}{html.escape(m)} / {html.escape(d)}</h3>",
        _warn_box(flags),
        f"<p class='prov'>provenance: {html.escape(prov)}</p>" if prov else
        "<p class='prov'>provenance: not recorded (this store has no results/provenance.parquet)</p>",
        f"<p class='meta'>{nclass} classes · prior estimators: {html.escape(est)}{shown}</p>",
        _methods_table(view),
        f"<p class='finding'>{html.escape(calib)}</p>" if calib else "",
        *_class_changes(view),
        *(part for section in sections.CELL_SECTIONS for part in section(view)),
        f"<div class='figs'>{figs}</div></section>",
    ]


def render(data: ReportData, *, max_cells: int = DEFAULT_MAX_CELLS,
           figures_for: Callable[[CellView], dict[str, str]] | None = None,
           extra_sections: tuple[str, ...] = (), stale: Collection[tuple[str, str]] = ()) -> str:
    """The page. ``figures_for(view)`` returns a cell's PNGs (base64) by figure name; by
    default they are drawn afresh (the writer passes its cache). ``stale``: the
    (model, dataset) cells of these results that the config no longer lists."""
    figures_for = figures_for or (lambda v: {k: figures.png_b64(f) for k, f in figures.cell_figures(v).items()})
    cells = data.cells()
    views = {c: data.view(*c) for c in cells}
    flags = {c: findings.cell_flags(v) + ([STALE] if c in stale else []) for c, v in views.items()}
    parts = _head(data, cells) + _overview(data, views, flags) + list(extra_sections)  # the run diff
    parts += [part for section in sections.MATRIX_SECTIONS for part in section(data)]
    detailed = cells[:max_cells]
    if len(cells) > max_cells:
        parts.append(
            f"<p class='note'>Per-cell details below for the first {max_cells} of {len(cells)} cells "
            "(<code>gla report --max-cells N</code> for more); the table above covers all.</p>"
        )
    parts.append("<h2 id='cells'>Cells</h2><nav class='toc'>")
    parts += [f"<a href='#{anchor(m, d)}'>{WARN + ' ' if flags[(m, d)] else ''}{html.escape(m)} / "
              f"{html.escape(d)}</a><br>" for m, d in detailed]
    parts.append("</nav>")
    for c in detailed:
        parts += _cell(views[c], flags[c], figures_for(views[c]))
    parts.append("</main></body></html>")
    return "\n".join(parts)
