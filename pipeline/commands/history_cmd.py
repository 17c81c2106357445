"""``gla history``: the runs a store has published, oldest first.

    gla history --store S [--json] [--limit N]

One line per run: its id, time, kind (analyze, run, prune), config hash, code version
and what it changed (cells added / changed / removed). ``--json`` prints the commit
records. ``gla diff --store S`` compares the last two by default.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gla.pipeline import publication
from gla.pipeline.errors import UserError


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", required=True, help="store folder")
    parser.add_argument("--json", action="store_true", help="print the runs' commit records as JSON")
    parser.add_argument("--limit", type=int, default=0, metavar="N", help="only the last N runs")


def _short(x, n: int = 12) -> str:
    return "-" if not x else str(x)[:n]


def changes(record: dict) -> str:
    """'+2 ~1 -0 =5 cells' with the names of a few changed cells."""
    c = record.get("cells") or {}
    counts = " ".join(f"{sign}{len(c.get(k) or [])}" for sign, k in
                      (("+", "added"), ("~", "changed"), ("-", "removed"), ("=", "kept")))
    named = [*(f"+{n}" for n in c.get("added") or []), *(f"~{n}" for n in c.get("changed") or []),
             *(f"-{n}" for n in c.get("removed") or [])]
    more = f" …(+{len(named) - 4})" if len(named) > 4 else ""
    return f"{counts} cells" + (f": {', '.join(named[:4])}{more}" if named else "")


def line(run: publication.Run) -> str:
    r = run.record
    when = run.created_at.strftime("%Y-%m-%d %H:%M:%S")
    est = ",".join(r.get("estimators") or []) or "-"
    return (f"{run.id}  {when}  {r.get('kind', '?'):<7}  config {_short(r.get('config_hash'))}  "
            f"code {_short(r.get('code_version'), 20)}  est {est}  {changes(r)}")


def run(args: argparse.Namespace) -> int:
    store = Path(args.store)
    if not store.is_dir():
        raise UserError(f"{store}: store folder not found (--store)")
    if args.limit < 0:
        raise UserError(f"--limit: must be >= 0, got {args.limit}")
    runs = publication.runs(store)[-args.limit:] if args.limit else publication.runs(store)
    if args.json:
        print(json.dumps([r.record for r in runs], indent=1, default=str))
        return 0
    if not runs:
        print(f"{store}: no published runs")
        return 0
    for r in runs:
        print(line(r))
    return 0
