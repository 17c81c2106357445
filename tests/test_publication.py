"""Publication by run: commit records, atomicity, failed runs, retention, history,
diff defaults, estimators side by side, gate-blocks-publish, prune.

Every test asserts bytes on disk: ``runs_bytes`` hashes every file under results/runs/
and results/LATEST before and after.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from gla.analyze import schema
from gla.extract import records
from gla.pipeline import incremental as inc
from gla.pipeline import publication
from gla.pipeline.cli import main
from gla.pipeline.errors import UserError
from gla.pipeline.prune import cells_not_in_config, prune_cells
from gla.pipeline.synthetic import write_cell

REPO = Path(__file__).resolve().parents[1]
CELLS = [("m1", "d"), ("m2", "d")]


def runs_bytes(store: Path) -> dict[str, str]:
    res = store / "results"
    files = [*(res / "runs").rglob("*"), res / "LATEST"] if (res / "runs").is_dir() else []
    return {str(p.relative_to(res)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files if p.is_file()}


def gla(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def gla_sub(*argv, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gla.pipeline.cli", *map(str, argv)], capture_output=True,
                          text=True, cwd=REPO, timeout=300, env={**os.environ, **(env or {})})


@pytest.fixture
def store(tmp_path) -> Path:
    root = tmp_path / "S"
    for i, (m, d) in enumerate(CELLS):
        write_cell(root, m, d, num_classes=6, fit_per_class=10, eval_rows=240, seed=i)
    return root


def analyze(capsys, store, *extra) -> str:
    code, out, err = gla(capsys, "analyze", "--store", store, "--quiet", *extra)
    assert code == 0, err
    return out


def test_a_run_is_files_plus_one_record_written_last(store, capsys):
    analyze(capsys, store)
    (run,) = publication.runs(store)
    rec = run.record
    assert rec["id"] == run.id and rec["parent"] is None and rec["kind"] == "analyze"
    assert rec["config_hash"] is None and rec["code_version"] and rec["estimators"] == ["gla"]
    assert sorted(rec["cells"]["added"]) == ["m1/d", "m2/d"] and rec["cells"]["changed"] == []
    assert "analyze" in rec["command"]
    for name, t in rec["tables"].items():
        f = run.dir / t["file"]
        assert f.stat().st_size == t["size"] and records.sha256(f) == t["sha256"]
        assert pl.read_parquet(f).height == t["rows"] == publication.read_table(store, name).height
    assert (store / "results" / "LATEST").read_text() == f"{run.id}\n"
    assert not list((store / "results").glob("*.parquet"))
    # ids sort in commit order even when the clock goes back
    later = publication.new_run_id(run.id, now=datetime(2000, 1, 1, tzinfo=UTC))
    assert later > run.id and publication.id_time(later) > publication.id_time(run.id)


def test_a_changed_table_file_is_one_line_naming_it(store, capsys):
    analyze(capsys, store)
    path = publication.table_path(store, "summary")
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(UserError, match=r"summary\.parquet: \d+ bytes, but .*\.json records"):
        publication.read_table(store, "summary")
    code, _, err = gla(capsys, "diff", "--store", store, "--from", "latest")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "summary.parquet" in err


@pytest.mark.parametrize("point", ["publish.table:2", "publish.before_record"])
def test_kill_9_before_the_record_leaves_the_previous_run(store, capsys, point):
    analyze(capsys, store)
    before, old = runs_bytes(store), publication.read_table(store, "summary")
    r = gla_sub("analyze", "--store", store, "--quiet", "--smoothing", "1", env={records.FAULT_ENV: point})
    assert r.returncode == -9, r.stderr
    # The unfinished folder is there, without a record: readers see the old run byte for byte.
    after = runs_bytes(store)
    assert {k: v for k, v in after.items() if k in before} == before
    assert len(publication.run_ids(store)) == 1 and publication.read_table(store, "summary").equals(old)
    assert any(k not in before for k in after)  # some of the new run's files were written
    analyze(capsys, store, "--smoothing", "1")  # the next writer collects the garbage
    ids = publication.run_ids(store)
    assert len(ids) == 2
    assert sorted(p.name for p in (store / "results" / "runs").iterdir() if p.is_dir()) == ids


def test_kill_9_after_the_record_publishes_the_whole_run(store, capsys):
    analyze(capsys, store)
    r = gla_sub("analyze", "--store", store, "--quiet", "--smoothing", "1",
                env={records.FAULT_ENV: "publish.after_record"})
    assert r.returncode == -9
    latest = publication.latest(store)
    assert latest.record["parent"] == publication.run_ids(store)[0]
    publication.verify(store)  # every file of the committed run is whole
    assert (store / "results" / "LATEST").read_text().strip() != latest.id  # not trusted: stale here


def test_failed_runs_publish_nothing(store, capsys, monkeypatch):
    analyze(capsys, store)
    before = runs_bytes(store)
    for argv, fragment in (
        (["--estimator", "nope"], "--estimator: unknown 'nope'"),
        (["--fit-split", "test"], "--allow-fit-on-eval"),
        (["--eval-split", "holdout"], "split 'holdout' not found"),
    ):
        code, _, err = gla(capsys, "analyze", "--store", store, "--quiet", *argv)
        assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1, (argv, err)
        assert runs_bytes(store) == before, argv
    # a cell that fails during the analysis, beside a good one: no run, the failed cell named
    real = inc.analyze_cell

    def flaky(st, model, dataset, options):
        if model == "m2":
            raise RuntimeError("planted failure")
        return real(st, model, dataset, options)

    monkeypatch.setattr(inc, "analyze_cell", flaky)
    code, _, err = gla(capsys, "analyze", "--store", store, "--quiet", "--workers", "0", "--smoothing", "1")
    assert code == 2 and "cell m2/d: RuntimeError: planted failure" in err and "nothing published" in err, err
    assert len(err.strip().splitlines()) == 1
    assert runs_bytes(store) == before


def _make_runs(capsys, store, n, *extra):
    for i in range(n):
        analyze(capsys, store, "--smoothing", str(i), *extra)


def test_retention_keeps_the_last_runs_and_never_the_latest(store, capsys):
    _make_runs(capsys, store, 4, "--keep-runs", "2")
    ids = publication.run_ids(store)
    assert len(ids) == 2 and publication.latest(store).record["parent"] == ids[0]
    assert sorted(p.name for p in (store / "results" / "runs").iterdir() if p.is_dir()) == ids
    # a retention given on a no-change rerun applies too (no new run)
    analyze(capsys, store, "--smoothing", "3", "--keep-runs", "1")
    assert publication.run_ids(store) == ids[1:]
    # by age: every run is older than half a day "tomorrow", but the latest stays
    analyze(capsys, store, "--smoothing", "7")
    ids = publication.run_ids(store)
    tomorrow = datetime.now(UTC) + timedelta(days=1)
    assert publication.runs_to_prune(store, None, 0.5, now=tomorrow) == ids[:1]
    assert publication.runs_to_prune(store, None, 2, now=tomorrow) == []
    assert publication.prune_runs(store, None, 0.5, now=tomorrow) == ids[:1]
    assert publication.run_ids(store) == ids[1:]
    # default: 20 runs when neither is set; 0 = no limit
    assert publication.retention(None, None) == (publication.DEFAULT_KEEP_RUNS, None)
    assert publication.retention(0, None) == (None, None)
    code, _, err = gla(capsys, "analyze", "--store", store, "--keep-runs", "-1")
    assert code == 2 and "--keep-runs: must be >= 0" in err


def test_pruning_a_run_is_atomic_for_readers(store, capsys):
    _make_runs(capsys, store, 2)
    first, second = publication.run_ids(store)
    keep = {k: v for k, v in runs_bytes(store).items() if first not in k}
    code = "import sys; from gla.pipeline import publication; publication.prune_runs(sys.argv[1], keep_runs=1)"
    r = subprocess.run([sys.executable, "-c", code, str(store)], capture_output=True, text=True, timeout=120,
                       env={**os.environ, records.FAULT_ENV: "prune.after_record"})
    assert r.returncode == -9, r.stderr
    assert publication.run_ids(store) == [second]  # the record went first: the run is gone for readers
    assert {k: v for k, v in runs_bytes(store).items() if first not in k} == keep
    assert (store / "results" / "runs" / first).is_dir()  # its files: garbage for the next writer
    analyze(capsys, store, "--smoothing", "5")
    assert not (store / "results" / "runs" / first).exists()


def test_history_lists_every_run(store, capsys):
    _make_runs(capsys, store, 2)
    write_cell(store, "m3", "d", num_classes=6, fit_per_class=10, eval_rows=240, seed=3)
    analyze(capsys, store, "--smoothing", "1")
    code, out, _ = gla(capsys, "history", "--store", store)
    lines = out.strip().splitlines()
    ids = publication.run_ids(store)
    assert code == 0 and [ln.split()[0] for ln in lines] == ids
    assert "+2 ~0 -0 =0 cells" in lines[0] and "~2" in lines[1] and "+1 ~0 -0 =2 cells: +m3/d" in lines[2]
    code, out, _ = gla(capsys, "history", "--store", store, "--json", "--limit", "2")
    assert [r["id"] for r in json.loads(out)] == ids[1:]


def test_diff_defaults_to_previous_against_latest(store, capsys):
    analyze(capsys, store)
    code, _, err = gla(capsys, "diff", "--store", store)
    assert code == 2 and "no previous run" in err and len(err.strip().splitlines()) == 1
    write_cell(store, "m1", "d", num_classes=6, fit_per_class=10, eval_rows=240, seed=11)
    analyze(capsys, store)
    first, second = publication.run_ids(store)
    code, out, err = gla(capsys, "diff", "--store", store, "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert (doc["from"], doc["to"]) == (first, second)
    changed = {(r["model"], r["dataset"]) for r in doc["tests"]
               if r["metric"] == "accuracy" and r["delta"] not in (0, None)}
    assert ("m1", "d") in changed and ("m2", "d") not in changed
    code, out, _ = gla(capsys, "diff", "--store", store, "--from", first[:-2], "--to", "previous", "--json")
    assert code == 0 and {json.loads(out)["from"], json.loads(out)["to"]} == {first}
    code, _, err = gla(capsys, "diff", "--store", store, "--from", "1999")
    assert code == 2 and "no such run" in err


def test_estimators_side_by_side(store, capsys):
    analyze(capsys, store)
    gla_rows = publication.read_table(store, "summary")
    analyze(capsys, store, "--estimator", "eigen")
    s = publication.read_table(store, "summary")
    assert set(s["estimator"]) == {"gla", "eigen"}
    assert s.filter(pl.col("estimator") == "gla").equals(gla_rows)  # kept, byte for byte as rows
    assert set(publication.read_table(store, "priors")["estimator"]) == {"gla", "eigen"}
    assert publication.latest(store).record["estimators"] == ["eigen", "gla"]
    # the same analysis again: no new run
    n = len(publication.run_ids(store))
    analyze(capsys, store, "--estimator", "eigen")
    assert len(publication.run_ids(store)) == n
    # other inputs (a changed option other than the estimator): the earlier rows describe
    # other numbers and are not kept
    analyze(capsys, store, "--estimator", "eigen", "--smoothing", "1")
    assert set(publication.read_table(store, "summary")["estimator"]) == {"eigen"}
    analyze(capsys, store, "--estimator", "gla", "--smoothing", "1")
    assert set(publication.read_table(store, "summary")["estimator"]) == {"gla", "eigen"}
    analyze(capsys, store, "--estimator", "gla", "--smoothing", "1", "--replace-estimators")
    assert set(publication.read_table(store, "summary")["estimator"]) == {"gla"}
    for name in ("summary", "per_class", "priors"):
        df = publication.read_table(store, name)
        assert df.select(schema.keys(name)).is_duplicated().sum() == 0, name


def test_gate_blocks_publish(store, capsys):
    analyze(capsys, store)
    before = runs_bytes(store)
    rule = "zs.accuracy >= 0.999"  # zs is about 0.9 here: cannot pass
    write_cell(store, "m1", "d", num_classes=6, fit_per_class=10, eval_rows=240, seed=21)
    code, _, err = gla(capsys, "analyze", "--store", store, "--quiet", "--gate", rule, "--gate-blocks-publish")
    assert code == 3 and "NOT published" in err and "gate failed" in err, err
    assert runs_bytes(store) == before
    code, _, err = gla(capsys, "analyze", "--store", store, "--quiet", "--gate", rule)
    assert code == 3 and "results were published" in err
    assert len(publication.run_ids(store)) == 2


def test_prune_is_a_run_the_previous_run_undoes(store, capsys):
    analyze(capsys, store)
    assert cells_not_in_config(store, [("m1", "d")]) == [("m2", "d")]
    first = publication.latest(store)
    before = publication.read_table(store, "summary")
    out = prune_cells(store, [("m2", "d")])
    run = publication.latest(store)
    assert out.run_id == run.id and run.record["kind"] == "prune" and run.record["parent"] == first.id
    assert run.record["cells"]["removed"] == ["m2/d"]
    assert set(publication.read_table(store, "summary")["model"]) == {"m1"}
    assert publication.read_table(store, "summary", first.id).equals(before)  # the previous run keeps them
    assert (store / "logits" / "m2" / "d").is_dir()  # logits kept by default
    # a later analysis of m1 alone does not bring m2 back from its cache
    code, _, err = gla(capsys, "analyze", "--store", store, "--quiet", "--only", "model=m1")
    assert code == 0, err
    assert set(publication.read_table(store, "summary")["model"]) == {"m1"}


def test_readme_snippet_reads_runs_without_gla(store, capsys, monkeypatch):
    """The README's reading snippet, run as written, against two runs of a store."""
    analyze(capsys, store)
    analyze(capsys, store, "--smoothing", "1")
    text = (REPO / "README.md").read_text()
    section = text[text.index("Reading the latest run, or any kept run, without gla"):]
    code = section[section.index("```python\n") + len("```python\n"):]
    code = code[: code.index("```")]
    monkeypatch.chdir(store.parent)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the documented snippet
    first, second = publication.runs(store)
    assert scope["ids"] == [first.id, second.id]
    assert scope["latest"].equals(publication.read_table(store, "summary"))
    assert scope["first"].equals(publication.read_table(store, "summary", first.id))
    duckdb = pytest.importorskip("duckdb")
    got = duckdb.sql(f"select * from 'S/results/runs/{second.id}/summary.parquet'").pl()
    assert got.equals(scope["latest"])


def test_store_doc_snippets_read_a_store_without_gla(store, capsys, monkeypatch):
    """docs/store.md's reading snippets (a cell's logits through its record and manifest,
    the latest run's summary), run as written on a store."""
    import re

    from gla.pipeline.store import Store

    analyze(capsys, store)
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "docs" / "store.md").read_text(), re.S)
    assert len(blocks) >= 2
    monkeypatch.chdir(store.parent)
    m, d = CELLS[0]
    scopes = []
    for code in blocks:
        scope: dict = {}
        exec(compile(code.replace("S/logits/m/d", f"S/logits/{m}/{d}"), "docs/store.md", "exec"), scope)  # noqa: S102
        scopes.append(scope)
    logits = next(s for s in scopes if "zs" in s)
    want = Store(store).read_split(m, d, "test", columns=("zs",)).zs
    np.testing.assert_array_equal(logits["zs"], want[: logits["zs"].shape[0]])
    read = next(s for s in scopes if "summary" in s)
    assert read["summary"].equals(publication.read_table(store, "summary"))
