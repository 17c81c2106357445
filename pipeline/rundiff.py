"""Reading two publications, diffing them (``analyze.diff``) and showing the diff.

A run's tables are read whole into memory (summary, per_class, provenance and the
compact predictions; priors and calibration are not needed), through
``pipeline.publication`` (every file verified). ``--from``/``--to`` accept a run id of
the store's history (or a unique prefix, ``latest``, ``previous``) or a folder holding
``<table>.parquet`` files; the default pair is the latest run and the run before it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import polars as pl
from gla.analyze import diff as adiff
from gla.pipeline import publication
from gla.pipeline.errors import UserError

READ = ("summary", "per_class", "provenance", "predictions")


def _required(out: dict[str, pl.DataFrame], where: str, what: str) -> dict[str, pl.DataFrame]:
    for name in ("summary", "per_class"):
        if name not in out:
            raise UserError(f"{where}: no {name} table ({what})")
    return out


def read_tables(folder: str | Path, what: str = "results") -> dict[str, pl.DataFrame]:
    """The diffable tables of a folder of ``<table>.parquet`` files (a copied run)."""
    folder = Path(folder)
    out = {}
    for name in READ:
        f = folder / f"{name}.parquet"
        if f.exists():
            try:
                out[name] = pl.read_parquet(f)
            except Exception as e:  # noqa: BLE001 - a damaged file: name it
                raise UserError(f"{f}: cannot read {what} table: {e}") from None
    return _required(out, str(folder), what)


def run_tables(store_root: str | Path, run: publication.Run) -> dict[str, pl.DataFrame]:
    """The diffable tables of one run of a store (each file verified against its record)."""
    out = publication.read_tables(store_root, READ, run)
    return _required(out, str(publication.record_path(store_root, run.id)), f"run {run.id}")


def has_results(store_root: str | Path) -> bool:
    return publication.latest(store_root) is not None


def latest_tables(store_root: str | Path) -> dict[str, pl.DataFrame]:
    """The store's latest run."""
    return run_tables(store_root, publication.resolve(store_root, None))


def resolve(store_root: str | Path, ref: str | None) -> tuple[str, dict[str, pl.DataFrame]]:
    """(label, tables) of a run reference: None or "latest", "previous", a run id (or a
    unique prefix), or a folder holding ``<table>.parquet`` files."""
    if ref is not None and (Path(ref) / "summary.parquet").is_file():
        return str(ref), read_tables(ref, f"run {ref}")
    run = publication.resolve(store_root, ref)
    return run.id, run_tables(store_root, run)


def previous_run(store_root: str | Path, ref: str | None) -> publication.Run:
    """The kept run just before ``ref`` (default: the latest run)."""
    run = publication.resolve(store_root, ref)
    older = [i for i in publication.run_ids(store_root) if i < run.id]
    if not older:
        raise UserError(f"{store_root}: run {run.id} is the oldest kept run, so there is no "
                        "previous run to compare with (pass --from RUN or --against STORE)")
    return publication.read_run(store_root, older[-1])


def compute(old: dict[str, pl.DataFrame], new: dict[str, pl.DataFrame], fdr: float = 0.05) -> adiff.RunDiff:
    try:
        return adiff.diff_runs(old, new, fdr=fdr)
    except pl.exceptions.ColumnNotFoundError as e:
        raise UserError(f"result tables lack a column the diff needs: {e}") from None


def _f(x: Any, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{100 * x:+.2f}" if pct else f"{x:.3g}"


def significant(d: adiff.RunDiff, alpha: float = 0.05) -> pl.DataFrame:
    return d.tests.filter(pl.col("p_value") < alpha)


def to_json(d: adiff.RunDiff, meta: dict | None = None) -> dict:
    """Every diff table as a list of row dicts (floats as JSON numbers, NaN as null)."""
    def rows(df: pl.DataFrame) -> list[dict]:
        return json.loads(df.with_columns(pl.col(pl.Float64).fill_nan(None)).write_json())

    out: dict[str, Any] = dict(meta or {})
    out.update({name: rows(df) for name, df in d.tables().items()})
    out["class_regressions"] = rows(d.classes.filter(pl.col("regression")))
    out["classes"] = rows(d.classes.filter(pl.col("regression") | pl.col("improvement")))
    return out


def print_diff(d: adiff.RunDiff, labels: tuple[str, str], console=None, alpha: float = 0.05,
               max_rows: int = 40) -> None:
    """Terminal tables: cells added/removed, accuracy tests, class regressions, provenance."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    console.print(f"[bold]gla diff[/bold] {labels[0]} → {labels[1]}")
    changed = d.cells.filter(pl.col("status") != "common")
    for r in changed.iter_rows(named=True):
        console.print(f"  cell {r['model']}/{r['dataset']}: {r['status']}")
    t = Table(title=f"accuracy deltas (percentage points); * = p < {alpha}")
    for col in ("cell", "estimator", "method", "metric", "old", "new", "Δ pp", "95 % interval", "p", "test"):
        t.add_column(col, justify="right" if col not in ("cell", "estimator", "method", "metric") else "left")
    shown = d.tests.filter(pl.col("metric").is_in(["accuracy", "acc_tail"]) & pl.col("delta").is_not_null())
    shown = shown.sort(pl.col("p_value"), nulls_last=True).head(max_rows)
    for r in shown.iter_rows(named=True):
        star = "*" if r["p_value"] is not None and r["p_value"] < alpha else ""
        t.add_row(f"{r['model']}/{r['dataset']}", r.get("estimator") or "", r["method"], r["metric"],
                  f"{100 * r['acc_old']:.2f}", f"{100 * r['acc_new']:.2f}", _f(r["delta"], True) + star,
                  f"[{_f(r['ci_low'], True)}, {_f(r['ci_high'], True)}]", _f(r["p_value"]), r["test"])
    console.print(t)
    if d.tests.height > shown.height:
        console.print(f"  ({d.tests.height - shown.height} more rows: all group metrics in --json)")
    reg = d.classes.filter(pl.col("regression"))
    console.print(f"per-class regressions (BH): {reg.height}"
                  + ("" if not reg.height else ": " + ", ".join(
                      f"{r['model']}/{r['dataset']} {r['method']} {r.get('class_name') or r['class_index']}"
                      f" {_f(r['delta'], True)} pp" for r in reg.head(12).iter_rows(named=True))))
    if d.provenance.height:
        console.print("provenance changes:")
        for r in d.provenance.head(max_rows).iter_rows(named=True):
            console.print(f"  {r['model']}/{r['dataset']} [{r['estimator']}] {r['field']}: {r['old']} → {r['new']}")
