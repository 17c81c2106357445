"""``gla import``: bring your own logits, or a dataset's training counts, into a store.

    gla import --store S --model M --dataset D --split SPLIT [--labels y.npy] --zs zs.npy
               [--ft ft.npy] [--classnames names.txt] [--sample-ids ids.txt] [--window FILE|COLUMN]
    gla import --store S --dataset D --train-counts counts.npy   (or a CSV class_index,count)

Arrays: .npy, .npz (single array, or file.npz:key) or Parquet (a list column or numeric
columns; file.parquet:column picks one).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gla.pipeline.errors import UserError
from gla.pipeline.importer import import_counts, import_logits
from gla.pipeline.lock import GUARD_NAME, store_lock


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", required=True, help="store folder (created if missing)")
    parser.add_argument("--dataset", required=True, help="dataset (cell) name")
    parser.add_argument("--model", help="model (cell) name; needed with --zs")
    parser.add_argument("--split", help="split name, e.g. val or test; needed with --zs")
    parser.add_argument("--labels", help="1-D integer labels (-1 = unknown); without it every row is "
                        "unlabelled (deployment data for --target-estimator)")
    parser.add_argument("--zs", help="2-D zero-shot logits (N, C)")
    parser.add_argument("--ft", help="2-D fine-tuned logits (N, C), optional")
    parser.add_argument("--classnames", help="text file, one class name per line (label order)")
    parser.add_argument("--sample-ids", help="text file, one sample id per line (default <split>-<row>)")
    parser.add_argument("--window", metavar="FILE|COLUMN",
                        help="time window of each row (a file, or a column of the --zs/--labels "
                        "Parquet file): π_t is tracked per window")
    parser.add_argument(
        "--train-counts", help="per-class training counts: .npy/.npz/.parquet or CSV class_index,count"
    )


def run(args: argparse.Namespace) -> int:
    made = _folders_to_make(Path(args.store))
    try:
        with store_lock(args.store, "gla import"):  # one writer at a time per store
            return _run(args)
    except UserError:
        _unmake(made)  # bad input into a new store leaves no store folder behind
        raise


def _folders_to_make(store: Path) -> list[Path]:
    """The folders that taking the lock will create (deepest last)."""
    out = []
    while not store.exists() and store != store.parent:
        out.insert(0, store)
        store = store.parent
    return out


def _unmake(made: list[Path]) -> None:
    for folder in reversed(made):
        (folder / GUARD_NAME).unlink(missing_ok=True)
        try:
            folder.rmdir()  # only if empty: never removes anything but the lock's guard
        except OSError:
            return


def _run(args: argparse.Namespace) -> int:
    logit_opts = {k: getattr(args, k) for k in ("model", "split", "labels", "zs", "ft", "sample_ids", "window")}
    if args.train_counts is not None:
        given = [f"--{k.replace('_', '-')}" for k, v in logit_opts.items() if v is not None]
        if given:
            raise UserError(f"--train-counts cannot be combined with {', '.join(given)}")
        info = import_counts(args.store, args.dataset, args.train_counts, args.classnames)
        print(f"wrote {info['path']} ({info['classes']} classes, {info['total']} samples)")
        return 0
    for opt in ("model", "split", "zs"):
        if getattr(args, opt) is None:
            raise UserError(f"--{opt} is required when importing logits (or give --train-counts)")
    info = import_logits(
        args.store, args.model, args.dataset, args.split, args.labels, args.zs, args.ft,
        args.classnames, args.sample_ids, args.window,
    )
    print(
        f"wrote {info['cell']} split {info['split']}: {info['rows']} rows, {info['classes']} classes"
        + (", zs+ft" if info["has_ft"] else ", zs only")
    )
    return 0
