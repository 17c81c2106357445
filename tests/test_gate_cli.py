"""End to end: gla analyze --gate and gla diff on imported logits.

A planted regression (the fine-tuned logits swapped for a worse model's) fails the gate
with exit 3 naming the cell, and the new results are still published; a resampled test
split from the same distribution leaves it quiet; gla diff pairs runs on sample ids.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from gla.analyze.synthetic import planted_world
from gla.pipeline.cli import main

C = 10
RULES = ("--gate", "gla.accuracy >= previous - 0.005", "--gate", "ft.accuracy >= previous - 0.005")


def _gla(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _import(capsys, store, tmp, model, dataset, split, world, tag, ft=None):
    d = Path(tempfile.mkdtemp(prefix=f"in-{dataset}-{split}-", dir=tmp))
    np.save(d / "y.npy", world.labels)
    np.save(d / "zs.npy", world.zs)
    np.save(d / "ft.npy", world.ft if ft is None else ft)
    (d / "ids.txt").write_text("\n".join(f"{tag}-{i}" for i in range(len(world.labels))) + "\n")
    code, _, err = _gla(capsys, "import", "--store", store, "--model", model, "--dataset", dataset,
                        "--split", split, "--labels", d / "y.npy", "--zs", d / "zs.npy",
                        "--ft", d / "ft.npy", "--sample-ids", d / "ids.txt")
    assert code == 0, err


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def store(tmp_path, capsys):
    s = tmp_path / "S"
    for ds, seed in (("a", 1), ("b", 2)):
        _import(capsys, s, tmp_path, "m", ds, "val", planted_world(C, 20, seed=seed, signal=2.0), "v")
        _import(capsys, s, tmp_path, "m", ds, "test", planted_world(C, 300, seed=seed + 10, signal=2.0), "t0")
    code, _, err = _gla(capsys, "analyze", "--store", s, "--quiet", *RULES)
    assert code == 0, err
    assert "not checked" in err  # first run: nothing to compare with
    return s


def test_worse_finetuned_model_fails_the_gate_and_is_published(store, tmp_path, capsys):
    before = tmp_path / "before"
    shutil.copytree(store / "results", before, ignore=shutil.ignore_patterns("cells"))
    w = planted_world(C, 300, seed=12, signal=2.0)  # dataset b's test split, same samples
    rng = np.random.default_rng(5)
    worse_ft = w.ft + rng.normal(0, 3.0, w.ft.shape).astype(np.float32)  # a worse checkpoint's logits
    _import(capsys, store, tmp_path, "m", "b", "test", w, "t0", ft=worse_ft)
    code, _, err = _gla(capsys, "analyze", "--store", store, "--quiet", *RULES)
    assert code == 3, err
    failed = [line for line in err.splitlines() if line.startswith("gate failed")]
    assert failed and all("m/b" in line for line in failed)
    assert any("ft.accuracy" in line for line in failed) and not any("m/a" in line for line in err.splitlines())
    # Published anyway: the tables on disk hold the worse ft accuracy.
    new = pl.read_parquet(store / "results" / "summary.parquet")
    old = pl.read_parquet(before / "summary.parquet")
    pick = (pl.col("dataset") == "b") & (pl.col("method") == "ft")
    assert new.filter(pick)["accuracy"][0] < old.filter(pick)["accuracy"][0] - 0.05
    assert _sha(store / "results" / "summary.parquet") != _sha(before / "summary.parquet")
    # gla diff --from the copy: paired (same sample ids), the ft drop is significant.
    code, out, err = _gla(capsys, "diff", "--store", store, "--from", before, "--json")
    assert code == 0, err
    doc = json.loads(out)
    row = next(r for r in doc["tests"] if r["dataset"] == "b" and r["method"] == "ft" and r["metric"] == "accuracy")
    assert row["paired"] and row["test"] == "mcnemar" and row["p_value"] < 1e-6 and row["delta"] < -0.05
    same = next(r for r in doc["tests"] if r["dataset"] == "a" and r["method"] == "ft" and r["metric"] == "accuracy")
    assert same["delta"] == 0 and same["n_better"] == 0 and same["n_worse"] == 0
    assert {c["status"] for c in doc["cells"]} == {"common"}
    # The report's section of the same diff.
    code, _, err = _gla(capsys, "report", "--store", store, "--diff-from", before)
    assert code == 0, err
    page = (store / "report" / "index.html").read_text()
    section = page[page.index("Changes since the previous run"):]
    assert "m/b" in section and "mcnemar" in section and "Per-class regressions" in section
    code, _, _ = _gla(capsys, "report", "--store", store, "--no-diff")
    assert code == 0 and "Changes since the previous run" not in (store / "report" / "index.html").read_text()
    # The terminal table and the gate on gla diff itself.
    code, out, err = _gla(capsys, "diff", "--store", store, "--from", before, *RULES)
    assert code == 3 and "accuracy deltas" in out and "m/b" in err


def test_resampled_test_split_leaves_the_gate_quiet(store, tmp_path, capsys):
    for ds, seed in (("a", 101), ("b", 102)):  # new samples, same distribution
        _import(capsys, store, tmp_path, "m", ds, "test", planted_world(C, 300, seed=seed, signal=2.0), "t1")
    code, _, err = _gla(capsys, "analyze", "--store", store, "--quiet", *RULES)
    assert code == 0, err
    assert "check(s) passed" in err


def test_bad_rule_is_refused_before_any_work(store, capsys):
    snap = {p: _sha(p) for p in sorted(store.rglob("*")) if p.is_file()}
    code, _, err = _gla(capsys, "analyze", "--store", store, "--force", "--gate", "gla.nll <= previous")
    assert code == 2 and "significance test" in err and len(err.strip().splitlines()) == 1
    code, _, err = _gla(capsys, "analyze", "--store", store, "--gate", "gla.accuracy >= 0.5", "--gate-alpha", "2")
    assert code == 2 and "--gate-alpha" in err
    assert {p: _sha(p) for p in sorted(store.rglob("*")) if p.is_file()} == snap


def test_diff_against_another_store(store, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(store, other)
    code, out, err = _gla(capsys, "diff", "--store", store, "--against", other, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert all(r["delta"] == 0 for r in doc["tests"] if r["delta"] is not None)
    code, _, err = _gla(capsys, "diff", "--store", store)
    assert code == 2 and "--from" in err
