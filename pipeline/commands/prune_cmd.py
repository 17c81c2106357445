"""``gla prune CONFIG``: remove the cells the config no longer names, as a new run.

    gla prune CONFIG [--dry-run] [--logits] [--keep-runs N] [--keep-days D] [--set KEY=VALUE ...]

The cells the store holds (logits, or rows of the latest run) that are not model ×
dataset pairs of CONFIG are removed from the published tables as a new run of kind
"prune" (``gla history`` lists it; the previous run keeps their rows, so reading it, or
``gla diff``, undoes nothing by accident). Their per-cell analysis caches go too, so a
later run does not bring them back. Their logits are kept unless ``--logits``.
"""

from __future__ import annotations

import argparse

from gla.pipeline.commands.analyze_cmd import retention_args
from gla.pipeline.config import load_config, parse_overrides
from gla.pipeline.matrix_run import config_hash
from gla.pipeline.prune import cells_not_in_config, prune_cells


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="the run's TOML config (its store and cells)")
    parser.add_argument("--dry-run", action="store_true", help="list the cells that would be pruned; change nothing")
    parser.add_argument("--logits", action="store_true",
                        help="also delete the pruned cells' logits (default: keep them; re-extracting costs GPU time)")
    parser.add_argument("--keep-runs", type=int, default=None, metavar="N",
                        help="retention after the prune (default: the config's [results] table)")
    parser.add_argument("--keep-days", type=float, default=None, metavar="D",
                        help="retention after the prune, in days (default: the config's [results] table)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, as gla run does")


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config, parse_overrides(args.set))
    keep_runs, keep_days = retention_args(args, config.results)
    stale = cells_not_in_config(config.store, [(m.name, d.name) for m, d in config.cells()])
    names = ", ".join(f"{m}/{d}" for m, d in stale)
    if not stale:
        print(f"gla prune: {config.store}: every cell is in the config; nothing to prune")
        return 0
    if args.dry_run:
        print(f"gla prune: would prune {len(stale)} cell(s): {names}")
        return 0
    out = prune_cells(config.store, stale, config_hash=config_hash(config),
                      command=getattr(args, "_command", ""), logits=args.logits,
                      keep_runs=keep_runs, keep_days=keep_days)
    what = f"published run {out.run_id}" if out.run_id else "no published rows to remove"
    kept = "" if args.logits else "; logits kept (--logits deletes them)"
    print(f"gla prune: pruned {len(out.cells)} cell(s): {names}; {what}{kept}")
    return 0
