"""``gla check CONFIG``: run only the pre-flight checks of ``gla run``.

    gla check CONFIG [--only model=M,dataset=D] [--stages extract,analyze,report] [--set KEY=VALUE ...]

Exit 0 and one summary line on stdout when the config is sound; otherwise exit 2 with one
line on stderr naming the file, key or option. Nothing is written.
"""

from __future__ import annotations

import argparse

from gla.pipeline.config import load_config, parse_overrides
from gla.pipeline.preflight import check_config


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="the run's TOML config")
    parser.add_argument("--only", action="append", metavar="model=M,dataset=D",
                        help="check only these cells (shell patterns; repeatable)")
    parser.add_argument("--stages", default="extract,analyze,report",
                        help="the stages the run will do (default extract,analyze,report)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, as gla run does")


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config, parse_overrides(args.set))
    stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
    report = check_config(config, stages=stages, only=args.only)
    print(f"gla check: {report.line(args.config)}")
    return 0
