"""Gate rules: parsing, planted regressions fire, runs that differ only by noise stay quiet."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from diff_world import accuracies, draw_cell, predict, run_tables
from gla.analyze import diff, gates

C = 12
RULES = ["gla.accuracy >= previous - 0.005", "gla.acc_tail >= previous - 0.005", "ft.accuracy >= previous"]


@pytest.mark.parametrize(
    "text,expect",
    [
        ("gla.accuracy >= previous - 0.005", ("gla", "accuracy", ">=", True, -0.005)),
        ("gla.acc_tail>=previous", ("gla", "acc_tail", ">=", True, 0.0)),
        ("wiseft@0.5.accuracy > previous + 1e-3", ("wiseft@0.5", "accuracy", ">", True, 0.001)),
        ("gla.accuracy >= 0.7", ("gla", "accuracy", ">=", False, 0.7)),
        ("zs.ece <= .05", ("zs", "ece", "<=", False, 0.05)),
    ],
)
def test_parse(text, expect):
    r = gates.parse_rule(text)
    assert (r.method, r.metric, r.op, r.relative) == expect[:4] and r.value == pytest.approx(expect[4])


@pytest.mark.parametrize(
    "text,needle",
    [
        ("accuracy >= 0.7", "METHOD.METRIC"),
        ("gla.accuracy => 0.7", "METHOD.METRIC"),
        ("gla.accuracy >= previous * 0.9", "METHOD.METRIC"),
        ("gla.nll <= previous + 0.1", "significance test"),
        ("gla.Accuracy >= 0.7", "bad metric"),
        ("gla.acc >= 0.7", "unknown metric"),
    ],
)
def test_parse_refuses(text, needle):
    with pytest.raises(ValueError, match=needle):
        gates.parse_rule(text, metrics=("accuracy", "acc_tail", "nll", "ece"))


def _check(old, new, rules=RULES, alpha=0.05):
    tests = diff.accuracy_tests(diff.class_counts(old, new))
    return gates.check([gates.parse_rule(r) for r in rules], new["summary"], tests, alpha)


def test_planted_drop_fires_on_that_cell_only():
    rng = np.random.default_rng(0)
    acc = accuracies(rng, C)
    cells = {("m", d): draw_cell(rng, 3000, C, acc, d) for d in ("a", "b")}
    worse = {**cells[("m", "b")], "preds": dict(cells[("m", "b")]["preds"])}
    y = worse["labels"]
    p = worse["preds"]["gla"].copy()
    hit = (p == y) & (rng.random(y.size) < 0.08)  # a worse model: 8 % of its right answers lost
    p[hit] = (y[hit] + 1) % C
    worse["preds"]["gla"] = p
    checks = _check(run_tables(cells, C), run_tables({("m", "a"): cells[("m", "a")], ("m", "b"): worse}, C))
    failed = checks.filter(pl.col("failed"))
    assert set(failed["dataset"]) == {"b"} and set(failed["rule"]) == set(RULES[:2])
    lines = gates.failures_text(checks)
    assert len(lines) == 2 and all("m/b" in s and "mcnemar" in s for s in lines)


def test_small_drop_is_not_significant_and_absolute_rule_needs_no_previous():
    rng = np.random.default_rng(1)
    acc = accuracies(rng, C)
    a = draw_cell(rng, 200, C, acc)
    b = {**a, "preds": dict(a["preds"])}
    p = b["preds"]["gla"].copy()
    right = np.flatnonzero(p == a["labels"])[:3]  # 3 of 200 lost: past 0.005, not significant
    p[right] = (a["labels"][right] + 1) % C
    b["preds"]["gla"] = p
    checks = _check(run_tables({("m", "d"): a}, C), run_tables({("m", "d"): b}, C), RULES[:1])
    r = checks.row(0, named=True)
    assert r["violated"] and not r["failed"] and "noise" in r["reason"]
    new = run_tables({("m", "d"): b}, C)["summary"]
    gla_acc = new.filter(pl.col("method") == "gla")["accuracy"][0]
    absolute = gates.check([gates.parse_rule(f"gla.accuracy >= {gla_acc + 0.01}")], new, None)
    assert absolute["failed"].to_list() == [True]
    assert not gates.check([gates.parse_rule("gla.accuracy >= previous")], new, None).height


def _noise_fires(seed: int, paired: bool) -> bool:
    rng = np.random.default_rng(seed)
    acc = accuracies(np.random.default_rng(99), C)
    cells_old = {("m", d): draw_cell(rng, 600, C, acc, f"{d}o") for d in ("a", "b", "c")}
    if paired:  # the same samples, a model that flips answers both ways at random
        cells_new = {}
        for k, cell in cells_old.items():
            y = cell["labels"]
            redraw = {m: np.where(rng.random(y.size) < 0.2, predict(rng, y, acc[m], C), p)
                      for m, p in cell["preds"].items()}
            cells_new[k] = {**cell, "preds": redraw}
    else:  # a resampled split from the same distribution
        cells_new = {("m", d): draw_cell(rng, 600, C, acc, f"{d}n") for d in ("a", "b", "c")}
    checks = _check(run_tables(cells_old, C), run_tables(cells_new, C))
    return bool(checks["failed"].any())


@pytest.mark.parametrize("paired", [False, True])
def test_noise_leaves_gate_quiet_in_95_percent_of_seeds(paired):
    fired = [_noise_fires(s, paired) for s in range(100)]
    assert np.mean(fired) <= 0.05


def test_alpha_is_checked():
    with pytest.raises(ValueError, match="alpha"):
        gates.check([], pl.DataFrame(), None, alpha=1.5)
