"""``gla diff``: what changed between two publications, and whether it is real.

    gla diff --store S [--from RUN] [--to RUN] [--against OTHER_STORE] [--json]
             [--fdr Q] [--gate RULE ...] [--gate-alpha A]

Deltas of every summary metric per cell × estimator × method, exact paired tests
(McNemar) when both sides scored the same samples (Fisher's exact test otherwise),
per-class regressions under Benjamini–Hochberg control, cells added or removed, and the
provenance changes that explain a delta. By default the run before the latest is the
"from" side and the latest run the "to" side (``gla history`` lists the runs);
``--against`` compares another store's latest run (the "from" side) with this one. With ``--gate``, exits 3 when a rule fails.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gla.pipeline import gate, rundiff
from gla.pipeline.errors import UserError


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", required=True, help="store folder (the 'to' side)")
    parser.add_argument("--from", dest="from_run", metavar="RUN",
                        help="the older side: a run id (or unique prefix, 'latest', 'previous') or a folder of "
                        "result tables (default: the run before --to)")
    parser.add_argument("--to", dest="to_run", metavar="RUN",
                        help="the newer side: a run id or a folder of result tables (default: the latest run; "
                        "see gla history)")
    parser.add_argument("--against", metavar="OTHER_STORE",
                        help="compare OTHER_STORE's latest results (old side) with this store's")
    parser.add_argument("--json", action="store_true", help="print the whole diff as JSON")
    parser.add_argument("--fdr", type=float, default=0.05,
                        help="false discovery rate of the per-class regressions (default 0.05)")
    gate.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if not 0 < args.fdr < 1:
        raise UserError(f"--fdr: must lie in (0, 1), got {args.fdr}")
    spec = gate.from_args(args)
    old_label, old, new_label, new = sides(args)
    d = rundiff.compute(old, new, fdr=args.fdr)
    checks = gate.evaluate(spec, old, new) if spec else None
    if args.json:
        doc = rundiff.to_json(d, {"from": old_label, "to": new_label})
        if checks is not None:
            doc["gate"] = json.loads(checks.write_json())
        print(json.dumps(doc, indent=1))
    else:
        rundiff.print_diff(d, (old_label, new_label), alpha=spec.alpha)
    return gate.report(checks, spec, published=None) if checks is not None else 0


def sides(args: argparse.Namespace):
    """(old label, old tables, new label, new tables) from --from/--to/--against.

    Defaults: --to is the latest run; --from is the run before --to (or, with
    --against, the other store's latest run)."""
    store = Path(args.store)
    if not store.is_dir():
        raise UserError(f"{store}: store folder not found (--store)")
    if args.against:
        other = Path(args.against)
        if not other.is_dir():
            raise UserError(f"{other}: store folder not found (--against)")
        if args.from_run:
            raise UserError("--from and --against: give one (--against takes the other store's latest run)")
        old_label, old = rundiff.resolve(other, None)
        new_label, new = rundiff.resolve(store, args.to_run)
        return f"{other}:{old_label}", old, f"{store}:{new_label}", new
    new_label, new = rundiff.resolve(store, args.to_run)
    if args.from_run is None:
        if (Path(args.to_run or "") / "summary.parquet").is_file():
            raise UserError("--to is a folder of tables: pass --from RUN as well")
        prev = rundiff.previous_run(store, args.to_run)
        return prev.id, rundiff.run_tables(store, prev), new_label, new
    old_label, old = rundiff.resolve(store, args.from_run)
    return old_label, old, new_label, new
