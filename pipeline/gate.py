"""Regression gates around a publication (``--gate RULE`` on gla analyze / gla run).

``GateSpec`` holds the rules, alpha and whether a failure blocks publication; it comes
from ``--gate``/``--gate-alpha``/``--gate-blocks-publish`` and the config's ``[gate]``
table. ``evaluate`` checks the rules on the diff of the previous run against the new
one and returns the checks (``analyze.gates.check``). ``GateHook`` runs it inside the
publication, before anything is written, so that ``--gate-blocks-publish`` can keep a
failing run unpublished (no file of it is written). ``EXIT_GATE`` (3) is the exit code
of a failing gate, whose failed rules and cells are printed on stderr.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field

import polars as pl
from gla.analyze import gates
from gla.analyze.diff import TESTABLE
from gla.pipeline import rundiff
from gla.pipeline.errors import UserError

EXIT_GATE = 3


@dataclass(frozen=True)
class GateSpec:
    rules: tuple[gates.Rule, ...] = ()
    alpha: float = gates.DEFAULT_ALPHA
    blocks_publish: bool = False
    texts: tuple[str, ...] = field(default=())

    def __bool__(self) -> bool:
        return bool(self.rules)


def parse(rules: list[str] | tuple[str, ...], alpha: float | None = None,
          blocks_publish: bool = False, where: str = "--gate") -> GateSpec:
    """Rules checked for syntax and metric up front (one UserError line naming the rule)."""
    alpha = gates.DEFAULT_ALPHA if alpha is None else float(alpha)
    if not 0 < alpha < 1:
        raise UserError(f"{where}-alpha: must lie in (0, 1), got {alpha}")
    parsed = []
    for text in rules:
        try:
            parsed.append(gates.parse_rule(text, metrics=_METRICS))
        except ValueError as e:
            raise UserError(f"{where}: {e}") from None
    return GateSpec(tuple(parsed), alpha, bool(blocks_publish), tuple(rules))


# Metrics a rule may name: every summary metric (relative rules: the testable ones).
_METRICS = (*TESTABLE, "balanced_accuracy", "top5", "nll", "ece")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gate", action="append", default=[], metavar="RULE",
                        help="regression gate, e.g. 'gla.accuracy >= previous - 0.005' or "
                        "'gla.accuracy >= 0.7' (repeatable); a failing gate exits with code 3")
    parser.add_argument("--gate-alpha", type=float, default=None, metavar="A",
                        help="significance level of the gate's tests (default 0.05, Holm-corrected)")
    parser.add_argument("--gate-blocks-publish", action="store_true",
                        help="when a gate fails, do not publish the new results (default: publish "
                        "them and exit 3)")


def from_args(args: argparse.Namespace, config_gate: object | None = None) -> GateSpec:
    """CLI rules plus the config's [gate] table (CLI alpha / blocking override it)."""
    rules = list(getattr(config_gate, "rules", None) or []) + list(args.gate or [])
    alpha = args.gate_alpha if args.gate_alpha is not None else getattr(config_gate, "alpha", None)
    blocks = args.gate_blocks_publish or bool(getattr(config_gate, "blocks_publish", False))
    return parse(rules, alpha, blocks)


def evaluate(spec: GateSpec, previous: dict[str, pl.DataFrame] | None,
             new: dict[str, pl.DataFrame]) -> pl.DataFrame:
    """The checks of every rule on every cell (relative rules need ``previous``)."""
    tests = None
    if previous is not None:
        tests = rundiff.compute(previous, new).tests
    return gates.check(list(spec.rules), new["summary"], tests, spec.alpha)


def report(checks: pl.DataFrame, spec: GateSpec, published: bool | None, out=None) -> int:
    """Print the failures on stderr; the exit code (0 or EXIT_GATE). ``published`` None:
    nothing was being published (gla diff)."""
    out = out or sys.stderr
    lines = gates.failures_text(checks)
    n = checks.height
    if not lines:
        print(f"gate: {len(spec.rules)} rule(s), {n} check(s) passed (alpha {spec.alpha})", file=out)
        return 0
    for line in lines:
        print(line, file=out)
    what = ("" if published is None else "; results were published" if published
            else "; results were NOT published (--gate-blocks-publish)")
    print(f"gate: {len(lines)} of {n} check(s) failed{what}", file=out)
    return EXIT_GATE


class GateHook:
    """The gate as a publication hook: checked on a run's tables before they are
    published, against the parent run. Returns False (do not publish) only when a
    check failed and the spec blocks publication. ``checks`` and ``previous`` stay for
    the report after the run."""

    def __init__(self, spec: GateSpec, store_root):
        self.spec = spec
        self.store_root = store_root
        self.checks: pl.DataFrame | None = None
        self.previous: tuple[str, dict[str, pl.DataFrame]] | None = None

    def __call__(self, parent, tables) -> bool:
        if parent is not None:
            self.previous = (parent.id, rundiff.run_tables(self.store_root, parent))
        new = {n: tables[n] for n in rundiff.READ if n in tables}
        self.checks = evaluate(self.spec, self.previous[1] if self.previous else None, new)
        return not (self.spec.blocks_publish and checks_failed(self.checks))

    def finish(self, published: bool) -> int:
        """Print the outcome; the exit code. When no new run was published because
        nothing changed, the latest run is judged against itself (nothing regressed)."""
        if self.checks is None:
            if not rundiff.has_results(self.store_root):
                raise UserError(f"{self.store_root}: no results to check the gate on")
            latest = rundiff.latest_tables(self.store_root)
            self.checks = evaluate(self.spec, latest, latest)
        elif self.previous is None and any(r.relative for r in self.spec.rules):
            print("gate: no previous results: rules against 'previous' were not checked", file=sys.stderr)
        return report(self.checks, self.spec, published=published)


def checks_failed(checks: pl.DataFrame) -> bool:
    return checks.height > 0 and bool(checks.get_column("failed").any())
