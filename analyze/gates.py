"""Regression gates: rules over summary metrics, checked on a run diff.

A rule is ``METHOD.METRIC OP RHS`` with OP one of ``>= > <= <`` and RHS either
``previous`` (optionally ``+ X`` / ``- X``) or a number::

    gla.accuracy >= previous - 0.005     relative: no drop of more than 0.005
    gla.acc_tail >= previous             per group (head/medium/tail, many/medium_shot/few)
    gla.accuracy >= 0.7                  absolute threshold
    gla.ece <= 0.05

A relative rule fails on a cell only when the threshold is violated **and** the change
is significant, in the violating direction, in the diff's test (exact McNemar when the
runs scored the same samples, Fisher's exact test otherwise) at level ``alpha``, after
Holm's correction over every relative check of the gate (so a matrix of many cells that
only differs by noise stays quiet with probability ≥ 1 − alpha). Relative rules therefore
take only the accuracy-type metrics that have a test (``analyze.diff.TESTABLE``). An
absolute rule fails where the new value violates it (no test: the user named the number).
A rule whose method or metric a cell does not have is not checked there.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass

import numpy as np
import polars as pl
from gla.analyze import significance as sig
from gla.analyze.diff import TESTABLE

_OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}
_NUM = r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_RULE = re.compile(
    rf"^\s*(?P<target>\S+?)\s*(?P<op>>=|<=|>|<)\s*"
    rf"(?:(?P<prev>previous)\s*(?:(?P<sign>[+-])\s*(?P<off>{_NUM}))?|(?P<abs>{_NUM}))\s*$"
)
_METRIC = re.compile(r"^[a-z][a-z0-9_]*$")
DEFAULT_ALPHA = 0.05


@dataclass(frozen=True)
class Rule:
    text: str
    method: str
    metric: str
    op: str
    relative: bool
    value: float  # the offset for a relative rule, the threshold for an absolute one

    def threshold(self, previous: float | None) -> float:
        return previous + self.value if self.relative else self.value

    def holds(self, new: float, previous: float | None) -> bool:
        return _OPS[self.op](new, self.threshold(previous))

    @property
    def bad_direction(self) -> int:
        """−1 when a violation is a decrease (>=, >), +1 when an increase (<=, <)."""
        return -1 if self.op.startswith(">") else 1


def parse_rule(text: str, metrics: tuple[str, ...] | None = None) -> Rule:
    """Parse one rule; ValueError with a one-line reason on bad syntax.

    ``metrics`` (the summary's metric columns) lets unknown metrics be refused early.
    """
    m = _RULE.match(text)
    if not m or "." not in m["target"]:
        raise ValueError(
            f"gate rule {text!r}: expected METHOD.METRIC OP previous[±X] or a number, "
            "e.g. 'gla.accuracy >= previous - 0.005'"
        )
    method, metric = m["target"].rsplit(".", 1)  # methods may hold dots (wiseft@0.5)
    if not method or not _METRIC.match(metric):
        raise ValueError(f"gate rule {text!r}: bad metric {metric!r}")
    if metrics is not None and metric not in metrics:
        raise ValueError(f"gate rule {text!r}: unknown metric {metric!r}; known: {', '.join(metrics)}")
    relative = m["prev"] is not None
    if relative and metric not in TESTABLE:
        raise ValueError(
            f"gate rule {text!r}: a rule against 'previous' needs a significance test, which "
            f"exists for {', '.join(TESTABLE)}; use an absolute threshold for {metric!r}"
        )
    if relative:
        off = float(m["off"]) if m["off"] else 0.0
        value = -off if m["sign"] == "-" else off
    else:
        value = float(m["abs"])
    if not math.isfinite(value):
        raise ValueError(f"gate rule {text!r}: the number is not finite")
    return Rule(text.strip(), method, metric, m["op"], relative, value)


_CHECK_SCHEMA = {
    "rule": pl.String, "model": pl.String, "dataset": pl.String, "estimator": pl.String,
    "method": pl.String, "metric": pl.String, "old": pl.Float64, "new": pl.Float64,
    "threshold": pl.Float64, "violated": pl.Boolean, "test": pl.String, "p_value": pl.Float64,
    "p_adjusted": pl.Float64, "failed": pl.Boolean, "reason": pl.String,
}  # fmt: skip


def _relative_rows(rule: Rule, tests: pl.DataFrame) -> list[dict]:
    rows = []
    sub = tests.filter((pl.col("method") == rule.method) & (pl.col("metric") == rule.metric))
    for r in sub.iter_rows(named=True):
        old, new = r["acc_old"], r["acc_new"]
        if old is None or new is None:
            continue
        rows.append({
            "rule": rule.text, "model": r["model"], "dataset": r["dataset"],
            "estimator": r.get("estimator"), "method": rule.method, "metric": rule.metric,
            "old": old, "new": new, "threshold": rule.threshold(old),
            "violated": not rule.holds(new, old), "test": r["test"], "p_value": r["p_value"],
            "_direction_ok": (new - old) * rule.bad_direction > 0,
        })  # fmt: skip
    return rows


def _absolute_rows(rule: Rule, summary: pl.DataFrame) -> list[dict]:
    if rule.metric not in summary.columns:
        return []
    rows = []
    sub = summary.filter(pl.col("method") == rule.method)
    for r in sub.iter_rows(named=True):
        new = r[rule.metric]
        if new is None or (isinstance(new, float) and math.isnan(new)):
            continue
        violated = not rule.holds(float(new), None)
        rows.append({
            "rule": rule.text, "model": r["model"], "dataset": r["dataset"],
            "estimator": r.get("estimator"), "method": rule.method, "metric": rule.metric,
            "old": None, "new": float(new), "threshold": rule.value, "violated": violated,
            "test": "threshold", "p_value": None, "failed": violated,
            "reason": "below threshold" if violated else "",
        })  # fmt: skip
    return rows


def check(rules: list[Rule], new_summary: pl.DataFrame, tests: pl.DataFrame | None,
          alpha: float = DEFAULT_ALPHA) -> pl.DataFrame:
    """One row per rule × cell × estimator checked; ``failed`` marks the failures.

    ``tests`` is ``RunDiff.tests`` (None when there is no previous run: relative rules
    are then not checked).
    """
    if not 0 < alpha < 1:
        raise ValueError(f"gate alpha must lie in (0, 1), got {alpha}")
    rel = [row for r in rules if r.relative and tests is not None for row in _relative_rows(r, tests)]
    p = np.array([np.nan if r["p_value"] is None else r["p_value"] for r in rel], dtype=np.float64)
    adj = sig.holm_adjust(p) if p.size else p
    for r, a in zip(rel, adj, strict=True):
        direction_ok = r.pop("_direction_ok")
        significant = bool(a < alpha) and direction_ok
        r["p_adjusted"] = None if np.isnan(a) else float(a)
        r["failed"] = bool(r["violated"] and significant)
        r["reason"] = (
            "" if not r["violated"] else
            "significant drop past the threshold" if r["failed"] else "within noise (not significant)"
        )  # fmt: skip
    rows = rel + [row for r in rules if not r.relative for row in _absolute_rows(r, new_summary)]
    if not rows:
        return pl.DataFrame(schema=_CHECK_SCHEMA)
    return pl.DataFrame(rows, schema=_CHECK_SCHEMA)


def failures_text(checks: pl.DataFrame) -> list[str]:
    """One line per failed check, naming the rule and the cell."""
    out = []
    for r in checks.filter(pl.col("failed")).iter_rows(named=True):
        where = f"{r['model']}/{r['dataset']}" + (f" [{r['estimator']}]" if r["estimator"] else "")
        if r["old"] is None:
            out.append(f"gate failed: {r['rule']} on {where}: {r['metric']} = {r['new']:.4f}")
        else:
            out.append(
                f"gate failed: {r['rule']} on {where}: {r['metric']} {r['old']:.4f} -> {r['new']:.4f} "
                f"(threshold {r['threshold']:.4f}, {r['test']} p = {r['p_value']:.2g}, Holm-adjusted {r['p_adjusted']:.2g})"
            )
    return out
