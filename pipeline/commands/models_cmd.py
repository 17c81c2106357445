"""``gla models``: the architectures and pretrained tags open_clip knows.

    gla models [--arch PATTERN] [--tags-only] [--json]

Each line is an architecture (``arch`` in a config) and its pretrained tags (``pretrained``).
Besides a tag, ``pretrained`` takes ``hf-hub:org/repo`` or a local weights file.
"""

from __future__ import annotations

import argparse
import fnmatch
import json

from gla.extract.catalog import open_clip_catalog
from gla.pipeline.errors import UserError


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", metavar="PATTERN", help="only architectures matching this shell pattern (e.g. 'ViT-B-*')")
    parser.add_argument("--tags-only", action="store_true", help="only architectures with pretrained tags")
    parser.add_argument("--json", action="store_true", help="print {arch: [tags]} as JSON")


def run(args: argparse.Namespace) -> int:
    try:
        catalog = open_clip_catalog()
    except ModuleNotFoundError:
        raise UserError("open_clip is not installed: pip install 'gla-pipeline[extract]'") from None
    if args.arch:
        catalog = {a: t for a, t in catalog.items() if fnmatch.fnmatchcase(a, args.arch)}
        if not catalog:
            raise UserError(f"--arch {args.arch!r}: no open_clip architecture matches")
    if args.tags_only:
        catalog = {a: t for a, t in catalog.items() if t}
    if args.json:
        print(json.dumps(catalog, indent=1))
        return 0
    width = max(map(len, catalog), default=0)
    for arch, tags in catalog.items():
        print(f"{arch:<{width}}  {', '.join(tags) if tags else '-'}")
    n_tags = sum(map(len, catalog.values()))
    print(f"# {len(catalog)} architectures, {n_tags} pretrained tags; "
          "pretrained also takes hf-hub:org/repo or a weights file")
    return 0
