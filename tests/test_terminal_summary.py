"""The terminal summary of gla analyze / gla run: fits 100 columns, bounded, and its
rankings and figures are the published tables' (recomputed here with polars)."""

from __future__ import annotations

import io
import json
import re

import polars as pl
import pytest
from gla.pipeline import publication
from gla.pipeline import terminal_summary as ts
from gla.pipeline.cli import main
from gla.pipeline.synthetic import write_cell, write_matrix


@pytest.fixture(scope="module")
def store50(tmp_path_factory):
    store = tmp_path_factory.mktemp("s50") / "s"
    write_matrix(store, 5, 10, num_classes=12, fit_per_class=5, eval_rows=240)
    for i in range(3):  # three cells without training counts: uniform_train_prior
        write_cell(store, "model-9", f"raw-{i}", num_classes=12, fit_per_class=5, eval_rows=240,
                   seed=90 + i, counts=False)
    assert main(["analyze", "--store", str(store), "--workers", "0", "--quiet"]) == 0
    return store


def _gains(store) -> pl.DataFrame:
    """gla − ft accuracy per cell, from the published summary (independent of the module)."""
    s = publication.read_table(store, "summary")
    acc = s.pivot(on="method", index=["model", "dataset"], values="accuracy", aggregate_function="first")
    tail = s.filter(pl.col("method") == "gla").select("model", "dataset", "acc_tail")
    return acc.join(tail, on=["model", "dataset"]).with_columns(
        (pl.col("gla") - pl.col("ft")).alias("gain"), pl.concat_str("model", pl.lit("/"), "dataset").alias("cell"))


def _section(lines: list[str], title: str) -> list[list[str]]:
    """Data rows (split into fields) of one ranking section."""
    i = next(k for k, line in enumerate(lines) if line.startswith(title))
    rows = []
    for line in lines[i + 3:]:  # title, header, rule
        if not re.match(r"^\S+/\S+\s+(\S+\s+)?\d", line):  # cell [est] n ...
            break
        rows.append(line.split())
    return rows


def _gain_ci(r: list[str]) -> tuple[float, float]:
    """The "[lo, hi]" after the gain (fields 7 and 8 of a ranking row)."""
    assert r[7].startswith("[") and r[8].endswith("]"), r
    return float(r[7][1:-1]), float(r[8][:-1])


def _tail(r: list[str]) -> float:
    return float(r[9] if r[7].startswith("[") else r[7])


def test_50_cells_fit_100_columns_and_rank_like_the_tables(store50, capsys):
    capsys.readouterr()
    assert main(["analyze", "--store", str(store50), "--workers", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines) <= 100
    assert len(lines) <= 45  # bounded: 53 cells, ~250 warnings
    g = _gains(store50)
    best, worst = _section(lines, "best 5 cells by gain"), _section(lines, "worst 5 cells by gain")
    tails = _section(lines, "weakest 5 tails")
    assert len(best) == len(worst) == len(tails) == 5
    gain_col = 6  # cell n zs ft ft_la gla gain tail warn
    top = sorted(g["gain"].to_list(), reverse=True)[:5]
    assert [float(r[gain_col]) for r in best] == pytest.approx([round(100 * v, 1) for v in top], abs=0.051)
    low = sorted(g["gain"].to_list())[:5]
    assert [float(r[gain_col]) for r in worst] == pytest.approx([round(100 * v, 1) for v in low], abs=0.051)
    weakest = sorted(g["acc_tail"].to_list())[:5]
    assert [_tail(r) for r in tails] == pytest.approx([round(100 * v, 1) for v in weakest], abs=0.051)
    comp = publication.read_table(store50, "comparisons").filter(
        (pl.col("method") == "gla") & (pl.col("baseline") == "ft"))
    for r in best + worst:  # the gain's paired interval is the comparisons table's
        m, d = r[0].split("/")
        c = comp.filter((pl.col("model") == m) & (pl.col("dataset") == d)).row(0, named=True)
        assert _gain_ci(r) == pytest.approx((round(100 * c["delta_ci_low"], 1), round(100 * c["delta_ci_high"], 1)),
                                            abs=0.051)
    for r in best:  # each row's figures are its cell's
        row = g.filter(pl.col("cell") == r[0]).row(0, named=True)
        assert [float(x) for x in r[2:6]] == pytest.approx([round(100 * row[m], 1) for m in ts.SHOWN], abs=0.051)
    warn = publication.read_table(store50, "warnings")
    cells = warn.select("model", "dataset").unique().height
    assert f"warnings: {warn.height} in {cells} cell(s)" in lines
    for code, k in warn.group_by("code").agg(pl.len()).iter_rows():  # one digest line per code
        assert any(line.startswith(f"  {code} ×{k} in ") for line in lines)


def test_json_summary_carries_every_cells_metrics(store50, capsys):
    capsys.readouterr()
    assert main(["analyze", "--store", str(store50), "--workers", "0", "--json"]) == 0
    out = capsys.readouterr().out
    doc = json.loads(out)  # stdout is the JSON document alone
    s = publication.read_table(store50, "summary")
    assert len(doc["cells"]) == 53 and sorted(doc["unchanged"]) == sorted(c["cell"] for c in doc["cells"])
    for c in doc["cells"]:
        rows = s.filter((pl.col("model") == c["model"]) & (pl.col("dataset") == c["dataset"]))
        for r in rows.iter_rows(named=True):
            got = c["metrics"][r["method"]]
            assert got["accuracy"] == r["accuracy"] and got["nll"] == r["nll"] and got["n"] == r["n"]
        assert c["gain"]["delta"] == pytest.approx(c["metrics"]["gla"]["accuracy"] - c["metrics"]["ft"]["accuracy"])
    g = _gains(store50)
    assert [g.filter(pl.col("cell") == n)["gain"][0] for n in doc["rankings"]["best"]] == \
        sorted(g["gain"].to_list(), reverse=True)[:5]
    warn = publication.read_table(store50, "warnings")
    assert doc["warnings"]["total"] == warn.height
    assert doc["warnings"]["by_code"] == dict(warn.group_by("code").agg(pl.len()).iter_rows())
    assert doc["warnings"]["by_code"]["uniform_train_prior"] == 3


def test_few_cells_are_listed_whole_with_every_warning(tmp_path, capsys):
    write_cell(tmp_path, "m", "a", num_classes=30, eval_rows=3000)
    write_cell(tmp_path, "m", "b", num_classes=12, eval_rows=300, counts=False, seed=3)
    assert main(["analyze", "--store", str(tmp_path), "--workers", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = _section(lines, "cells by gain")
    g = _gains(tmp_path).sort("gain", descending=True)
    assert [r[0] for r in rows] == g["cell"].to_list()
    warn = publication.read_table(tmp_path, "warnings")
    assert 0 < warn.height <= ts.MAX_WARNINGS
    for r in warn.iter_rows(named=True):  # each warning in the terminal (cut at 100 columns)
        shown = f"  {r['model']}/{r['dataset']} {r['code']}: {r['message']}"
        assert any(line == shown or (line.endswith("…") and shown.startswith(line[:-1])) for line in lines)


def test_narrow_console_shrinks_and_no_cell_no_crash(store50):
    from gla.pipeline.incremental import load_cache
    from gla.pipeline.store import Store

    st = Store(store50)
    tables = ts.concat_cells(load_cache(store50, m, d)["tables"] for m, d in st.cells())
    buf = io.StringIO()
    ts.render(tables, ts.console(width=80, file=buf), str(store50))
    assert max(len(line) for line in buf.getvalue().splitlines()) <= 80
    empty = io.StringIO()
    ts.render(ts.concat_cells([]), ts.console(file=empty))
    assert empty.getvalue().strip().splitlines()[0] == "no scored cells"


def test_gla_run_prints_the_summary_and_json_carries_it(tmp_path, capsys):
    for i, d in enumerate(("da", "db")):
        write_cell(tmp_path / "store", "ma", d, num_classes=6, fit_per_class=8, eval_rows=300, seed=i)
    cfg = tmp_path / "run.toml"
    cfg.write_text('store = "store"\n[compute]\nworkers = 0\n[[models]]\nname = "ma"\narch = "x"\n'
                   'pretrained = "none"\n[[datasets]]\nname = "da"\nkind = "imagefolder"\n'
                   '[[datasets]]\nname = "db"\nkind = "imagefolder"\n')
    assert main(["run", str(cfg), "--stages", "analyze", "--no-progress"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("2 cell(s), estimator gla") and max(map(len, out)) <= 100
    assert [r[0] for r in _section(out, "cells by gain")] == \
        _gains(tmp_path / "store").sort("gain", descending=True)["cell"].to_list()
    assert main(["run", str(cfg), "--stages", "analyze", "--no-progress", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert sorted(c["cell"] for c in doc["summary"]["cells"]) == ["ma/da", "ma/db"]


def test_intervals_and_several_estimators_still_fit(store50):
    """With comparisons' intervals and two estimators per cell (the widest form)."""
    from gla.pipeline.incremental import load_cache
    from gla.pipeline.store import Store

    tables = ts.concat_cells(load_cache(store50, m, d)["tables"] for m, d in Store(store50).cells())
    other = tables["summary"].with_columns(  # a second estimator whose gla gains 20 points less
        pl.lit("eigen-iterated").alias("estimator"),
        pl.when(pl.col("method") == "gla").then(pl.col("accuracy") - 0.2).otherwise(pl.col("accuracy")))
    summary = pl.concat([tables["summary"], other])
    g = _gains(store50)
    comp = g.select("model", "dataset", pl.lit("gla").alias("estimator"), pl.lit("gla").alias("method"),
                    pl.lit("ft").alias("baseline"), (pl.col("gain") - 0.0123).alias("delta_ci_low"),
                    (pl.col("gain") + 0.0456).alias("delta_ci_high"))
    buf = io.StringIO()
    ts.render({**tables, "summary": summary, "comparisons": comp}, ts.console(file=buf), "S" * 120)
    lines = buf.getvalue().splitlines()
    assert max(map(len, lines)) <= 100 and len(lines) <= 45
    best = _section(lines, "best 5 cells by gain")
    assert [r[1] for r in best] == ["gla"] * 5  # est column; eigen-iterated rows have no interval
    row = g.filter(pl.col("cell") == best[0][0]).row(0, named=True)
    assert " ".join(best[0][7:10]) == (f"{100 * row['gain']:+.1f} [{100 * (row['gain'] - 0.0123):+.1f}, "
                                        f"{100 * (row['gain'] + 0.0456):+.1f}]")
