"""``gla show``: print one published result table.

    gla show TABLE --store S [--only model=M,dataset=D] [--json]

Narrow tables (warnings) print one aligned line per row; wide ones (provenance) one
block per row, a column per line. ``--json`` prints a JSON array of row objects. The
output may be piped into ``head``: a closed pipe ends the command quietly.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path

import polars as pl
from gla.analyze import schema
from gla.pipeline.config import CellFilter
from gla.pipeline.errors import UserError, detach_stdout

WIDTH = 100
_HEAD = ("model", "dataset", "estimator", "method", "target_estimator")  # a block's title


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("table", choices=tuple(schema.TABLES), metavar="TABLE",
                        help="result table: " + ", ".join(schema.TABLES))
    parser.add_argument("--store", required=True, help="store folder")
    parser.add_argument("--only", action="append", metavar="model=M,dataset=D",
                        help="only rows of matching cells (shell patterns; repeatable)")
    parser.add_argument("--json", action="store_true", help="print a JSON array of row objects")


def read_table(store: Path, name: str) -> pl.DataFrame:
    """The published table ``name`` of a store; UserError naming the file if absent."""
    path = store / "results" / f"{name}.parquet"
    if not path.is_file():
        raise UserError(f"{path}: no {name} table published (run gla analyze first)")
    try:
        return pl.read_parquet(path)
    except Exception as e:  # noqa: BLE001 - a damaged file: name it
        raise UserError(f"{path}: unreadable {name} table ({str(e).splitlines()[0]})") from None


def _text(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _aligned(df: pl.DataFrame) -> list[str] | None:
    """One line per row under a header; None when the columns do not fit in WIDTH."""
    cells = [[_text(v) for v in r] for r in df.iter_rows()]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(df.columns)]
    if sum(widths) + 2 * (len(widths) - 1) > WIDTH and len(df.columns) > 4:
        return None
    fmt = lambda row: "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()  # noqa: E731
    return [fmt(df.columns), *(fmt(r) for r in cells)]


def _blocks(df: pl.DataFrame) -> list[str]:
    """One block per row: a title of its keys, then ``column  value`` lines."""
    title_cols = ["model", "dataset", *(c for c in _HEAD[2:] if c in df.columns)]
    rest = [c for c in df.columns if c not in title_cols]
    pad = max(len(c) for c in rest) if rest else 0
    out = []
    for r in df.iter_rows(named=True):
        if out:
            out.append("")
        keys = [f"{c} {_text(r[c])}" for c in title_cols[2:] if r[c] not in (None, "")]
        out.append("  ".join([f"{r['model']}/{r['dataset']}", *keys]))
        out.extend(f"  {c.ljust(pad)}  {_text(r[c])}" for c in rest)
    return out


def emit(lines: Iterable[str]) -> None:
    """Write lines to stdout; a reader that went away (``| head``) ends it quietly."""
    try:
        for line in lines:
            sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except BrokenPipeError:  # printing is all show does: the rest was not wanted
        detach_stdout()


def run(args: argparse.Namespace) -> int:
    store = Path(args.store)
    if not store.is_dir():
        raise UserError(f"{store}: store folder not found (--store)")
    df = read_table(store, args.table)
    if args.only:
        keep = CellFilter(args.only)
        df = df.filter(pl.Series([keep.keeps(m, d) for m, d in zip(df["model"], df["dataset"], strict=True)],
                                 dtype=pl.Boolean))
    if args.json:
        emit([json.dumps(df.to_dicts(), default=str, ensure_ascii=False, indent=1)])
    elif df.is_empty():
        emit([f"{args.table}: no rows"])
    else:
        emit(_aligned(df) or _blocks(df))
    return 0
