"""The runner: cells fan out in-process or on Dask; a failing cell keeps the others."""

from __future__ import annotations

import json
import math
import operator
import subprocess
import sys
from pathlib import Path

import pytest
from gla.extract import cellformat as cf
from gla.pipeline.errors import UserError
from gla.pipeline.runner import CellError, ComputeOptions, Runner, failures, item_key, map_cells


def _check_outcomes(out):
    assert [it for it, _ in out] == [4, -1, 9, 16]
    assert [o for _, o in out if not isinstance(o, CellError)] == [2.0, 3.0, 4.0]
    (err,) = failures(out)
    assert err.key == "cell--1"
    assert err.error == "ValueError: math domain error"
    assert "Traceback" in err.traceback and "\n" not in err.error
    assert str(err) == "cell--1: ValueError: math domain error"


def test_in_process_map_keeps_order_and_other_results():
    seen = []
    out = map_cells(math.sqrt, [4, -1, 9, 16], {"workers": 0}, key=lambda x: f"cell-{x}",
                    progress=False, quiet=True, on_result=lambda it, o: seen.append(it))
    _check_outcomes(out)
    assert sorted(seen) == [-1, 4, 9, 16]


def test_in_process_starts_no_cluster():
    with Runner(workers=0, quiet=True) as r:
        assert r.in_process
        assert r.map(operator.neg, [1, 2]) == [(1, -1), (2, -2)]
        assert r.client is None


def test_local_cluster_two_workers_thread_env():
    with Runner(workers=2, threads_per_worker=1, progress=False, quiet=True) as r:
        assert r.client is None  # lazy: nothing started before the first map
        out = r.map(math.sqrt, [4, -1, 9, 16], key=lambda x: f"cell-{x}")
        assert r.client is not None and len(r.client.scheduler_info()["workers"]) == 2
        _check_outcomes(out)
        # Thread pools of the worker processes match threads_per_worker.
        env = r.map(__import__("os").getenv, ["POLARS_MAX_THREADS", "OMP_NUM_THREADS"])
        assert [v for _, v in env] == ["1", "1"]
        assert r.dashboard_link and r.dashboard_link.startswith("http")


def test_join_existing_cluster_by_address_and_scheduler_file(tmp_path):
    from dask.distributed import Client, LocalCluster

    # A process worker: the runner's thread-limit plugin must not touch this test process.
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=":0") as cluster:
        out = map_cells(operator.neg, [1, 2, 3], {"scheduler": cluster.scheduler_address},
                        progress=False, quiet=True)
        assert [o for _, o in out] == [-1, -2, -3]
        sched_file = tmp_path / "scheduler.json"
        with Client(cluster) as c:
            c.write_scheduler_file(str(sched_file))
        out = map_cells(__import__("os").getenv, ["OMP_NUM_THREADS"], {"scheduler": str(sched_file)},
                        progress=False, quiet=True)
        assert out == [("OMP_NUM_THREADS", "2")]  # set by the plugin on a worker we did not start


def test_bad_scheduler_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="scheduler"):
        map_cells(operator.neg, [1], {"scheduler": str(tmp_path / "nope.json")}, quiet=True)


def test_compute_options_from_config_and_overrides():
    from gla.pipeline.config import ComputeSettings

    o = ComputeOptions.from_any(ComputeSettings(workers=3, threads_per_worker=2), workers=None, scheduler="")
    assert (o.workers, o.threads_per_worker, o.scheduler) == (3, 2, "")
    o = ComputeOptions.from_any({"workers": 3}, workers=0)
    assert o.workers == 0
    with pytest.raises(UserError, match="threads_per_worker"):
        ComputeOptions.from_any({"threads_per_worker": 0})


def test_item_key():
    assert item_key(("m", "d")) == "m/d"
    assert item_key({"model": {"name": "m"}, "dataset": {"name": "d"}}) == "m/d"
    assert item_key(7) == "7"


# --------------------------------------------------------------------------- gla run

REPO = Path(__file__).resolve().parent.parent

RUN_TOML = """
store = "store"
[compute]
workers = {workers}
[analysis]
estimators = ["gla", "eigen"]
{models}
[[datasets]]
name = "da"
kind = "imagefolder"
train_counts = "counts.csv"
[[datasets]]
name = "db"
kind = "imagefolder"
"""


def _synthetic_config(tmp_path: Path, workers: int) -> Path:
    from gla.pipeline.synthetic import write_cell

    for i, (m, d) in enumerate([("ma", "da"), ("ma", "db"), ("mb", "da"), ("mb", "db")]):
        write_cell(tmp_path / "store", m, d, num_classes=6, fit_per_class=8, eval_rows=300, seed=i, counts=False)
    (tmp_path / "counts.csv").write_text("class_index,count\n0,500\n1,300\n2,100\n3,50\n4,10\n5,5\n")
    models = "".join(f'[[models]]\nname = "{m}"\narch = "x"\npretrained = "none"\n' for m in ("ma", "mb"))
    cfg = tmp_path / "run.toml"
    cfg.write_text(RUN_TOML.format(workers=workers, models=models))
    return cfg


def gla(*args, cwd=REPO):
    r = subprocess.run([sys.executable, "-m", "gla.pipeline.cli", *map(str, args)], capture_output=True, text=True,
                       cwd=cwd, timeout=600)
    return r


def test_gla_run_on_a_cluster_then_rerun_does_nothing(tmp_path):
    cfg = _synthetic_config(tmp_path, workers=2)
    r = gla("run", cfg, "--stages", "analyze,report", "--json", "--no-progress")
    assert r.returncode == 0, r.stderr
    first = json.loads(r.stdout)
    assert sorted(first["analysed"]) == ["ma/da", "ma/db", "mb/da", "mb/db"] and first["failed"] == []
    assert "local cluster: 2 worker(s)" in r.stderr and "dashboard: http" in r.stderr
    store = tmp_path / "store"
    assert (store / "report" / "index.html").exists()
    import polars as pl
    from gla.pipeline.cell_analysis import StoreAnalysisOptions, analyze_cell

    # The cluster's tables equal an in-process analysis of each cell.
    summary = pl.read_parquet(store / "results" / "summary.parquet")
    direct = analyze_cell(store, "mb", "da", StoreAnalysisOptions(estimators=("gla", "eigen")))
    got = summary.filter((pl.col("model") == "mb") & (pl.col("dataset") == "da")).sort("method")
    assert got.select(direct.summary.columns).equals(direct.summary.sort("method"))
    # train_counts were imported for da (and drive prior_downstream), not for db.
    counts = pl.read_parquet(store / "datasets" / "da" / "class_counts.parquet")
    assert counts["count"].to_list() == [500, 300, 100, 50, 10, 5]
    assert not (store / "datasets" / "db" / "class_counts.parquet").exists()

    r = gla("run", cfg, "--stages", "analyze,report", "--json")
    assert r.returncode == 0, r.stderr
    again = json.loads(r.stdout)
    assert again["analysed"] == [] and sorted(again["analysis_unchanged"]) == sorted(first["analysed"])
    assert "local cluster" not in r.stderr  # nothing to do: no cluster started
    assert "tables unchanged" in r.stderr and "(unchanged)" in r.stderr

    # One option changed on the command line: every cell recomputed; --only limits it.
    r = gla("run", cfg, "--stages", "analyze", "--workers", "0", "--set", "analysis.smoothing=1.0",
            "--only", "model=ma,dataset=db", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["analysed"] == ["ma/db"] and out["cells"] == ["ma/db"]


def test_gla_run_failing_cell_reported_exit_1(tmp_path):
    cfg = _synthetic_config(tmp_path, workers=0)
    # Break one cell: its fit split disappears.
    cell = tmp_path / "store" / "logits" / "mb" / "db"
    cf.commit_cell(cell, {"test": cf.read_cell_record(cell)["splits"]["test"]}, replace=True)
    r = gla("run", cfg, "--stages", "analyze,report", "--json")
    assert r.returncode == 1, r.stderr
    out = json.loads(r.stdout)
    (fail,) = out["failed"]
    assert fail["cell"] == "mb/db" and "split 'val' not found" in fail["error"]
    assert sorted(out["analysed"]) == ["ma/da", "ma/db", "mb/da"]
    assert "FAILED mb/db" in r.stderr
    assert (tmp_path / "store" / "report" / "index.html").exists()


def test_gla_run_bad_input_exit_2(tmp_path):
    cfg = _synthetic_config(tmp_path, workers=0)
    r = gla("run", cfg, "--only", "model=nope")
    assert r.returncode == 2 and "--only matched no model" in r.stderr
    r = gla("run", cfg, "--stages", "analyse")
    assert r.returncode == 2 and "unknown stage 'analyse'" in r.stderr
    r = gla("run", tmp_path / "missing.toml")
    assert r.returncode == 2 and "config file not found" in r.stderr


@pytest.mark.torch
def test_gla_run_extracts_analyses_reports_and_reruns_nothing(tmp_path):
    pytest.importorskip("open_clip")
    from fixtures_tiny_clip import CLASSES, make_tiny_clip
    from gla.pipeline.config import load_config
    from gla.pipeline.matrix_run import run_config

    tc = make_tiny_clip(tmp_path / "tc")
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        f'store = "store"\n[compute]\nworkers = 0\n[extract]\nbatch_size = 8\nnum_workers = 0\n'
        f'[[models]]\nname = "tiny"\narch = "{tc.arch}"\nmodel_config = "{tc.config}"\n'
        f'pretrained = "{tc.checkpoint}"\nfinetuned = {{ pics = "{tc.finetuned}" }}\n'
        f'[[datasets]]\nname = "pics"\nkind = "imagefolder"\nroot = "{tc.images}"\n'
        f"class_names = {json.dumps(CLASSES)}\n"
        "[datasets.splits]\nval = { per_class = 2 }\ntest = { rest = true }\n"
    )
    config = load_config(cfg)
    s = run_config(config, progress=False, quiet=True)
    assert s.ok and s.extracted == [("tiny", "pics")] and s.analysis.computed == [("tiny", "pics")]
    assert s.report_written and s.report.exists()
    s = run_config(config, progress=False, quiet=True)
    assert s.ok and s.extracted == [] and s.extract_skipped == [("tiny", "pics")]
    assert s.analysis.computed == [] and not s.report_written
    # A new image: extraction reruns for the cell (and so does its analysis).
    from fixtures_tiny_clip import make_images

    make_images(tmp_path / "more", per_class=1, seed=5)
    (tmp_path / "more" / "cat" / "000.png").rename(tc.images / "cat" / "999.png")
    s = run_config(config, progress=False, quiet=True)
    assert s.ok and s.extracted == [("tiny", "pics")] and s.analysis.computed == [("tiny", "pics")]


def test_gla_analyze_on_a_cluster_equals_in_process(tmp_path):
    import polars as pl

    _synthetic_config(tmp_path, workers=0)
    store = tmp_path / "store"
    r = gla("analyze", "--store", store, "--workers", "0")
    assert r.returncode == 0, r.stderr
    assert "4 analysed, 0 unchanged" in r.stdout and "local cluster" not in r.stdout
    here = {n: pl.read_parquet(store / "results" / f"{n}.parquet") for n in ("summary", "per_class", "calibration")}
    r = gla("analyze", "--store", store, "--workers", "2", "--force")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""  # notes go to stdout: stderr is for the one error line
    assert "gla: local cluster: 2 worker(s)" in r.stdout and "4 analysed" in r.stdout
    for name, df in here.items():
        assert pl.read_parquet(store / "results" / f"{name}.parquet").equals(df), name
    r = gla("analyze", "--store", store)
    assert r.returncode == 0 and "0 analysed, 4 unchanged; tables unchanged" in r.stdout
