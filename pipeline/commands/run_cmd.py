"""``gla run``: every stage for every cell of a config that needs it, incrementally.

    gla run CONFIG [--only model=M,dataset=D] [--stages extract,analyze,report]
                   [--scheduler tcp://HOST:PORT | FILE] [--workers N] [--threads-per-worker N]
                   [--force] [--set key=value ...]

A rerun with nothing changed does no work. When the analyze stage ran, stdout gets the
compact summary of the cells (``pipeline.terminal_summary``; with ``--json`` it is the
JSON document's ``summary``). Exit 0 when every cell succeeded, 1 when some
cell failed (each is listed with its key), 2 for bad input (one line naming it).
"""

from __future__ import annotations

import argparse
import json
import sys

from gla.pipeline import gate, terminal_summary
from gla.pipeline.config import load_config, parse_overrides
from gla.pipeline.errors import UserError
from gla.pipeline.matrix_run import run_config
from gla.pipeline.preflight import check_config
from gla.pipeline.report import write_report


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="the run's TOML config")
    parser.add_argument("--only", metavar="model=M,dataset=D",
                        help="run only these cells (either key may be left out or repeated)")
    parser.add_argument("--stages", default="extract,analyze,report",
                        help="comma-separated stages to run (default extract,analyze,report)")
    parser.add_argument("--scheduler", metavar="ADDRESS|FILE",
                        help="join an existing Dask cluster (tcp://HOST:PORT or a scheduler file; "
                        "default compute.scheduler, then $DASK_SCHEDULER_ADDRESS or Dask's config)")
    parser.add_argument("--worker-timeout", type=float, metavar="SECONDS",
                        help="how long a joined cluster may take to show a worker; overrides compute.worker_timeout")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="local worker processes (0 = run in this process); overrides compute.workers")
    parser.add_argument("--threads-per-worker", type=int, metavar="N",
                        help="threads per worker; overrides compute.threads_per_worker")
    parser.add_argument("--force", action="store_true",
                        help="recompute every selected cell even if its inputs are unchanged")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. analysis.fit_split=val (value parsed as TOML)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="print the run summary as JSON on stdout")
    gate.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    overrides = parse_overrides(args.set)
    if args.workers is not None:
        if args.workers < 0:
            raise UserError(f"--workers: must be >= 0, got {args.workers}")
        overrides["compute.workers"] = args.workers
    if args.threads_per_worker is not None:
        overrides["compute.threads_per_worker"] = args.threads_per_worker
    if args.scheduler:
        overrides["compute.scheduler"] = args.scheduler
    if args.worker_timeout is not None:
        overrides["compute.worker_timeout"] = args.worker_timeout
    stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())  # run_config checks them
    config = load_config(args.config, overrides)
    check_config(config, stages=stages, only=args.only)  # every config error before any work
    spec = gate.from_args(args, config.gate)
    if spec.blocks_publish:
        raise UserError("gate blocks_publish: needs publication by run (run history), not in this build")
    previous = gate.previous_tables(config.store) if spec else None
    summary = run_config(config, only=args.only, stages=stages, force=args.force,
                         progress=not args.no_progress)
    for line in summary.lines():
        print(f"gla run: {line}", file=sys.stderr)
    tables = terminal_summary.cached_tables(config.store, summary.cells) if summary.analysis else None
    if tables is not None and not args.json:
        terminal_summary.render(tables, terminal_summary.console(), str(config.store))
    if args.json:
        print(json.dumps({
            "store": str(summary.store),
            "cells": [f"{m}/{d}" for m, d in summary.cells],
            "extracted": [f"{m}/{d}" for m, d in summary.extracted],
            "extract_unchanged": [f"{m}/{d}" for m, d in summary.extract_skipped],
            "extract_status": {f"{m}/{d}": st for (m, d), st in summary.extract_status.items()},
            "analysed": [f"{m}/{d}" for m, d in (summary.analysis.computed if summary.analysis else [])],
            "analysis_unchanged": [f"{m}/{d}" for m, d in (summary.analysis.cached if summary.analysis else [])],
            "failed": [{"cell": e.key, "error": e.error} for e in summary.failed],
            "report": str(summary.report) if summary.report else None,
            "seconds": summary.seconds,
            "summary": terminal_summary.as_json(tables) if tables is not None else None,
        }, indent=1, default=str))
    if not summary.ok:
        return 1
    if previous is not None and summary.report is not None:  # the report shows what the gate saw
        write_report(config.store, force=True, previous=("before this run", previous))
    return gate.check_store(spec, previous, config.store) if spec else 0
