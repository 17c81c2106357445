"""``gla report``: write the self-contained HTML audit report of a store.

    gla report --store S [--out PATH] [--max-cells N] [--force]

Reads results/{summary,per_class,priors,calibration}.parquet; writes
<store>/report/index.html (or --out) atomically. Plots are inline PNGs, no network.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gla.pipeline import rundiff
from gla.pipeline.errors import UserError
from gla.pipeline.report import DEFAULT_MAX_CELLS, write_report


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", required=True, help="store folder")
    parser.add_argument("--out", help="output HTML file (default <store>/report/index.html)")
    parser.add_argument("--max-cells", type=int, default=None, metavar="N",
                        help="per-cell sections for at most N cells (default 60; the overview covers all)")
    parser.add_argument("--force", action="store_true", help="rewrite even if the tables are unchanged")
    parser.add_argument("--diff-from", metavar="RUN",
                        help="add a 'changes since' section against RUN (a folder of result tables)")
    parser.add_argument("--no-diff", action="store_true",
                        help="leave out the 'changes since the previous run' section (by default the "
                             "latest run is compared with the run before it, when the store keeps one)")


def run(args: argparse.Namespace) -> int:
    store = Path(args.store)
    if not store.is_dir():
        raise UserError(f"{store}: store folder not found (--store)")
    if args.out and Path(args.out).is_dir():
        raise UserError(f"--out {args.out}: is a folder; give the path of the HTML file to write")
    max_cells = DEFAULT_MAX_CELLS if args.max_cells is None else args.max_cells
    if max_cells < 0:
        raise UserError(f"--max-cells: must be >= 0, got {max_cells}")
    previous = rundiff.resolve(store, args.diff_from) if args.diff_from else None
    path, written = write_report(store, args.out, max_cells=max_cells, force=args.force, previous=previous,
                                 diff=not args.no_diff)
    print(f"{'wrote' if written else 'unchanged'} {path}")
    return 0
