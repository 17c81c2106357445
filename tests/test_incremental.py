"""Incremental analysis: content keys, per-cell caches, publication as one run."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass

import numpy as np
import polars as pl
import pytest
from gla.pipeline import incremental as inc
from gla.pipeline import publication
from gla.pipeline.errors import UserError
from gla.pipeline.runner import Runner
from gla.pipeline.store import Store
from gla.pipeline.synthetic import write_cell


@dataclass(frozen=True)
class Opts:
    fit_split: str = "val"
    eval_split: str = "test"
    shift: float = 0.0


class FakeAnalysis:
    """A tiny stand-in for pipeline.analysis.analyze_cell: counts calls, reads the store."""

    def __init__(self, fail: set[str] = frozenset()):
        self.calls: list[tuple[str, str]] = []
        self.fail = fail

    def __call__(self, store, model, dataset, options):
        self.calls.append((model, dataset))
        if f"{model}/{dataset}" in self.fail:
            raise ValueError(f"planted failure in {model}/{dataset}\nsecond line")
        d = store.read_split(model, dataset, options.eval_split)
        acc = float((np.argmax(d.zs, 1) == d.labels).mean()) + options.shift
        c = d.zs.shape[1]
        key = {"model": model, "dataset": dataset}
        summary = pl.DataFrame([{**key, "method": "zs", "split": options.eval_split, "n": len(d.labels),
                                 "accuracy": acc}])
        per_class = pl.DataFrame({"model": [model] * c, "dataset": [dataset] * c, "method": ["zs"] * c,
                                  "class_index": np.arange(c, dtype=np.int32), "accuracy": np.full(c, acc)})
        priors = pl.DataFrame({"model": [model] * c, "dataset": [dataset] * c, "estimator": ["gla"] * c,
                               "class_index": np.arange(c, dtype=np.int32), "prior": np.full(c, 1 / c)})
        calibration = pl.DataFrame({**{k: [v] for k, v in key.items()}, "method": ["zs"], "bin": [0],
                                    "count": [len(d.labels)], "confidence": [0.5], "accuracy": [acc]})
        return {"summary": summary, "per_class": per_class, "priors": priors, "calibration": calibration}


CELLS = [("m0", "d0"), ("m0", "d1"), ("m1", "d0")]


@pytest.fixture
def store(tmp_path):
    root = tmp_path / "store"
    for i, (m, d) in enumerate(CELLS):
        write_cell(root, m, d, num_classes=5, fit_per_class=4, eval_rows=100, seed=i)
    return Store(root)


def run(store, fn, options=Opts(), **kw):
    return inc.analyze_cells(store, options, runner=Runner(workers=0, quiet=True), analyze_fn=fn, **kw)


def table(store, name="summary"):
    return publication.read_table(store, name).sort("model", "dataset")


def runs_bytes(store):
    """Every file under results/runs/ and results/LATEST, by relative path: its bytes."""
    res = store.root / "results"
    files = [*(res / "runs").rglob("*"), res / "LATEST"]
    return {str(p.relative_to(res)): p.read_bytes() for p in files if p.is_file()}


def test_first_run_then_nothing_to_do(store):
    fn = FakeAnalysis()
    s = run(store, fn)
    assert sorted(fn.calls) == sorted(CELLS) and s.computed and not s.cached and s.tables_written
    summ = table(store)
    assert [(r["model"], r["dataset"]) for r in summ.iter_rows(named=True)] == sorted(CELLS)
    assert table(store, "calibration").height == 3
    before = runs_bytes(store)
    assert len(publication.run_ids(store)) == 1 and s.run_id == publication.run_ids(store)[0]
    assert not list((store.root / "results").glob("*.parquet"))  # no top-level tables

    fn2 = FakeAnalysis()
    s2 = run(store, fn2)
    assert fn2.calls == [] and sorted(s2.cached) == sorted(CELLS) and not s2.tables_written
    assert runs_bytes(store) == before and s2.run_id == s.run_id  # no new run


def test_option_change_recomputes_and_force(store):
    run(store, FakeAnalysis())
    fn = FakeAnalysis()
    s = run(store, fn, Opts(shift=0.5))
    assert sorted(fn.calls) == sorted(CELLS) and s.tables_written
    assert (table(store)["accuracy"] > 0.5).all()
    fn = FakeAnalysis()
    run(store, fn, Opts(shift=0.5), force=True)
    assert sorted(fn.calls) == sorted(CELLS)


def test_rewritten_logits_recompute_only_that_cell(store):
    run(store, FakeAnalysis())
    before = table(store)
    write_cell(store.root, "m1", "d0", num_classes=5, fit_per_class=4, eval_rows=300, seed=7)
    fn = FakeAnalysis()
    s = run(store, fn)
    assert fn.calls == [("m1", "d0")] and s.computed == [("m1", "d0")]
    after = table(store)
    assert after.filter(pl.col("model") == "m1")["n"].to_list() == [300]
    assert after.filter(pl.col("model") == "m0").equals(before.filter(pl.col("model") == "m0"))


def test_class_counts_change_recomputes_that_dataset(store):
    run(store, FakeAnalysis())
    store.write_class_counts("d1", np.arange(1, 6), [f"class_{i:04d}" for i in range(5)])
    fn = FakeAnalysis()
    run(store, fn)
    assert fn.calls == [("m0", "d1")]


def test_code_version_change_recomputes_everything(store, monkeypatch):
    run(store, FakeAnalysis())
    monkeypatch.setattr(inc, "code_version", lambda: "something-else")
    fn = FakeAnalysis()
    run(store, fn)
    assert sorted(fn.calls) == sorted(CELLS)


def test_deleted_cell_drops_out(store):
    run(store, FakeAnalysis())
    shutil.rmtree(store.root / "logits" / "m0" / "d1")
    s = run(store, FakeAnalysis())
    assert s.removed == [("m0", "d1")] and s.tables_written
    assert not inc.cache_dir(store.root, "m0", "d1").exists()
    for name in ("summary", "per_class", "priors", "calibration"):
        assert ("m0", "d1") not in set(table(store, name).select("model", "dataset").iter_rows())


def test_failing_cell_keeps_others_and_is_retried(store):
    run(store, FakeAnalysis())
    fn = FakeAnalysis(fail={"m0/d1"})
    s = run(store, fn, Opts(shift=0.25))
    (err,) = s.failed
    assert err.key == "m0/d1" and err.error == "ValueError: planted failure in m0/d1"
    assert sorted(s.computed) == [("m0", "d0"), ("m1", "d0")]
    # The failed cell's old (other-options) results are not mixed in.
    assert s.left_out == [("m0", "d1")]
    # Nothing is published: the previous run stays the latest, all three cells in it.
    assert not s.tables_written and len(publication.run_ids(store)) == 1
    assert set(table(store).select("model", "dataset").iter_rows()) == set(CELLS)
    fn = FakeAnalysis()
    run(store, fn, Opts(shift=0.25))
    assert fn.calls == [("m0", "d1")]
    assert table(store).height == 3


def test_only_selected_cells_are_computed(store):
    fn = FakeAnalysis()
    s = run(store, fn, cells=[("m1", "d0")])
    assert fn.calls == [("m1", "d0")]
    assert s.left_out == [("m0", "d0"), ("m0", "d1")]  # never analysed: not in the tables
    assert table(store).height == 1
    with pytest.raises(UserError, match="no logit cell nope/d0"):
        run(store, FakeAnalysis(), cells=[("nope", "d0")])


def test_crash_while_publishing_leaves_old_run_whole(store, monkeypatch):
    run(store, FakeAnalysis())
    before, old = runs_bytes(store), table(store)
    real = pl.DataFrame.write_parquet
    calls = {"n": 0}

    def flaky(self, path, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:  # the second table of the new run fails after the first was written
            raise OSError("disk full (simulated)")
        return real(self, path, *a, **kw)

    monkeypatch.setattr(pl.DataFrame, "write_parquet", flaky)
    with pytest.raises(OSError, match="simulated"):
        run(store, FakeAnalysis(), Opts(shift=0.5))
    monkeypatch.setattr(pl.DataFrame, "write_parquet", real)
    # The unfinished run's files are removed: the old run is all there is, byte for byte.
    assert runs_bytes(store) == before
    assert len(publication.run_ids(store)) == 1 and table(store).equals(old)
    fn = FakeAnalysis()
    s = run(store, fn, Opts(shift=0.5))
    assert fn.calls == [] and s.tables_written
    assert (table(store)["accuracy"] > 0.5).all()
    assert sorted(p.name for p in (store.root / "results" / "runs").iterdir() if p.is_dir()) == \
        publication.run_ids(store)


def test_cache_without_key_is_not_trusted(store):
    run(store, FakeAnalysis())
    (inc.cache_dir(store.root, "m0", "d0") / inc.KEY_FILE).unlink()
    fn = FakeAnalysis()
    run(store, fn)
    assert fn.calls == [("m0", "d0")]
    doc = json.loads((inc.cache_dir(store.root, "m0", "d0") / inc.KEY_FILE).read_text())
    assert doc["files"] == ["summary.parquet", "per_class.parquet", "priors.parquet", "calibration.parquet"]


def test_empty_store_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no logit cells"):
        run(Store(tmp_path), FakeAnalysis())


def test_options_fingerprint_canonical(tmp_path):
    a = inc.options_fingerprint({"b": 1, "a": (1, 2)})
    assert a == inc.options_fingerprint({"a": [1, 2], "b": 1})
    prior = tmp_path / "p.npy"
    np.save(prior, np.ones(3))
    fp1 = inc.options_fingerprint({"target_prior": str(prior)})
    np.save(prior, np.arange(1, 4))
    assert inc.options_fingerprint({"target_prior": str(prior)}) != fp1


def test_unselected_cells_keep_their_last_results(store):
    run(store, FakeAnalysis())
    before = table(store)
    fn = FakeAnalysis()
    s = run(store, fn, Opts(shift=0.5), cells=[("m0", "d0")])
    assert fn.calls == [("m0", "d0")]
    assert sorted(s.not_selected) == [("m0", "d1"), ("m1", "d0")] and s.left_out == []
    after = table(store)
    assert after.height == 3
    others = pl.col("model") + "/" + pl.col("dataset") != "m0/d0"
    assert after.filter(others).equals(before.filter(others))
    assert after.filter(~others)["accuracy"][0] > 0.5


def test_failure_leaves_runs_untouched_and_keeps_good_caches(store):
    run(store, FakeAnalysis())
    files = runs_bytes(store)
    fn = FakeAnalysis(fail={"m1/d0"})
    s = run(store, fn, Opts(shift=0.5))
    assert [e.key for e in s.failed] == ["m1/d0"] and not s.tables_written
    assert runs_bytes(store) == files
    # The good cells' new results are cached: after the fix only the failed cell runs.
    fn = FakeAnalysis()
    s = run(store, fn, Opts(shift=0.5))
    assert fn.calls == [("m1", "d0")] and s.tables_written
    assert (table(store)["accuracy"] > 0.5).all()


def test_user_errors_keep_their_message(store):
    from gla.pipeline.runner import cell_error

    e = cell_error("m/d", UserError("x.parquet: column zs is missing"))
    assert e.user and e.error == "x.parquet: column zs is missing"
    e = cell_error("m/d", KeyError("boom"))
    assert not e.user and e.error == "KeyError: 'boom'"
