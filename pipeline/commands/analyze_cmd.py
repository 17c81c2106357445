"""``gla analyze``: fit priors, apply GLA and the baselines, write the result tables.

    gla analyze --store S [--fit-split val] [--eval-split test] [--estimator gla ...]
                [--temperature none|confidence|nll] [--smoothing 0] [--target-prior FILE]
                [--groups released|array-split] [--shot-accuracy per-class|pooled]
                [--temperature-scope each|zs] [--fit-label-distribution uniform|counts|FILE]
                [--allow-fit-on-eval] [--only model=M,dataset=D] [--json | --quiet]

Every selected cell is analysed before anything is written; then results/summary.parquet,
per_class.parquet and priors.parquet are replaced together (other cells' rows are kept).
The terminal gets a compact summary (``pipeline.terminal_summary``); ``--json`` a
machine-readable one on stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from gla.analyze.cell import FIT_LABEL_DISTRIBUTIONS, TEMPERATURE_SCOPES
from gla.analyze.priors import ESTIMATORS, LABEL_FREE, parse_temperature, unused_fit_distribution
from gla.analyze.stats import GROUP_AVERAGES, GROUP_SCHEMES
from gla.pipeline import gate, terminal_summary
from gla.pipeline.analysis import analyze_store, select_cells
from gla.pipeline.cell_analysis import StoreAnalysisOptions
from gla.pipeline.errors import UserError
from gla.pipeline.importer import load_array
from gla.pipeline.preflight import check_store_analysis
from gla.pipeline.runner import ComputeOptions
from gla.pipeline.store import Store

DEFAULT_ESTIMATORS = ("gla", "gla-reference", "eigen", "prior-matching", "batch-calibration",
                      "eigen-iterated")


def configure(parser: argparse.ArgumentParser) -> None:
    """The options of ``gla analyze``.

    Long because it is the command's flat list of options, one call each, in --help order.
    """
    parser.add_argument("--store", required=True, help="store folder")
    parser.add_argument("--fit-split", default="val", help="split the priors are fitted on (default val)")
    parser.add_argument("--eval-split", default="test", help="split the methods are scored on (default test)")
    parser.add_argument(
        "--estimator", action="append", dest="estimators", metavar="NAME",
        help="pretraining-prior estimator (repeatable; the first is used by the methods): "
        + ", ".join(DEFAULT_ESTIMATORS) + " (default gla)",
    )
    parser.add_argument(
        "--temperature", default="none",
        help="temperature before fitting: none (default), confidence, nll, or a number",
    )
    parser.add_argument("--smoothing", type=float, default=0.0,
                        help="additive smoothing of the training counts (default 0)")
    parser.add_argument("--target-prior", metavar="FILE",
                        help="known target label prior (C values; .npy/.npz/.parquet/.txt)")
    parser.add_argument("--groups", choices=GROUP_SCHEMES, default="released",
                        help="head/medium/tail sizes by π_p: released (C//3, C//3, rest to the tail; "
                        "default, as the released GLA code) or array-split (leftovers to the head)")
    parser.add_argument("--shot-accuracy", choices=GROUP_AVERAGES, default="per-class",
                        help="many/medium/few-shot accuracy: per-class (mean of per-class accuracies; "
                        "default, as the released code) or pooled (over samples)")
    parser.add_argument("--temperature-scope", choices=TEMPERATURE_SCOPES, default="each",
                        help="with --temperature: each (zs and ft by their own temperature; default, "
                        "as the released few-shot code) or zs (rescale zs only)")
    parser.add_argument("--fit-label-distribution", default="uniform", metavar="uniform|counts|FILE",
                        help="the fit split's label distribution for the label-free estimators: "
                        "uniform (default), counts (the fit split's labels) or a file of C values")
    parser.add_argument("--allow-fit-on-eval", action="store_true",
                        help="allow --fit-split equal to --eval-split (leaks the eval labels)")
    parser.add_argument("--target-estimator", action="append", dest="target_estimators",
                        choices=("em", "bbse"), metavar="em|bbse",
                        help="estimate the eval split's label distribution π_t without its labels "
                        "and score gla_tp = gla + log π̂_t (repeatable)")
    parser.add_argument("--label-issues", action="store_true",
                        help="flag eval samples whose label looks wrong (BH against the fit split)")
    parser.add_argument("--label-issue-split", default="", metavar="SPLIT",
                        help="labelled split --label-issues audits (default: the eval split)")
    parser.add_argument("--clean-split", default="", metavar="SPLIT",
                        help="clean labelled split the label-issue p-values use (default: the fit split)")
    parser.add_argument("--fdr", type=float, default=None, metavar="A",
                        help="false discovery rate of --label-issues (default 0.1)")
    parser.add_argument("--only", action="append", metavar="model=M,dataset=D",
                        help="analyse only matching cells (shell patterns; repeatable)")
    parser.add_argument("--threads", type=int, default=0,
                        help="evaluation threads per cell (default: up to 2)")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="Dask worker processes (0 = in this process; default: sized for the "
                        "machine, in-process for little work)")
    parser.add_argument("--threads-per-worker", type=int, default=1, metavar="N",
                        help="threads per Dask worker (default 1)")
    parser.add_argument("--scheduler", metavar="ADDRESS|FILE",
                        help="join an existing Dask cluster (tcp://HOST:PORT or a scheduler file; "
                        "default $DASK_SCHEDULER_ADDRESS or Dask's scheduler-address config)")
    parser.add_argument("--worker-timeout", type=float, default=None, metavar="SECONDS",
                        help="how long a joined cluster may take to show a worker (default 60)")
    parser.add_argument("--force", action="store_true",
                        help="recompute every selected cell even if its inputs and options are unchanged")
    parser.add_argument("--quiet", action="store_true", help="do not print the summary")
    parser.add_argument("--json", action="store_true",
                        help="print the summary as JSON on stdout (every cell's metrics, rankings, warnings)")
    gate.add_arguments(parser)


def _temperature(text: str):
    try:
        return parse_temperature(text)
    except ValueError as e:
        raise UserError(f"--{e}") from None


def options_from_args(args: argparse.Namespace) -> StoreAnalysisOptions:
    estimators = tuple(args.estimators or ("gla",))
    unknown = [e for e in estimators if e not in ESTIMATORS]
    if unknown:
        raise UserError(f"--estimator: unknown {unknown[0]!r} (known: {', '.join(ESTIMATORS)})")
    if len(set(estimators)) != len(estimators):
        raise UserError("--estimator: each estimator may be given once")
    if not math.isfinite(args.smoothing) or args.smoothing < 0:
        raise UserError(f"--smoothing: must be >= 0, got {args.smoothing}")
    if args.target_prior is not None:
        load_array(args.target_prior, "target prior", 1)  # fails early, naming the file
    if args.fit_label_distribution != "uniform" and not set(estimators) & LABEL_FREE:
        raise UserError(unused_fit_distribution("--fit-label-distribution"))
    if args.fit_label_distribution not in FIT_LABEL_DISTRIBUTIONS:
        load_array(args.fit_label_distribution, "fit label distribution", 1)  # fails early, naming the file
    targets = tuple(dict.fromkeys(args.target_estimators or ()))
    if args.fdr is not None and not args.label_issues:
        raise UserError("--fdr: only with --label-issues")
    fdr = 0.1 if args.fdr is None else args.fdr
    if not 0 < fdr < 1:
        raise UserError(f"--fdr: must be in (0, 1), got {fdr}")
    return StoreAnalysisOptions(
        fit_split=args.fit_split,
        eval_split=args.eval_split,
        estimators=estimators,
        temperature=_temperature(args.temperature),
        smoothing=args.smoothing,
        target_prior=args.target_prior,
        allow_fit_on_eval=args.allow_fit_on_eval,
        threads=args.threads,
        target_estimators=targets,
        label_issues=args.label_issues,
        label_issue_split=args.label_issue_split,
        clean_split=args.clean_split,
        fdr=fdr,
        groups=args.groups,
        shot_accuracy=args.shot_accuracy,
        temperature_scope=args.temperature_scope,
        fit_label_distribution=args.fit_label_distribution,
    )


def summary_tables(results) -> dict:
    """The analysed cells' summary, comparisons and warnings, stacked (terminal summary)."""
    return terminal_summary.concat_cells(r.tables for r in results)


def print_notes(results) -> None:
    """What the summary does not say: eval rows that could not be scored."""
    for r in results:
        skipped = r.diagnostics.get("eval_rows_unlabelled", 0)
        if skipped:
            print(f"note: {r.model}/{r.dataset}: {skipped} eval rows with unknown label (-1) were not scored")


def check_compute_args(args: argparse.Namespace) -> None:
    """The compute options, named as the command line spells them."""
    if args.workers is not None and args.workers < 0:
        raise UserError(f"--workers: must be >= 0, got {args.workers}")
    if args.threads < 0:
        raise UserError(f"--threads: must be >= 0 (0 = up to 2), got {args.threads}")
    if args.threads_per_worker < 1:
        raise UserError(f"--threads-per-worker: must be >= 1, got {args.threads_per_worker}")
    if args.worker_timeout is not None and not args.worker_timeout > 0:
        raise UserError(f"--worker-timeout: must be > 0 seconds, got {args.worker_timeout}")
    sched = args.scheduler or ""
    if sched and "://" not in sched and not Path(sched).is_file():
        raise UserError(f"--scheduler: scheduler file {sched} not found (or give tcp://HOST:PORT)")


def run(args: argparse.Namespace) -> int:
    options = options_from_args(args)
    store = Store(args.store)
    if not store.root.is_dir():
        raise UserError(f"{store.root}: store folder not found (--store)")
    check_compute_args(args)
    check_store_analysis(store, options, select_cells(store, args.only))
    compute = ComputeOptions.from_any(
        None, workers=args.workers, threads_per_worker=args.threads_per_worker,
        scheduler=args.scheduler or "", progress=not args.quiet and not args.json, quiet=args.quiet,
        worker_timeout=args.worker_timeout,
    )
    spec = gate.from_args(args)
    if spec.blocks_publish:
        raise UserError("--gate-blocks-publish: needs publication by run (run history), not in this build")
    previous = gate.previous_tables(store.root) if spec else None
    t0 = time.perf_counter()
    talk = not args.quiet and not args.json

    def log(msg: str) -> None:  # stdout (stderr with --json): stderr carries only the error line
        print(f"gla: {msg}", file=sys.stderr if args.json else sys.stdout)

    results = analyze_store(store, options, only=args.only, compute=compute, force=args.force,
                            log=None if args.quiet else log, load_results=not args.quiet or args.json)
    run = results.run
    line = (f"results: {len(results)} cell(s), {len(run.computed)} analysed, {len(run.cached)} unchanged; "
            f"tables {'rebuilt' if run.tables_written else 'unchanged'} ({time.perf_counter() - t0:.2f} s)")
    if args.json:
        doc = {"store": str(store.root), "analysed": [f"{m}/{d}" for m, d in run.computed],
               "unchanged": [f"{m}/{d}" for m, d in run.cached],
               **terminal_summary.as_json(summary_tables(results))}
        print(json.dumps(doc, indent=1, default=str))
    elif talk:
        terminal_summary.render(summary_tables(results), terminal_summary.console(), str(store.root))
        print_notes(results)
        print(line)
    return gate.check_store(spec, previous, store.root) if spec else 0
