"""The HTML report: self-contained, and every number shown comes from the Parquet tables."""

from __future__ import annotations

import base64
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from gla.pipeline import publication
from gla.pipeline.cell_analysis import StoreAnalysisOptions
from gla.pipeline.errors import UserError
from gla.pipeline.report import gain_table, write_report
from gla.pipeline.synthetic import write_cell
from report_world import CELLS, make_store  # tests/ is on sys.path (rootdir import mode)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = make_store(tmp_path_factory.mktemp("rep") / "store")
    path, written = write_report(root)
    assert written
    return root, path, path.read_text()


class Page(HTMLParser):
    """Tables (rows of cell texts, by the id of the enclosing section) and attributes."""

    def __init__(self):
        super().__init__()
        self.tables: list[tuple[str, list[list[str]]]] = []
        self.imgs: list[str] = []
        self.urls: list[str] = []
        self.tags: set[str] = set()
        self._section = "overview"
        self._cell: list[str] | None = None
        self._row: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        if tag == "section":
            self._section = a.get("id", "")
        elif tag == "table":
            self.tables.append((self._section, []))
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.imgs.append(a.get("src", ""))
        for k in ("src", "href", "action", "data", "poster"):
            if k in a and tag != "img":
                self.urls.append(a[k])

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[-1][1].append(self._row)
            self._row = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def parse(text: str) -> Page:
    p = Page()
    p.feed(text)
    return p


def test_self_contained(report):
    _, path, text = report
    page = parse(text)
    assert path.name == "index.html" and path.parent.name == "report"
    assert "script" not in page.tags and "link" not in page.tags and "iframe" not in page.tags
    assert not re.search(r"https?://|ftp://|//[a-z0-9.-]+\.[a-z]{2,}/", text, re.I)
    assert all(u.startswith("#") for u in page.urls), page.urls
    assert "@import" not in text and "url(" not in text
    # Two heatmaps (gla − ft, zs_debiased − zs) + four one-panel figures per cell; each a
    # real PNG inlined as base64.
    assert len(page.imgs) == 2 + 4 * len(CELLS)
    for src in page.imgs:
        assert src.startswith("data:image/png;base64,")
        raw = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert raw[:8] == b"\x89PNG\r\n\x1a\n" and len(raw) > 2000


def _fmt(v):
    return "—" if v is None else f"{100 * v:.2f}"


def test_methods_tables_match_summary_parquet(report):
    root, _, text = report
    summary = publication.read_table(root, "summary")
    page = parse(text)
    sections = {}  # the first table of each cell section: its methods table
    for sec, rows in page.tables:
        if sec.startswith("cell-"):
            sections.setdefault(sec, rows)
    assert len(sections) == len(CELLS)
    for m, d, ft in CELLS:
        (sec,) = [s for s in sections if s == f"cell-{m}--{d}"]
        rows = sections[sec]
        header, body = rows[0], rows[1:]
        want = summary.filter((pl.col("model") == m) & (pl.col("dataset") == d))
        assert sorted(r[0] for r in body) == sorted(want["method"].to_list())
        assert ("gla" in want["method"].to_list()) == ft
        col = {h: i for i, h in enumerate(header)}
        for r in body:
            w = want.filter(pl.col("method") == r[0]).row(0, named=True)
            assert r[col["n"]] == str(w["n"])
            assert r[col["accuracy"]] == _fmt(w["accuracy"])
            assert r[col["balanced acc."]] == _fmt(w["balanced_accuracy"])
            assert r[col["tail"]] == _fmt(w["acc_tail"])
            assert r[col["ECE"]] == _fmt(w["ece"])
            assert r[col["NLL"]] == f"{w['nll']:.4f}"


def test_overview_gain_matches_tables(report):
    root, _, text = report
    summary = publication.read_table(root, "summary")
    overview = [rows for sec, rows in parse(text).tables if sec == "overview"][0]
    header, body = overview[0], overview[1:]
    col = {h: i for i, h in enumerate(header)}
    acc = {(r["model"], r["dataset"], r["method"]): r["accuracy"] for r in summary.iter_rows(named=True)}
    assert len(body) == len(CELLS)
    for r in body:
        m, d = r[col["model"]], r[col["dataset"]]
        if (m, d, "gla") in acc:
            assert r[col["gla − ft (pp)"]] == f"{100 * (acc[(m, d, 'gla')] - acc[(m, d, 'ft')]):+.2f}"
        else:
            assert r[col["gla − ft (pp)"]] == "—"
        assert r[col["zs_debiased − zs (pp)"]] == f"{100 * (acc[(m, d, 'zs_debiased')] - acc[(m, d, 'zs')]):+.2f}"
        assert r[col["gla"]] == _fmt(acc.get((m, d, "gla")))


def test_gain_table_independent_of_row_order(report):
    root, _, _ = report
    summary = publication.read_table(root, "summary")
    a = gain_table(summary)
    b = gain_table(summary.reverse())
    assert a.equals(b)


def test_rebuilt_only_when_tables_change(tmp_path):
    root = make_store(tmp_path / "store")
    path, written = write_report(root)
    assert written
    assert oct(path.stat().st_mode & 0o044) != "0o0"  # readable by others, not 0600
    assert write_report(root) == (path, False)
    make_store(root, StoreAnalysisOptions(estimators=("eigen",)))
    assert write_report(root) == (path, True)
    assert "prior estimators: eigen" in path.read_text()
    _, w = write_report(root, max_cells=1)
    assert w and path.read_text().count("<section class='cell") == 1


def test_missing_tables_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=r"results: no published run"):
        write_report(tmp_path)


def test_cli(report, tmp_path):
    root, _, _ = report
    out = tmp_path / "r.html"
    r = subprocess.run([sys.executable, "-m", "gla.pipeline.cli", "report", "--store", str(root), "--out", str(out)],
                       capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr
    assert out.exists() and f"wrote {out}" in r.stdout
    r = subprocess.run([sys.executable, "-m", "gla.pipeline.cli", "report", "--store", str(tmp_path / "nope")],
                       capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 2 and "store folder not found" in r.stderr


def test_calibration_table_matches_brute_force(report):
    """The reliability diagram's bins, recomputed with numpy from the stored zs logits."""
    import numpy as np
    from gla.pipeline.store import Store

    root, _, _ = report
    cal = publication.read_table(root, "calibration")
    assert set(cal.columns) >= {"model", "dataset", "method", "bin", "count", "confidence", "accuracy"}
    d = Store(root).read_split("clip-a", "fashion", "test")
    z = d.zs.astype(np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    conf, pred = p.max(1), p.argmax(1)
    b = np.clip(np.ceil(conf * 15).astype(int) - 1, 0, 14)  # bins (k/15, (k+1)/15]
    got = cal.filter((pl.col("model") == "clip-a") & (pl.col("dataset") == "fashion")
                     & (pl.col("method") == "zs")).sort("bin")
    assert got["count"].to_list() == np.bincount(b, minlength=15).tolist()
    for k, row in enumerate(got.iter_rows(named=True)):
        m = b == k
        if m.any():
            assert row["confidence"] == pytest.approx(conf[m].mean(), rel=1e-5)
            assert row["accuracy"] == pytest.approx((pred[m] == d.labels[m]).mean(), abs=1e-12)
        else:
            assert row["confidence"] is None and row["accuracy"] is None


def test_only_changed_cells_figures_are_redrawn(tmp_path):
    root = make_store(tmp_path / "store")
    path, _ = write_report(root)
    folder = path.parent / ".index.figures"
    before = {p.name for p in folder.glob("*.json")}  # one index of figures per cell
    assert len(before) == len(CELLS)
    assert len(list(folder.glob("*.png"))) == 4 * len(CELLS)
    write_cell(root, "clip-a", "animals", num_classes=12, fit_per_class=10, eval_rows=300, seed=9)
    make_store(root)
    _, written = write_report(root)
    after = {p.name for p in folder.glob("*.json")}
    assert len(list(folder.glob("*.png"))) == 4 * len(CELLS)  # the old cell's figures are gone
    assert written
    assert len(before - after) == 1 and len(after - before) == 1
    assert (after - before).pop().startswith("cell-clip-a--animals-")


def test_rendering_leaves_no_global_state(report, tmp_path):
    """Object API only: no pyplot, rcParams untouched, and the umask never changed."""
    root, _, _ = report
    code = f"""
import os, sys, matplotlib
before = dict(dict.items(matplotlib.rcParams))
def no_umask(*a):
    raise AssertionError("os.umask called")
os.umask = no_umask
from gla.pipeline.report import write_report
path, written = write_report({str(root)!r}, {str(tmp_path / 'r.html')!r})
assert written
assert "matplotlib.pyplot" not in sys.modules, "pyplot imported"
assert dict(dict.items(matplotlib.rcParams)) == before, "rcParams changed"
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "r.html").stat().st_mode & 0o777 == 0o666 & ~_current_umask()


def _current_umask() -> int:
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("Umask:")), 8)


def test_method_order_is_the_adjust_registry():
    from gla.analyze.adjust import METHODS
    from gla.pipeline.report import METHOD_ORDER

    assert METHOD_ORDER[: len(METHODS)] == tuple(METHODS)


# ----------------------------------------------------------------- a report that cannot mislead


@pytest.fixture(scope="module")
def data(report):
    from gla.pipeline.report import load_tables

    return load_tables(report[0])


def _with(data, **tables):
    """The same store's data with some tables replaced (or added)."""
    from gla.pipeline.report import ReportData

    return ReportData(store=data.store, tables={**data.tables, **tables})


def test_one_panel_per_figure_accuracy_axes_within_0_100(data):
    from gla.pipeline.report import figures

    for cell in data.cells():
        figs = figures.cell_figures(data.view(*cell))
        assert list(figs) == ["groups", "classes", "priors", "reliability"]
        for name, fig in figs.items():
            assert len(fig.axes) == 1, name  # one panel, no colour bar
        for name in ("groups", "classes", "reliability"):
            assert figs[name].axes[0].get_ylim() == (0.0, 100.0), name
        assert figs["reliability"].axes[0].get_xlim() == (0.0, 100.0)
        # The data really is in %, not fractions squeezed against the bottom.
        heights = [p.get_height() for p in figs["groups"].axes[0].patches]
        assert max(h for h in heights if h == h) > 1.0


def test_legends_are_outside_the_data_area(data):
    from gla.pipeline.report import figures

    for fig in figures.cell_figures(data.view("clip-a", "fashion")).values():
        fig.canvas.draw()
        ax = fig.axes[0]
        legend = ax.get_legend()
        assert legend is not None
        assert legend.get_window_extent().x0 >= ax.get_window_extent().x1 - 0.5


def test_each_heatmap_has_its_own_scale_centred_at_zero(data):
    from gla.pipeline.report import figures, gain_table
    from gla.pipeline.report.tables import GAINS

    gains = gain_table(data.summary)
    limits = []
    for col, method, baseline in GAINS:
        fig = figures.heatmap(gains, col, method, baseline)
        ax, bar = fig.axes  # the map and its own colour bar
        (im,) = ax.get_images()
        lo, hi = im.get_clim()
        assert lo == -hi
        assert hi == pytest.approx(max(0.05, 100 * gains.get_column(col).drop_nulls().abs().max()))
        assert bar.get_ylabel() == f"{method} − {baseline} (points)"
        assert ax.get_title() == f"acc({method}) − acc({baseline}), accuracy points"
        limits.append(hi)
    # Only clip-a has ft logits: gla − ft covers two cells, zs_debiased − zs all three.
    assert gains.get_column("gain_gla_ft").null_count() == 1
    assert gains.get_column("gain_zs_debiased").null_count() == 0


def _summary(rows):
    return pl.DataFrame(rows, schema={"model": pl.String, "dataset": pl.String, "method": pl.String,
                                      "accuracy": pl.Float64, "ece": pl.Float64, "nll": pl.Float64}, orient="row")


def test_calibration_change_is_stated_in_words():
    from gla.pipeline.report import findings
    from gla.pipeline.report.tables import CellView

    priors = pl.DataFrame({"estimator": ["gla"], "class_index": [0], "prior": [1.0]})
    worse = CellView("m", "d", "gla", {"summary": _summary([
        ("m", "d", "zs", 0.5, 0.02, 1.0), ("m", "d", "ft", 0.6, 0.10, 0.9), ("m", "d", "gla", 0.7, 0.15, 0.95),
    ])}, priors)
    text = findings.calibration_sentence(worse)
    assert text.startswith("Calibration is worse under GLA:")
    assert "rises from 10.00 % (fine-tuned) to 15.00 % (+5.00 points)" in text
    assert "NLL goes from 0.9000 to 0.9500" in text
    better = CellView("m", "d", "gla", {"summary": _summary([
        ("m", "d", "zs", 0.5, 0.12, 1.0), ("m", "d", "zs_debiased", 0.6, 0.05, 0.9),
    ])}, priors)
    text = findings.calibration_sentence(better)
    assert text.startswith("Calibration is better under zero-shot − log π̂p:")
    assert "falls from 12.00 % (zero-shot) to 5.00 % (-7.00 points)" in text


def test_calibration_sentence_in_each_cell_section(report):
    root, _, text = report
    summary = publication.read_table(root, "summary")
    for m, d, ft in CELLS:
        ece = {r["method"]: r["ece"] for r in summary.filter((pl.col("model") == m) & (pl.col("dataset") == d)).iter_rows(named=True)}
        base, after = ("ft", "gla") if ft else ("zs", "zs_debiased")
        section = text.split(f"id='cell-{m}--{d}'")[1].split("</section>")[0]
        assert f"from {100 * ece[base]:.2f} % " in section and f"to {100 * ece[after]:.2f} % " in section


def test_coinciding_and_non_converged_estimators_are_marked(data):
    from gla.pipeline.report import figures, findings

    pri = data.priors
    same = pri.filter(pl.col("estimator") == "gla").with_columns(pl.lit("prior-matching").alias("estimator"))
    if "converged" not in pri.columns:
        pri = pri.with_columns(pl.lit(True).alias("converged"), pl.lit("").alias("message"))
        same = same.with_columns(pl.lit(True).alias("converged"), pl.lit("").alias("message"))
    pri = pl.concat([pri, same.select(pri.columns)]).with_columns(
        pl.when(pl.col("estimator") == "eigen").then(False).otherwise(pl.col("converged")).alias("converged"),
        pl.when(pl.col("estimator") == "eigen").then(pl.lit("ran 3 iterations")).otherwise(pl.col("message")).alias("message"),
    )
    view = _with(data, priors=pri).view("clip-a", "fashion")
    assert findings.coincident_estimators(view.priors) == {"prior-matching": "gla"}
    assert findings.non_converged(view.priors) == {"eigen": "ran 3 iterations"}
    ax = figures.prior_scatter(view).axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "prior-matching (= gla)" in labels and "eigen — NOT converged" in labels
    marks = ax.collections
    assert len(marks) == 3
    assert all(c.get_facecolor().size == 0 or (c.get_facecolor()[:, 3] == 0).all() for c in marks)  # hollow
    assert len({c.get_sizes()[0] for c in marks}) == 3  # sizes differ: concentric, not hidden
    flags = [f for f in findings.cell_flags(view) if f.code == "not_converged"]
    assert len(flags) == 1 and "ran 3 iterations" in flags[0].message


def test_cells_with_warnings_are_visibly_marked(data):
    from gla.pipeline.report import render

    warnings = pl.DataFrame({"model": ["clip-b"], "dataset": ["fashion"], "code": ["uniform_pi_s"],
                             "message": ["no training counts: π_s is uniform, ft_la equals ft"]})
    text = render(_with(data, warnings=warnings), figures_for=lambda v: {})
    flagged = text.split("id='cell-clip-b--fashion'")[0].rsplit("<section", 1)[1]
    assert "flagged" in flagged
    section = text.split("id='cell-clip-b--fashion'")[1].split("</section>")[0]
    assert "class='warn'" in section and "no training counts: π_s is uniform" in section
    assert "<a href='#cell-clip-b--fashion'>⚠ clip-b / fashion</a>" in text
    assert "<a href='#cell-clip-a--fashion'>clip-a / fashion</a>" in text  # a clean cell is not marked
    overview = [rows for sec, rows in parse(text).tables if sec == "overview"][0]
    flags = {(r[0], r[1]): r[2] for r in overview[1:]}  # flags follow the cell name
    assert flags[("clip-b", "fashion")] == "⚠ uniform_pi_s" and flags[("clip-a", "fashion")] == ""


def test_class_gain_loss_table(data):
    from gla.pipeline.report import findings

    view = data.view("clip-a", "fashion")
    got = findings.class_changes(view)
    assert (got.method, got.baseline) == ("gla", "ft")
    pc = view.per_class
    acc = {(r["method"], r["class_index"]): r["accuracy"] for r in pc.iter_rows(named=True)}
    delta = {c: acc[("gla", c)] - acc[("ft", c)] for c in pc["class_index"].unique()}
    up = sorted((c for c in delta if delta[c] > 0), key=lambda c: (-delta[c], c))
    down = sorted((c for c in delta if delta[c] < 0), key=lambda c: (delta[c], c))
    assert got.gains(3)["class_index"].to_list() == up[:3]
    assert got.losses(3)["class_index"].to_list() == down[:3]
    assert got.gains(3)["delta"].to_list() == pytest.approx([delta[c] for c in up[:3]])
    same = sum(1 for v in delta.values() if v == 0)
    verb = "is" if same == 1 else "are"
    gla = pc.filter(pl.col("method") == "gla")  # the analysis's own BH flags against ft
    helped, hurt = int(gla["helps"].sum()), int(gla["hurts"].sum())
    assert got.sentence() == (f"Under GLA against fine-tuned, {len(up)} of {len(delta)} classes gain accuracy, "
                              f"{len(down)} lose and {same} {verb} unchanged. Significant after Benjamini–Hochberg "
                              f"control at 5 % across the classes: {helped} helped, {hurt} hurt.")


def test_the_analysis_gives_the_report_its_intervals(data, report):
    """The store's own tables (no planted columns): the methods table shows summary's
    accuracy interval and the class tables each class's paired interval and BH verdict."""
    text = report[2]
    methods, *class_tables = [r for sec, r in parse(text).tables if sec == "cell-clip-a--fashion"]
    class_tables = [t for t in class_tables if "Δ pp" in t[0]]  # gains, losses (one may be empty)
    summ = data.summary.filter((pl.col("model") == "clip-a") & (pl.col("dataset") == "fashion")
                               & (pl.col("estimator") == "gla") & (pl.col("method") == "gla")).row(0, named=True)
    gla = next(r for r in methods[1:] if r[0] == "gla")
    ci = methods[0].index("95 % CI")
    assert gla[ci] == f"[{100 * summ['accuracy_ci_low']:.2f}, {100 * summ['accuracy_ci_high']:.2f}]"
    pc = data.per_class.filter((pl.col("model") == "clip-a") & (pl.col("dataset") == "fashion")
                               & (pl.col("estimator") == "gla") & (pl.col("method") == "gla"))
    by_name = {r["class_name"]: r for r in pc.iter_rows(named=True)}
    for rows in class_tables:
        assert rows[0][-3:] == ["Δ pp", "95 % CI (pp)", "BH 5 %"]
        for row in rows[1:]:
            r = by_name[row[0]]
            assert r["baseline"] == "ft"
            assert row[-2] == f"[{100 * r['delta_ci_low']:+.2f}, {100 * r['delta_ci_high']:+.2f}]"
            assert row[-1] == ("helps" if r["helps"] else "hurts" if r["hurts"] else "")
    assert class_tables and sum(len(t) - 1 for t in class_tables) >= 3  # some classes are shown


# The per-class comparison columns the analysis writes (this test plants its own).
PER_CLASS_COMPARISON = ("baseline", "n_better", "n_worse", "delta", "delta_ci_low", "delta_ci_high",
                        "mcnemar_p", "q_value", "helps", "hurts")


def test_class_gain_loss_tables_show_per_class_intervals(data):
    from gla.pipeline.report import render

    plain_pc = data.per_class.drop([c for c in PER_CLASS_COMPARISON if c in data.per_class.columns])
    pc = plain_pc.with_columns(
        pl.when(pl.col("method") == "gla").then(pl.lit("ft")).alias("baseline"),
        pl.when(pl.col("method") == "gla").then(pl.col("class_index") / 100 - 0.05).alias("delta"),
        pl.when(pl.col("method") == "gla").then(pl.col("class_index") / 100 - 0.07).alias("delta_ci_low"),
        pl.when(pl.col("method") == "gla").then(pl.col("class_index") / 100 - 0.02).alias("delta_ci_high"),
    )
    text = render(_with(data, per_class=pc), figures_for=lambda v: {})
    section = _section(text, "clip-a", "fashion")
    gains, losses = [r for sec, r in parse(text).tables if sec == "cell-clip-a--fashion"][1:3]
    assert gains[0][-2:] == ["Δ pp", "95 % CI (pp)"]
    assert gains[1][-2:] == ["+6.00", "[+4.00, +9.00]"]  # class 11: delta 0.06
    assert [r[0] for r in gains[1:]] == [f"class_{k:04d}" for k in (11, 10, 9, 8, 7)]
    assert [r[0] for r in losses[1:]] == [f"class_{k:04d}" for k in (0, 1, 2, 3, 4)]
    assert losses[1][-2:] == ["-5.00", "[-7.00, -2.00]"]
    assert "6 of 12 classes gain accuracy, 5 lose and 1 is unchanged" in section
    assert "paired 95 % interval" in section
    plain = render(_with(data, per_class=plain_pc), figures_for=lambda v: {})
    assert "has no per-class intervals" in _section(plain, "clip-a", "fashion")


def test_one_provenance_line_per_cell(data):
    from gla.pipeline.report import render

    prov = pl.DataFrame([
        {"model": m, "dataset": d, "estimator": e, "fit_split": "val", "n_fit": 120, "eval_split": "test",
         "n_eval": 600, "temperature": 1.0, "smoothing": 0.0, "code_version": "abcdef0123456789ffff"}
        for m, d, _ in CELLS for e in ("gla", "eigen")
    ])
    text = render(_with(data, provenance=prov), figures_for=lambda v: {})
    assert text.count("<p class='prov'>") == len(CELLS)
    line = text.split("id='cell-clip-a--fashion'")[1].split("<p class='prov'>")[1].split("</p>")[0]
    assert line.startswith("provenance: fit on val (n = 120) · scored on test (n = 600) · estimator gla")
    assert "code abcdef012345 " not in line and line.endswith("code abcdef012345")
    real = render(data, figures_for=lambda v: {})  # the store's own provenance table
    assert real.count("<p class='prov'>provenance: fit on val") == len(CELLS)
    plain = render(_with(data, provenance=None), figures_for=lambda v: {})
    assert plain.count("provenance: not recorded") == len(CELLS)


def test_overview_gains_carry_the_comparisons_intervals(data):
    from gla.pipeline.report import render

    comp = pl.DataFrame([
        {"model": m, "dataset": d, "estimator": "gla", "method": meth, "baseline": base,
         "delta_ci_low": -0.01 * (i + 1), "delta_ci_high": 0.02 * (i + 1)}
        for i, (m, d, _) in enumerate(CELLS) for meth, base in (("gla", "ft"), ("zs_debiased", "zs"))
    ])
    text = render(_with(data, comparisons=comp), figures_for=lambda v: {})
    overview = [rows for sec, rows in parse(text).tables if sec == "overview"][0]
    header = overview[0]
    i = header.index("gla − ft (pp)")
    assert header[i + 1] == "95 % CI (pp)" and header[i + 3] == "95 % CI (pp)"
    rows = {(r[0], r[1]): r for r in overview[1:]}
    assert rows[("clip-a", "animals")][i + 1] == "[-2.00, +4.00]"  # CELLS[1]
    assert rows[("clip-a", "fashion")][i + 3] == "[-1.00, +2.00]"


def test_per_sample_tables_are_not_read():
    from gla.pipeline.report.tables import READ

    assert "predictions" not in READ and {"summary", "per_class", "priors", "warnings"} <= set(READ)


def _visible_texts(fig):
    """Every drawn label of a one-panel figure: title, axis labels, tick labels in view,
    legend entries and texts on the axes, with their boxes in display pixels."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    out = []
    for ax in fig.axes:
        texts = [ax.title, ax.xaxis.label, ax.yaxis.label, *ax.texts]
        for axis, (lo, hi) in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
            lo, hi = min(lo, hi), max(lo, hi)
            ticks = [*axis.get_major_ticks(), *axis.get_minor_ticks()]
            texts += [t.label1 for t in ticks if lo <= t.get_loc() <= hi]
        if ax.get_legend():
            texts += [*ax.get_legend().get_texts(), ax.get_legend().get_title()]
        out += [(t.get_text(), t.get_window_extent(renderer)) for t in texts if t.get_visible() and t.get_text()]
    return out


def test_no_overlapping_text_in_any_figure(data):
    from gla.pipeline.report import figures, gain_table
    from gla.pipeline.report.tables import GAINS

    control = figures.new_figure(3, 2)
    ax = control.add_subplot()
    ax.set_title("a planted clash")
    ax.text(0.5, 1.02, "over the title", transform=ax.transAxes, ha="center")
    assert any(ba.overlaps(bb) for i, (_, ba) in enumerate(_visible_texts(control))
               for _, bb in _visible_texts(control)[i + 1:])
    gains = gain_table(data.summary)
    figs = [figures.heatmap(gains, col, m, b) for col, m, b in GAINS]
    for cell in data.cells():
        figs += figures.cell_figures(data.view(*cell)).values()
    # A cell with four classes: log axes spanning less than a decade (minor tick labels).
    few = _with(data, per_class=data.per_class.filter(pl.col("class_index") < 4),
                priors=data.priors.filter(pl.col("class_index") < 4))
    figs += figures.cell_figures(few.view("clip-a", "fashion")).values()
    for fig in figs:
        boxes = _visible_texts(fig)
        assert len(boxes) >= 5
        clashes = [(a, b) for i, (a, ba) in enumerate(boxes) for b, bb in boxes[i + 1:] if ba.overlaps(bb)]
        assert clashes == [], clashes


# ----------------------------------------------------------------- sections of the audit tables


def _section(text, model, dataset):
    return text.split(f"id='cell-{model}--{dataset}'")[1].split("</section>")[0]


def _target_priors(model, dataset, n_classes=12):
    rows = []
    for e, bump in (("em", 0.30), ("bbse", 0.20)):
        prior = [bump if c == 3 else (1 - bump) / (n_classes - 1) for c in range(n_classes)]
        share = [0.25 if c == 3 else 0.75 / (n_classes - 1) for c in range(n_classes)]
        for window in (None, "2024-01"):
            rows += [{"model": model, "dataset": dataset, "estimator": "gla", "target_estimator": e,
                      "split": "test", "window": window, "window_index": -1 if window is None else 0,
                      "class_index": c, "class_name": f"class_{c:04d}", "prior": prior[c],
                      "label_share": share[c], "converged": e == "em"} for c in range(n_classes)]
    return pl.DataFrame(rows)


def test_label_shift_section_only_with_its_table(data):
    from gla.pipeline.report import render

    plain = render(data, figures_for=lambda v: {})
    assert "Label shift" not in plain and "Label issues" not in plain and "Distribution shift" not in plain
    empty = _target_priors("clip-a", "fashion").clear()
    assert "Label shift" not in render(_with(data, target_priors=empty), figures_for=lambda v: {})
    text = render(_with(data, target_priors=_target_priors("clip-a", "fashion")), figures_for=lambda v: {})
    section = _section(text, "clip-a", "fashion")
    assert "Label shift" in section and "Label shift" not in _section(text, "clip-a", "animals")
    # TV(em) = 0.5 * (|0.30 - 0.25| + 11 * |0.7/11 - 0.75/11|) = 0.05; TV(bbse) = 0.05 too.
    assert "Total variation distance between π̂t and the labelled class shares: bbse 0.050, em 0.050." in section
    rows = [r for sec, r in parse(text).tables if sec == "cell-clip-a--fashion"][2]
    assert rows[0] == ["class", "π̂t (bbse)", "π̂t (em)", "labelled share"]
    assert rows[1] == ["class_0003", "0.2000", "0.3000", "0.2500"]  # farthest from uniform first
    assert "did not converge: bbse" in section


def test_label_issues_section(data):
    from gla.pipeline.report import render

    li = pl.DataFrame({"model": "clip-a", "dataset": "fashion", "estimator": "gla", "split": "test",
                       "sample_id": ["s1", "s2", "s3"], "label": [0, 1, 2], "suggested_label": [5, 6, 7],
                       "score": [-9.0, -8.0, -1.0], "p_value": [0.001, 0.0005, 0.4], "flagged": [True, True, False]})
    cc = pl.DataFrame({"model": "clip-a", "dataset": "fashion", "estimator": "gla", "split": "test",
                       "label": [0, 1], "label_name": ["class_0000", "class_0001"], "suggested_label": [5, 6],
                       "suggested_name": ["class_0005", "class_0006"], "count": [3, 7], "n_flagged": [1, 1],
                       "n_tested": [600, 600]})
    text = render(_with(data, label_issues=li, class_confusions=cc), figures_for=lambda v: {})
    section = _section(text, "clip-a", "fashion")
    assert "2 label(s) of 600 labelled samples flagged as likely wrong" in section
    tables = [r for sec, r in parse(text).tables if sec == "cell-clip-a--fashion"]
    samples, pairs = tables[2], tables[3]
    assert [r[0] for r in samples[1:]] == ["s2", "s1"]  # strongest evidence first; s3 not flagged
    assert samples[1][1:3] == ["class_0001", "class_0006"]
    assert pairs[1][:3] == ["class_0001", "class_0006", "7"]


def test_distribution_shift_section(data):
    from gla.pipeline.report import render

    rob = pl.DataFrame({"model": "clip-a", "dataset": "fashion-sketch", "estimator": "gla",
                        "method": ["gla", "ft"], "accuracy": [0.5, 0.4], "source_dataset": "fashion",
                        "source_accuracy": [0.7, 0.6], "accuracy_drop": [0.2, 0.2]})
    text = render(_with(data, robustness=rob), figures_for=lambda v: {})
    assert "<h2 id='shift'>Distribution shift</h2>" in text
    rows = [r for sec, r in parse(text).tables if sec == "overview"][1]
    assert rows[0] == ["model", "source", "shifted set", "ft", "gla", "ft: change from source (pp)",
                       "gla: change from source (pp)"]
    assert rows[1] == ["clip-a", "fashion", "fashion-sketch", "40.00", "50.00", "-20.00", "-20.00"]


def test_kshot_section_and_figure(data):
    from gla.pipeline.report import figures, render

    ks = pl.DataFrame([{"model": "clip-a", "dataset": "fashion", "estimator": "gla", "shots": k, "method": m,
                        "accuracy": acc} for k, base in ((1, 0.3), (4, 0.5), (16, 0.7))
                       for m, acc in (("ft", base), ("gla", base + 0.1))])
    withk = _with(data, kshot=ks)
    text = render(withk, figures_for=lambda v: {})
    assert "Few-shot sweep" in _section(text, "clip-a", "fashion")
    assert "Few-shot sweep" not in _section(text, "clip-a", "animals")
    rows = [r for sec, r in parse(text).tables if sec == "cell-clip-a--fashion"][2]
    assert rows[0] == ["shots per class", "ft", "gla"] and rows[3] == ["16", "70.00", "80.00"]
    figs = figures.cell_figures(withk.view("clip-a", "fashion"))
    ax = figs["kshot"].axes[0]
    assert ax.get_ylim() == (0.0, 100.0)
    assert [line.get_ydata().tolist() for line in ax.get_lines()] == [[30.0, 50.0, 70.0], [40.0, 60.0, 80.0]]
    assert "kshot" not in figures.cell_figures(data.view("clip-a", "fashion"))


def test_methods_table_shows_the_accuracy_interval(data):
    from gla.pipeline.report import render

    summ = data.summary.with_columns((pl.col("accuracy") - 0.01).alias("accuracy_ci_low"),
                                     (pl.col("accuracy") + 0.02).alias("accuracy_ci_high"))
    text = render(_with(data, summary=summ), figures_for=lambda v: {})
    rows = [r for sec, r in parse(text).tables if sec == "cell-clip-a--fashion"][0]
    col = rows[0].index("95 % CI")
    assert rows[0][col - 1] == "accuracy"
    acc = {r["method"]: r["accuracy"] for r in summ.filter(
        (pl.col("model") == "clip-a") & (pl.col("dataset") == "fashion")).iter_rows(named=True)}
    for r in rows[1:]:
        assert r[col] == f"[{100 * acc[r[0]] - 1:.2f}, {100 * acc[r[0]] + 2:.2f}]"


def test_diff_section_against_the_run_before(tmp_path):
    """After a second analysis the report shows what changed since the run before, when
    the store keeps that run (gla diff's default pair), and only then; diff=False
    leaves the section out."""
    from gla.pipeline import rundiff

    root = make_store(tmp_path / "store")
    write_cell(root, "clip-a", "animals", num_classes=12, fit_per_class=10, eval_rows=300, seed=9)
    make_store(root)
    try:
        label, before = rundiff.resolve(root, "previous")
    except UserError:  # a store without run history has no run before
        label = before = None
    path, written = write_report(root)
    text = path.read_text()
    assert written and ("Changes since the previous run" in text) == (before is not None)
    if before is not None:
        section = text.split("<h2 id='changes'>")[1].split("<h2")[0]
        assert f"run {label} →" in section and "Accuracy of gla per cell" in section
        old = before["summary"].filter((pl.col("model") == "clip-a") & (pl.col("dataset") == "animals")
                                       & (pl.col("method") == "gla"))["accuracy"][0]
        rows = [r for s, t in parse(section).tables for r in t]
        row = next(r for r in rows if r[:4] == ["clip-a/animals", "gla", "gla", "accuracy"])
        assert row[4] == f"{100 * old:.2f}"
    path, written = write_report(root, diff=False)
    assert written and "Changes since the previous run" not in path.read_text()


def test_shift_trajectory_figure_over_windows(data):
    """π̂t per window for the classes that move most, in window order, dashed labelled
    shares beside; no text of the figure overlaps another."""
    from gla.pipeline.report import figures

    windows, C = ("2024-01", "2024-02", "2024-03"), 8
    rows = []
    for w, name in enumerate(windows):
        prior = np.full(C, 0.5 / (C - 2))
        prior[2], prior[5] = 0.1 + 0.15 * w, 0.4 - 0.15 * w  # the two classes that move
        for e in ("em", "bbse"):
            rows += [{"model": "clip-a", "dataset": "fashion", "estimator": "gla", "target_estimator": e,
                      "split": "test", "window": name, "window_index": w, "class_index": c,
                      "class_name": f"class_{c:04d}", "prior": float(prior[c]), "label_share": float(prior[c]),
                      "converged": True} for c in range(C)]
    view = _with(data, target_priors=pl.DataFrame(rows)).view("clip-a", "fashion")
    fig = figures.shift_trajectory(view)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == list(windows)
    solid = [ln for ln in ax.get_lines() if ln.get_linestyle() == "-"]
    assert len(solid) == figures.TRAJECTORY_CLASSES
    assert [ln.get_label() for ln in solid[:2]] == ["class_0002", "class_0005"]  # largest range first
    np.testing.assert_allclose(solid[0].get_ydata(), [0.1, 0.25, 0.4])
    assert len([ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]) == figures.TRAJECTORY_CLASSES
    assert "(em)" in ax.get_title()
    boxes = _visible_texts(fig)
    assert [(a, b) for i, (a, ba) in enumerate(boxes) for b, bb in boxes[i + 1:] if ba.overlaps(bb)] == []
    assert figures.shift_trajectory(data.view("clip-a", "fashion")) is None  # no windows, no figure
