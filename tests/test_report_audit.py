"""The report with every audit table present (tests/report_world.py): intervals,
comparisons, per-class helps / hurts, provenance, warnings, a non-converged and a
coinciding estimator, cells no longer in the config. Each is checked where a reader
sees it: in the page's text and tables, or in the pixels of the figure."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import report_world as world  # tests/ is on sys.path (rootdir import mode)
from gla.pipeline.report import ReportData, figures, findings, load_tables, render, style
from matplotlib.colors import to_rgb
from test_report import parse


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    plain = load_tables(world.make_store(tmp_path_factory.mktemp("audit") / "store"))
    return ReportData(store=plain.store, tables=world.audit_tables(plain.tables))


@pytest.fixture(scope="module")
def page(data):
    return render(data, figures_for=lambda v: {})


def section(text: str, model: str, dataset: str) -> str:
    return text.split(f"id='cell-{model}--{dataset}'")[1].split("</section>")[0]


def cell_tables(text: str, model: str, dataset: str) -> list[list[list[str]]]:
    return [rows for sec, rows in parse(text).tables if sec == f"cell-{model}--{dataset}"]


def test_fixture_tables_follow_the_schema(data):
    from gla.analyze import schema

    for name in ("comparisons", "provenance", "warnings", "priors"):
        assert dict(data.tables[name].schema) == schema.table(name).dtypes, name
    for name in ("summary", "per_class"):  # declared columns first, in order; then the pending ones
        cols = data.tables[name].columns
        declared = [c for c in cols if c in schema.columns(name)]
        assert declared == list(schema.columns(name))
        assert set(cols) - set(declared) <= set(world.PENDING[name])


def test_one_provenance_line_per_cell_from_the_table(data, page):
    assert page.count("<p class='prov'>") == len(world.CELLS)
    prov = data.tables["provenance"]
    for m, d, ft in world.CELLS:
        line = section(page, m, d).split("<p class='prov'>")[1].split("</p>")[0]
        r = prov.filter((pl.col("model") == m) & (pl.col("dataset") == d) & (pl.col("estimator") == "gla")).row(0, named=True)
        assert line.startswith(f"provenance: fit on {r['fit_split']} (n = {r['n_fit']}) · scored on "
                               f"{r['eval_split']} (n = {r['n_eval']}) · estimator gla")
        assert f"model {r['model_arch']} {r['model_weights']}" in line
        assert ("fine-tuned " in line) == ft
        if ft:
            assert f"fine-tuned {r['finetuned_sha256'][:12]} " in line
        assert f"templates {r['templates_sha256'][:12]} " in line and line.endswith(f"inputs sealed {r['created_at']}")


def test_warned_and_non_converged_cells_are_marked(page):
    marked = {world.WARNED: "uniform_pi_s", world.NOT_CONVERGED: "not_converged"}
    overview = [rows for sec, rows in parse(page).tables if sec == "overview"][0]
    flags = {(r[0], r[1]): r[2] for r in overview[1:]}  # flags follow the cell name
    for m, d, _ in world.CELLS:
        sec = section(page, m, d)
        opening = page.split(f"id='cell-{m}--{d}'")[0].rsplit("<section", 1)[1]
        if (m, d) in marked:
            code = marked[(m, d)]
            assert "flagged" in opening and f"<code>{code}</code>" in sec and "class='warn'" in sec
            assert flags[(m, d)] == f"⚠ {code}"
            assert f"<a href='#cell-{m}--{d}'>⚠ {m} / {d}</a>" in page
        else:
            assert "flagged" not in opening and "class='warn'" not in sec and flags[(m, d)] == ""
    assert "estimator eigen did not converge: stopped after 3 iterations" in section(page, *world.NOT_CONVERGED)


def test_summary_intervals_in_the_methods_table(data, page):
    summ = data.summary
    for m, d, _ in world.CELLS:
        rows = cell_tables(page, m, d)[0]
        col = rows[0].index("95 % CI")
        want = summ.filter((pl.col("model") == m) & (pl.col("dataset") == d) & (pl.col("estimator") == "gla"))
        for r in rows[1:]:
            w = want.filter(pl.col("method") == r[0]).row(0, named=True)
            assert r[col] == f"[{100 * w['accuracy_ci_low']:.2f}, {100 * w['accuracy_ci_high']:.2f}]"
            assert r[rows[0].index("top-5")] == f"{100 * w['top5']:.2f}"  # beside top-1


def test_overview_gains_with_comparison_intervals(data, page):
    overview = [rows for sec, rows in parse(page).tables if sec == "overview"][0]
    head = overview[0]
    comp = data.tables["comparisons"]
    for r in overview[1:]:
        for label, method, base in (("gla − ft (pp)", "gla", "ft"), ("zs_debiased − zs (pp)", "zs_debiased", "zs")):
            c = comp.filter((pl.col("model") == r[0]) & (pl.col("dataset") == r[1]) & (pl.col("method") == method)
                            & (pl.col("baseline") == base) & (pl.col("estimator") == "gla"))
            i = head.index(label)
            if c.height == 0:
                assert r[i] == "—" and r[i + 1] == "—"
                continue
            w = c.row(0, named=True)
            assert r[i] == f"{100 * w['delta']:+.2f}"
            assert r[i + 1] == f"[{100 * w['delta_ci_low']:+.2f}, {100 * w['delta_ci_high']:+.2f}]"


def test_class_tables_carry_intervals_and_bh_verdicts(data, page):
    m, d = world.COINCIDE
    pc = data.per_class.filter((pl.col("model") == m) & (pl.col("dataset") == d) & (pl.col("method") == "gla"))
    gains, losses = cell_tables(page, m, d)[1:3]
    head = gains[0]
    assert head == ["class", "group", "n", "ft (%)", "gla (%)", "Δ pp", "95 % CI (pp)", "BH 5 %"]
    by_name = {r["class_name"]: r for r in pc.iter_rows(named=True)}
    for r in gains[1:] + losses[1:]:
        w = by_name[r[0]]
        assert r[5] == f"{100 * w['delta']:+.2f}"
        assert r[6] == f"[{100 * w['delta_ci_low']:+.2f}, {100 * w['delta_ci_high']:+.2f}]"
        assert r[7] == ("helps" if w["helps"] else "hurts" if w["hurts"] else "")
    assert {r[0] for r in losses[1:]} == {f"class_{k:04d}" for k in world.LOSING}
    assert all(float(r[5]) > 0 for r in gains[1:]) and all(float(r[5]) < 0 for r in losses[1:])
    helps, hurts = int(pc["helps"].sum()), int(pc["hurts"].sum())
    assert f"Benjamini–Hochberg control at 5 % across the classes: {helps} helped, {hurts} hurt." in section(page, m, d)


def test_calibration_worse_is_said(data, page):
    m, d, _ = world.CELLS[2]  # zero-shot only: zs_debiased against zs
    summ = data.summary.filter((pl.col("model") == m) & (pl.col("dataset") == d))
    ece = dict(summ.select("method", "ece").iter_rows())
    verdict = "worse" if ece["zs_debiased"] > ece["zs"] else "better"
    assert f"Calibration is {verdict} under zero-shot − log π̂p" in section(page, m, d)
    if verdict == "worse":
        gained = dict(summ.select("method", "accuracy").iter_rows())
        lead = "Accuracy rises, but the" if gained["zs_debiased"] > gained["zs"] else "The"
        assert f"{lead} adjusted logits are less well calibrated" in section(page, m, d)


def _colour_pixels(fig, colour: str, tol: float = 0.1) -> int:
    """Pixels within ``tol`` of ``colour`` (RGB, 0–1) inside the axes (the legend, outside
    them, is not counted), drawn at 200 dpi so that a marker's edge has solid pixels."""
    fig.set_dpi(200)
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3] / 255.0
    box, h = fig.axes[0].get_window_extent(), rgb.shape[0]
    inside = rgb[int(h - box.y1) + 2:int(h - box.y0) - 2, int(box.x0) + 2:int(box.x1) - 2]
    return int((np.abs(inside - np.array(to_rgb(colour))).max(axis=-1) < tol).sum())


def test_coinciding_priors_both_stay_visible(data, monkeypatch):
    """prior-matching equals gla class for class; both estimators' colours must show in
    the pixels of the plot. Control: drawn the naive way (filled, one shape and size) the
    later marks cover the earlier ones and gla's colour vanishes."""
    view = data.view(*world.COINCIDE)
    assert findings.coincident_estimators(view.priors) == {"prior-matching": "gla"}
    names = sorted(set(view.priors["estimator"].to_list()))  # eigen, gla, prior-matching
    gla_c, pm_c = (style.ESTIMATOR_COLORS[names.index(e)] for e in ("gla", "prior-matching"))
    fig = figures.prior_scatter(view)
    gla_px, pm_px = _colour_pixels(fig, gla_c), _colour_pixels(fig, pm_c)
    assert gla_px > 500 and pm_px > 500, (gla_px, pm_px)
    assert "prior-matching (= gla)" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    monkeypatch.setattr(style, "hollow", lambda k, c, dashed=False, points=0: {"marker": "o", "s": 60, "color": c})
    naive = figures.prior_scatter(view)
    assert _colour_pixels(naive, gla_c) < 0.05 * gla_px and _colour_pixels(naive, pm_c) > 500


def test_coinciding_methods_in_the_class_plot_are_hollow_and_distinct(data):
    ax = figures.class_accuracy(data.view(*world.COINCIDE)).axes[0]
    marks = ax.collections
    assert len(marks) == 3  # zs, zs_debiased, gla
    assert all(c.get_facecolor().size == 0 or (c.get_facecolor()[:, 3] == 0).all() for c in marks)
    assert len({float(c.get_sizes()[0]) for c in marks}) == 3
    assert len({c.get_paths()[0].vertices.round(6).tobytes() for c in marks}) == 3  # three shapes


def test_heatmap_leaves_out_rows_without_values_and_marks_gaps(data):
    from gla.pipeline.report import gain_table

    gains = gain_table(data.summary)
    ax = figures.heatmap(gains, "gain_gla_ft", "gla", "ft").axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["clip-a"]  # clip-b has no ft logits
    ax = figures.heatmap(gains, "gain_zs_debiased", "zs_debiased", "zs").axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["clip-a", "clip-b"]
    texts = [t.get_text() for t in ax.texts]
    assert texts.count("n/a") == 1  # clip-b × animals is not in the matrix
    assert len(texts) == 4


def test_cells_no_longer_in_the_config_are_flagged(data):
    text = render(data, figures_for=lambda v: {}, stale={("clip-a", "animals")})
    sec = section(text, "clip-a", "animals")
    assert "<code>not_in_config</code>" in sec and "gla prune" in sec
    overview = [rows for s, rows in parse(text).tables if s == "overview"][0]
    flags = {(r[0], r[1]): r[2] for r in overview[1:]}  # flags follow the cell name
    assert "not_in_config" in flags[("clip-a", "animals")] and "not_in_config" not in flags[("clip-a", "fashion")]
    assert "1 cell(s) in these results are no longer in the config" in text
    assert "no longer in the config" not in render(data, figures_for=lambda v: {})


def test_overview_names_the_cells_whose_calibration_gets_worse(data, page):
    worse = []
    for m, d, ft in world.CELLS:
        summ = data.summary.filter((pl.col("model") == m) & (pl.col("dataset") == d) & (pl.col("estimator") == "gla"))
        ece = dict(summ.select("method", "ece").iter_rows())
        base, after = ("ft", "gla") if ft else ("zs", "zs_debiased")
        if ece[after] > ece[base]:
            worse.append(f"{m} / {d}")
    sentence = page.split("Calibration: ECE is higher")[1].split("</p>")[0]
    assert f"in <b>{len(worse)} of {len(world.CELLS)}</b> cell(s)" in sentence
    assert all(c in sentence for c in worse) and (("cell(s) (" in sentence) == bool(worse))


def test_warnings_of_one_code_share_a_line(data):
    from gla.analyze import schema

    m, d = world.WARNED
    warn = schema.frame("warnings", [{"model": m, "dataset": d, "code": "small_group", "message": f"{g} group: 3 classes"}
                                     for g in ("head", "tail")])
    text = render(ReportData(store=data.store, tables={**data.tables, "warnings": warn}), figures_for=lambda v: {})
    box = section(text, m, d).split("<div class='warn'>")[1].split("</div>")[0]
    assert box.count("<li>") == 1
    assert "<li><code>small_group</code> (2): head group: 3 classes; tail group: 3 classes</li>" in box


def test_provenance_line_cuts_a_checkpoint_hash(data):
    prov = data.tables["provenance"].with_columns(pl.lit("ab" * 32).alias("model_weights"))
    text = render(ReportData(store=data.store, tables={**data.tables, "provenance": prov}), figures_for=lambda v: {})
    line = section(text, *world.COINCIDE).split("<p class='prov'>")[1].split("</p>")[0]
    assert f"model ViT-B-32 {'ab' * 6} ·" in line and "ab" * 7 not in line
