"""The terminal summary of ``gla analyze`` and ``gla run``: long format, bounded, ≤ 100 columns.

One row per cell (model × dataset × estimator) instead of a column per cell, so the width
does not grow with the matrix; and only the best and worst cells by gla gain, the
weakest tails and the first warnings, so the length does not either. Small matrices
(≤ 2 × ``top`` cells) are listed whole. ``--json`` gets :func:`as_json`: every cell with
its metrics, the same rankings by name, and the warnings.

The gain is ``gla − ft`` (accuracy) with its paired 95 % interval from ``comparisons``
when that table has it; when no cell has fine-tuned logits it is ``zs_debiased − zs``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import polars as pl
from gla.analyze import schema
from gla.pipeline.errors import UserError
from gla.pipeline.incremental import load_cache
from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

WIDTH = 100
TOP = 5  # cells per ranking
MAX_WARNINGS = 8  # warning lines shown (then a count and where to see them all)
SHOWN = ("zs", "ft", "ft_la", "gla")  # accuracy columns of a row
CELL_KEYS = ("model", "dataset", "estimator")


def _pair(summary: pl.DataFrame) -> tuple[str, str]:
    methods = set(summary["method"].to_list())
    return ("gla", "ft") if "gla" in methods else ("zs_debiased", "zs")


def cell_frame(tables: Mapping[str, pl.DataFrame | None]) -> pl.DataFrame:
    """One row per cell: n, accuracies of SHOWN, the gain with its interval, the gained
    method's tail accuracy, and the cell's warning count."""
    summary = tables["summary"].filter(pl.col("target_estimator").fill_null("") == "")
    method, base = _pair(summary)
    acc = summary.pivot(on="method", index=list(CELL_KEYS), values="accuracy", aggregate_function="first")
    for m in {*SHOWN, method, base} - set(acc.columns):
        acc = acc.with_columns(pl.lit(None, dtype=pl.Float64).alias(m))
    main = summary.filter(pl.col("method") == method).select(
        *CELL_KEYS, "split", "n", pl.col("acc_tail").alias("tail"))
    df = acc.join(main, on=list(CELL_KEYS), how="left").with_columns(
        (pl.col(method) - pl.col(base)).alias("gain"))
    comp = tables.get("comparisons")
    if comp is not None and {"delta_ci_low", "delta_ci_high"} <= set(comp.columns) and comp.height:
        ci = comp.filter((pl.col("method") == method) & (pl.col("baseline") == base)).select(
            *CELL_KEYS, pl.col("delta_ci_low").alias("gain_ci_low"), pl.col("delta_ci_high").alias("gain_ci_high"))
        df = df.join(ci, on=list(CELL_KEYS), how="left")
    else:
        df = df.with_columns(pl.lit(None, dtype=pl.Float64).alias(c) for c in ("gain_ci_low", "gain_ci_high"))
    warn = tables.get("warnings")
    counts = (warn.group_by("model", "dataset").agg(pl.len().alias("warnings"))
              if warn is not None and warn.height else
              pl.DataFrame(schema={"model": pl.String, "dataset": pl.String, "warnings": pl.UInt32}))
    df = df.join(counts, on=["model", "dataset"], how="left").with_columns(pl.col("warnings").fill_null(0))
    return df.sort(CELL_KEYS).with_columns(pl.lit(method).alias("gain_method"), pl.lit(base).alias("gain_baseline"))


def _pct(v: float | None, sign: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{100 * v:+.1f}" if sign else f"{100 * v:.1f}"


def _table(title: str, rows: pl.DataFrame, multi_estimator: bool) -> Table:
    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
              show_edge=False, expand=False, title_style="bold")
    t.add_column("cell", no_wrap=True, overflow="ellipsis", max_width=38 if multi_estimator else 44)
    if multi_estimator:
        t.add_column("est", no_wrap=True, overflow="ellipsis", max_width=10)
    has_ci = rows["gain_ci_low"].is_not_null().any()
    t.add_column("n", justify="right", no_wrap=True, min_width=6)
    for m in SHOWN:
        t.add_column(m, justify="right", no_wrap=True, min_width=5)
    t.add_column("gain [95 % CI]" if has_ci else "gain", justify="right", no_wrap=True,
                 min_width=20 if has_ci else 5)
    t.add_column("tail", justify="right", no_wrap=True, min_width=5)
    t.add_column("warn", justify="right", no_wrap=True, min_width=4)
    for r in rows.iter_rows(named=True):
        ci = (f" [{_pct(r['gain_ci_low'], True)}, {_pct(r['gain_ci_high'], True)}]"
              if r["gain_ci_low"] is not None else "")
        cells = [f"{r['model']}/{r['dataset']}", *([r["estimator"]] if multi_estimator else [])]
        cells += [str(r["n"] if r["n"] is not None else "–"), *(_pct(r[m]) for m in SHOWN),
                  _pct(r["gain"], True) + ci, _pct(r["tail"]), str(r["warnings"] or "")]
        t.add_row(*cells)
    return t


def rankings(df: pl.DataFrame, top: int = TOP) -> dict[str, pl.DataFrame]:
    """best / worst cells by gain, and the weakest tails (all cells when few)."""
    def by(col: str, descending: bool = False) -> pl.DataFrame:  # ties: by cell, so output is stable
        return df.sort([col, *CELL_KEYS], descending=[descending, False, False, False], nulls_last=True)

    if df.height <= 2 * top:
        return {"cells": by("gain", descending=True)}
    return {"best": by("gain", descending=True).head(top),
            "worst": by("gain").filter(pl.col("gain").is_not_null()).head(top),
            "weakest_tails": by("tail").filter(pl.col("tail").is_not_null()).head(top)}


def _warning_lines(warn: pl.DataFrame | None, store: str, limit: int) -> list[Text]:
    """Every warning when there are at most ``limit``; else one line per code (how many,
    in how many cells, the first as an example) and where to read them all."""
    def line(text: str, **kw: Any) -> Text:
        return Text(text, overflow="ellipsis", no_wrap=True, **kw)

    if warn is None or not warn.height:
        return [line("warnings: none")]
    cells = warn.select("model", "dataset").unique().height
    out = [line(f"warnings: {warn.height} in {cells} cell(s)", style="bold yellow")]
    if warn.height <= limit:
        return out + [line(f"  {r['model']}/{r['dataset']} {r['code']}: {r['message']}")
                      for r in warn.iter_rows(named=True)]
    by_code = warn.group_by("code", maintain_order=True).agg(
        pl.len().alias("k"), pl.struct("model", "dataset").n_unique().alias("cells"),
        pl.first("model"), pl.first("dataset"), pl.first("message"))
    for r in by_code.sort(["k", "code"], descending=[True, False]).iter_rows(named=True):
        out.append(line(f"  {r['code']} ×{r['k']} in {r['cells']} cell(s), e.g. {r['model']}/{r['dataset']}: "
                        f"{r['message']}"))
    out.append(line(f"  all of them: gla show warnings --store {store}"))
    return out


_TITLES = {"cells": "cells by gain", "best": "best {k} cells by gain", "worst": "worst {k} cells by gain",
           "weakest_tails": "weakest {k} tails (tail-group accuracy of {m})"}


def render(tables: Mapping[str, pl.DataFrame | None], console: Console, store: str = "STORE",
           top: int = TOP) -> None:
    """Print the summary on ``console`` (width ≤ WIDTH; pass a narrower one to shrink it)."""
    df = cell_frame(tables)
    if df.is_empty():  # nothing scored; the warnings say why (e.g. an unlabelled eval split)
        console.print(Group(Text("no scored cells"), *_warning_lines(tables.get("warnings"), store, MAX_WARNINGS)))
        return
    method, base = df["gain_method"][0], df["gain_baseline"][0]
    multi = df["estimator"].n_unique() > 1
    split = ", ".join(sorted({s for s in df["split"].to_list() if s}))
    est = "" if multi else f", estimator {df['estimator'][0]}"
    parts: list[Any] = [Text(f"{df.height} cell(s){est}, scored on {split}: accuracy %; "
                             f"gain = {method} − {base}", overflow="ellipsis", no_wrap=True)]
    for name, rows in rankings(df, top).items():
        if rows.height:
            parts.append(_table(_TITLES[name].format(k=rows.height, m=method), rows, multi))
    parts.extend(_warning_lines(tables.get("warnings"), store, MAX_WARNINGS))
    console.print(Group(*parts))


def console(width: int | None = None, **kw: Any) -> Console:
    """A console WIDTH wide, or the terminal's width when that is narrower."""
    c = Console(**kw)
    return Console(width=min(width or (c.width if c.is_terminal else WIDTH), WIDTH), **kw)


def cached_tables(store_root: str | Path, cells: Iterable[tuple[str, str]]) -> dict[str, pl.DataFrame]:
    """The summary tables of ``cells`` from their per-cell caches (cells without one are left out)."""
    found = []
    for m, d in cells:
        try:
            found.append(load_cache(store_root, m, d)["tables"])
        except UserError:
            continue  # failed or never analysed: the run's own lines say so
    return concat_cells(found)


def _plain(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


def as_json(tables: Mapping[str, pl.DataFrame | None], top: int = TOP) -> dict[str, Any]:
    """Every cell with its summary metrics per method, its gain and warnings; the rankings
    by cell name; warning counts by code."""
    df = cell_frame(tables)
    summary = tables["summary"]
    warn = tables.get("warnings")
    metric_cols = [c for c, t in summary.schema.items() if t.is_numeric()]
    cells = []
    for r in df.iter_rows(named=True):
        key = (pl.col("model") == r["model"]) & (pl.col("dataset") == r["dataset"])
        rows = summary.filter(key & (pl.col("estimator") == r["estimator"]))
        methods = {}
        for s in rows.iter_rows(named=True):
            name = f"{s['method']}[{s['target_estimator']}]" if s.get("target_estimator") else s["method"]
            methods[name] = {c: _plain(s[c]) for c in metric_cols}
        cells.append({
            "cell": f"{r['model']}/{r['dataset']}", **{k: r[k] for k in CELL_KEYS}, "split": r["split"],
            "n": r["n"], "metrics": methods,
            "gain": {"method": r["gain_method"], "baseline": r["gain_baseline"], "delta": _plain(r["gain"]),
                     "ci_low": _plain(r["gain_ci_low"]), "ci_high": _plain(r["gain_ci_high"])},
            "warnings": [] if warn is None else warn.filter(key)["code"].to_list(),
        })
    ranks = {k: [f"{m}/{d}" for m, d in v.select("model", "dataset").iter_rows()]
             for k, v in rankings(df, top).items()}
    by_code = {} if warn is None else dict(warn.group_by("code").agg(pl.len()).sort("code").iter_rows())
    return {"cells": cells, "rankings": ranks,
            "warnings": {"total": 0 if warn is None else warn.height, "by_code": by_code,
                         "items": [] if warn is None else warn.to_dicts()}}


def concat_cells(per_cell: Iterable[Mapping[str, pl.DataFrame]]) -> dict[str, pl.DataFrame]:
    """The cells' tables (summary, comparisons, warnings) stacked, as ``render`` takes them."""
    per_cell = list(per_cell)
    return {name: schema.concat(name, [t.get(name) for t in per_cell])
            for name in ("summary", "comparisons", "warnings")}
