"""Joining a shared cluster: Dask's own scheduler setting is respected, and a scheduler
with no workers is waited for, then reported in one line (exit 2), not a silent hang.

Every scheduler here listens on 127.0.0.1 and lives in the test process.
"""

from __future__ import annotations

import operator
import os
import subprocess
import sys
import time
from pathlib import Path

import dask
import numpy as np
import pytest
from dask.distributed import LocalCluster
from gla.pipeline.errors import UserError
from gla.pipeline.runner import Runner, dask_scheduler_address


@pytest.fixture
def empty_scheduler():
    """A scheduler on 127.0.0.1 with no worker."""
    with LocalCluster(n_workers=0, processes=False, protocol="tcp", host="127.0.0.1",
                      dashboard_address=":0") as c:
        yield c.scheduler_address


@pytest.fixture
def one_worker_scheduler():
    # A process worker: the runner's thread-limit plugin must not touch this test process.
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=":0") as c:
        yield c.scheduler_address


def test_dask_scheduler_address_sources(monkeypatch):
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    assert dask_scheduler_address() == ("", "")
    with dask.config.set({"scheduler-address": "tcp://127.0.0.1:1"}):
        assert dask_scheduler_address() == ("tcp://127.0.0.1:1", "dask config scheduler-address")
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tcp://127.0.0.1:2")
    assert dask_scheduler_address() == ("tcp://127.0.0.1:2", "DASK_SCHEDULER_ADDRESS")


def test_env_address_is_joined_not_a_local_cluster(monkeypatch, one_worker_scheduler):
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", one_worker_scheduler)
    notes = []
    with Runner(progress=False, log=notes.append) as r:
        out = r.map(operator.neg, [1, 2, 3])
        assert r.cluster is None and r.client is not None  # joined, started nothing
        assert r.scheduler_source == "DASK_SCHEDULER_ADDRESS"
    assert out == [(1, -1), (2, -2), (3, -3)]
    assert any(n.startswith(f"joined cluster {one_worker_scheduler} (1 workers)") for n in notes), notes


def test_dask_config_address_is_joined(monkeypatch, one_worker_scheduler):
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    with dask.config.set({"scheduler-address": one_worker_scheduler}), Runner(progress=False, quiet=True) as r:
        assert r.map(operator.neg, [4]) == [(4, -4)]
        assert r.cluster is None


def test_explicit_in_process_wins_over_dask_setting(monkeypatch):
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tcp://127.0.0.1:9")  # nothing there
    with Runner(workers=0, quiet=True) as r:
        assert r.map(operator.neg, [1]) == [(1, -1)] and r.client is None


def test_no_workers_waits_then_one_line(empty_scheduler):
    notes = []
    t0 = time.monotonic()
    with pytest.raises(UserError) as e, Runner(scheduler=empty_scheduler, worker_timeout=1.0,
                                               progress=False, log=notes.append) as r:
        r.map(operator.neg, [1, 2])
    waited = time.monotonic() - t0
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"scheduler {empty_scheduler} (--scheduler / compute.scheduler) has no workers after 1 s")
    assert "dask worker" in msg
    assert waited >= 1.0  # it did wait for the timeout before reporting
    assert any("has no workers yet: waiting up to 1 s" in n for n in notes), notes


def test_worker_timeout_must_be_positive():
    with pytest.raises(UserError, match="worker_timeout must be > 0"):
        Runner(worker_timeout=0)


def test_gla_analyze_with_env_scheduler_and_no_workers_exit_2(tmp_path, empty_scheduler):
    """The whole command: DASK_SCHEDULER_ADDRESS names an empty scheduler; exit 2, one
    line on stderr naming it and where it came from; no result table written."""
    gla = Path(sys.executable).parent / "gla"
    rng = np.random.default_rng(0)
    for split in ("val", "test"):
        y = np.arange(40) % 4
        np.save(tmp_path / f"y_{split}.npy", y)
        np.save(tmp_path / f"zs_{split}.npy", rng.normal(size=(40, 4)))
        proc = subprocess.run([str(gla), "import", "--store", "S", "--model", "m", "--dataset", "d",
                               "--split", split, "--labels", f"y_{split}.npy", "--zs", f"zs_{split}.npy"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "S").rglob("*"))
    env = {**os.environ, "DASK_SCHEDULER_ADDRESS": empty_scheduler}
    proc = subprocess.run([str(gla), "analyze", "--store", "S", "--worker-timeout", "1"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"scheduler {empty_scheduler} (DASK_SCHEDULER_ADDRESS) has no workers after 1 s" in lines[0]
    assert "waiting up to 1 s" in proc.stdout
    assert not (tmp_path / "S" / "results" / "runs").exists()
    after = sorted(p.relative_to(tmp_path) for p in (tmp_path / "S").rglob("*") if ".lock" not in p.name)
    assert [p for p in after if p not in before and p.suffix == ".parquet"] == []
