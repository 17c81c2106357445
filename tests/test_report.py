"""The HTML report: self-contained, and every number shown comes from the Parquet tables."""

from __future__ import annotations

import base64
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import polars as pl
import pytest
from gla.pipeline.cell_analysis import StoreAnalysisOptions
from gla.pipeline.errors import UserError
from gla.pipeline.incremental import analyze_cells
from gla.pipeline.report import gain_table, write_report
from gla.pipeline.runner import Runner
from gla.pipeline.synthetic import write_cell

REPO = Path(__file__).resolve().parent.parent
CELLS = [("clip-a", "fashion", True), ("clip-a", "animals", True), ("clip-b", "fashion", False)]


def make_store(root: Path, options=None) -> Path:
    for i, (m, d, ft) in enumerate(CELLS):
        if not (root / "logits" / m / d).exists():
            write_cell(root, m, d, num_classes=12, fit_per_class=10, eval_rows=600, seed=i, ft=ft)
    analyze_cells(root, options or StoreAnalysisOptions(estimators=("gla", "eigen")),
                  runner=Runner(workers=0, quiet=True))
    return root


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
    # One heatmap + one figure per cell; each a real PNG inlined as base64.
    assert len(page.imgs) == 1 + len(CELLS)
    for src in page.imgs:
        assert src.startswith("data:image/png;base64,")
        raw = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert raw[:8] == b"\x89PNG\r\n\x1a\n" and len(raw) > 2000


def _fmt(v):
    return "—" if v is None else f"{100 * v:.2f}"


def test_methods_tables_match_summary_parquet(report):
    root, _, text = report
    summary = pl.read_parquet(root / "results" / "summary.parquet")
    page = parse(text)
    sections = {sec: rows for sec, rows in page.tables if sec.startswith("cell-")}
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
    summary = pl.read_parquet(root / "results" / "summary.parquet")
    overview = [rows for sec, rows in parse(text).tables if sec == "overview"][0]
    header, body = overview[0], overview[1:]
    col = {h: i for i, h in enumerate(header)}
    acc = {(r["model"], r["dataset"], r["method"]): r["accuracy"] for r in summary.iter_rows(named=True)}
    assert len(body) == len(CELLS)
    for r in body:
        m, d = r[col["model"]], r[col["dataset"]]
        if (m, d, "gla") in acc:
            gain, of = acc[(m, d, "gla")] - acc[(m, d, "ft")], "gla − ft"
        else:
            gain, of = acc[(m, d, "zs_debiased")] - acc[(m, d, "zs")], "zs_debiased − zs"
        assert r[col["GLA gain (pp)"]] == f"{100 * gain:+.2f}"
        assert r[col["gain of"]] == of
        assert r[col["GLA"]] == _fmt(acc.get((m, d, "gla")))


def test_gain_table_independent_of_row_order(report):
    root, _, _ = report
    summary = pl.read_parquet(root / "results" / "summary.parquet")
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
    assert "estimators: eigen</p>" in path.read_text()
    _, w = write_report(root, max_cells=1)
    assert w and path.read_text().count("<section class='cell'") == 1


def test_missing_tables_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=r"summary.parquet: not found"):
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
    cal = pl.read_parquet(root / "results" / "calibration.parquet")
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
    before = {p.name for p in folder.glob("*.png")}
    assert len(before) == len(CELLS)
    write_cell(root, "clip-a", "animals", num_classes=12, fit_per_class=10, eval_rows=300, seed=9)
    make_store(root)
    _, written = write_report(root)
    after = {p.name for p in folder.glob("*.png")}
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
