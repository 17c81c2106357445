"""``gla extract CONFIG``: run every model × dataset cell's extraction (resumable).

    gla extract CONFIG [--only model=M,dataset=D] [--shard i/n] [--no-progress]
    gla extract CONFIG --from-embeddings     zs for new templates/class names from stored
                                             image embeddings (CPU, no images)

Several processes or GPUs: ``--shard i/n`` (or torchrun's RANK / WORLD_SIZE) gives each
process every n-th part of each cell; whichever finishes a split last seals it. Complete
cells are skipped; an interrupted run redoes only missing parts.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys

from gla.extract.errors import ExtractError
from gla.extract.models import check_models
from gla.extract.reembed import rezero_cell
from gla.extract.run import extract_cell
from gla.extract.sources import SourceError
from gla.pipeline.config import CellFilter, load_config, model_dict
from gla.pipeline.errors import UserError
from gla.pipeline.preflight import check_config


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="run config (TOML)")
    parser.add_argument("--only", default=None, help="restrict to cells, e.g. model=tiny,dataset=fashion")
    parser.add_argument("--shard", default=None, help="i/n: this process's share of every cell (default: torchrun RANK/WORLD_SIZE, else 0/1)")
    parser.add_argument("--from-embeddings", action="store_true",
                        help="recompute zs from the cells' stored image embeddings for the config's current templates and class names")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("-q", "--quiet", action="store_true", help="no per-cell log lines")


def parse_shard(text: str | None, env: dict[str, str] | None = None) -> tuple[int, int]:
    """``--shard i/n``; without it torchrun's RANK/WORLD_SIZE; else (0, 1)."""
    env = os.environ if env is None else env
    if text:
        i, sep, n = text.partition("/")
        try:
            i_, n_ = int(i), int(n)
        except ValueError:
            raise UserError(f"option --shard: expected i/n (e.g. 0/4), got {text!r}") from None
        if not sep or n_ < 1 or not 0 <= i_ < n_:
            raise UserError(f"option --shard: expected i/n with 0 <= i < n, got {text!r}")
        return i_, n_
    if env.get("WORLD_SIZE"):
        try:
            rank, world = int(env.get("RANK", "0")), int(env["WORLD_SIZE"])
        except ValueError:
            raise UserError("environment RANK/WORLD_SIZE are not integers") from None
        if world >= 1 and 0 <= rank < world:
            return rank, world
        raise UserError(f"environment RANK={rank} WORLD_SIZE={world}: expected 0 <= RANK < WORLD_SIZE")
    return 0, 1


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    only = CellFilter(args.only)
    cells = config.cells(only)
    if not cells:
        raise UserError(f"{args.config}: no model × dataset cell matches --only {args.only or ''}".rstrip())
    shard = parse_shard(args.shard)
    if not args.quiet:
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        logging.getLogger("extract").setLevel(logging.INFO)
    missing = [m for m in ("torch", "open_clip") if importlib.util.find_spec(m) is None]
    if missing:  # analysis-only install
        raise UserError(
            f"gla extract needs {' and '.join(missing)}: pip install 'gla-pipeline[extract]'"
        )
    check_config(config, stages=("extract",), only=only)  # every config error before any work
    options = config.extract.model_dump()
    progress = not args.no_progress and sys.stderr.isatty()
    if not args.from_embeddings:
        try:  # uncached weights with no network: one line now, before torch loads
            check_models([model_dict(m) for m in {m.name: m for m, _ in cells}.values()])
        except ExtractError as e:
            raise UserError(str(e)) from None
    for m, d in cells:
        md, dd = model_dict(m, d), d.model_dump()
        try:
            if args.from_embeddings:
                info = rezero_cell(config.store, md, dd, options)
                print(f"{m.name}/{d.name}: {info['status']} ({info['rows']} rows from image embeddings)")
            else:
                info = extract_cell(config.store, md, dd, options, shard=shard, progress=progress)
                extra = ""
                if info["images"]:
                    extra = f", {info['images']} images, {info['images_per_s']:.1f} img/s"
                if info["skipped_images"]:
                    extra += f", {info['skipped_images']} unreadable images skipped"
                if info["status"] == "rezeroed":
                    extra = f" ({info.get('rows', 0)} rows: zs from stored image embeddings, no image encoded)"
                print(f"{m.name}/{d.name}: {info['status']}{extra}")
        except (ExtractError, SourceError) as e:
            raise UserError(f"{m.name}/{d.name}: {e}") from None
    return 0
