"""The store lock: one run at a time, a clear message naming the holder, stale takeover."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from gla.pipeline import lock
from gla.pipeline.errors import UserError

REPO = Path(__file__).resolve().parent.parent


def _holder(pid: int, host: str | None = None, command: str = "gla run") -> dict:
    return {
        "host": host or socket.gethostname(),
        "pid": pid,
        "pid_start_ticks": lock._proc_start_ticks(pid),
        "command": command,
        "started": time.time(),
    }


@pytest.fixture
def sleeper():
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield p
    p.kill()
    p.wait()


def test_acquire_writes_holder_and_release_removes(tmp_path):
    with lock.store_lock(tmp_path, "gla test") as path:
        assert path == tmp_path / ".gla.lock"
        info = json.loads(path.read_text())
        assert info["pid"] == os.getpid()
        assert info["host"] == socket.gethostname()
        assert info["command"] == "gla test"
        # Re-entrant inside one process (gla run -> analyze).
        with lock.store_lock(tmp_path, "nested"):
            assert path.exists()
        assert path.exists()
    assert not (tmp_path / ".gla.lock").exists()


def test_live_holder_blocks_with_message_naming_it(tmp_path, sleeper):
    (tmp_path / ".gla.lock").write_text(json.dumps(_holder(sleeper.pid, command="gla run demo.toml")))
    with pytest.raises(lock.StoreLocked) as e:
        lock.acquire(tmp_path, "gla run")
    msg = str(e.value)
    assert isinstance(e.value, UserError)
    assert f"pid {sleeper.pid}" in msg and "gla run demo.toml" in msg and socket.gethostname() in msg
    # The holder's lock is untouched.
    assert json.loads((tmp_path / ".gla.lock").read_text())["pid"] == sleeper.pid


def test_dead_pid_on_this_host_is_taken_over(tmp_path, capsys):
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    (tmp_path / ".gla.lock").write_text(json.dumps(_holder(p.pid)))
    with lock.store_lock(tmp_path, "gla run"):
        assert json.loads((tmp_path / ".gla.lock").read_text())["pid"] == os.getpid()
    assert "stale lock" in capsys.readouterr().err


def test_reused_pid_is_stale(tmp_path, sleeper):
    h = _holder(sleeper.pid)
    h["pid_start_ticks"] = (h["pid_start_ticks"] or 0) + 12345  # same pid, another process
    assert lock.is_stale(h, tmp_path / ".gla.lock")


def test_other_host_is_never_stale(tmp_path):
    h = _holder(999_999_999, host="some-other-host")
    (tmp_path / ".gla.lock").write_text(json.dumps(h))
    with pytest.raises(lock.StoreLocked, match="some-other-host"):
        lock.acquire(tmp_path, "gla run")


def test_empty_lock_file_is_stale_only_when_old(tmp_path):
    path = tmp_path / ".gla.lock"
    path.write_text("")
    with pytest.raises(lock.StoreLocked, match="holder unknown"):
        lock.acquire(tmp_path, "gla run")
    old = time.time() - 3600
    os.utime(path, (old, old))
    with lock.store_lock(tmp_path, "gla run"):
        pass


def test_release_keeps_someone_elses_lock(tmp_path, sleeper):
    lock.acquire(tmp_path, "gla run")
    # Another process took the lock over meanwhile (e.g. we were judged stale).
    (tmp_path / ".gla.lock").write_text(json.dumps(_holder(sleeper.pid)))
    lock.release(tmp_path)
    assert json.loads((tmp_path / ".gla.lock").read_text())["pid"] == sleeper.pid
    (tmp_path / ".gla.lock").unlink()


def test_concurrent_takeover_of_a_stale_lock_has_one_winner(tmp_path):
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    (tmp_path / ".gla.lock").write_text(json.dumps(_holder(p.pid)))
    script = textwrap.dedent(
        f"""
        import sys, time
        from gla.pipeline import lock
        try:
            lock.acquire({str(tmp_path)!r}, "contender")
        except lock.StoreLocked:
            print("locked"); sys.exit(0)
        print("won"); sys.stdout.flush(); time.sleep(2)
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         text=True, cwd=REPO)
        for _ in range(4)
    ]
    outs = [pr.communicate(timeout=60)[0].strip() for pr in procs]
    assert sorted(outs) == ["locked", "locked", "locked", "won"]


def test_cli_run_on_locked_store_exits_2_naming_holder(tmp_path, sleeper):
    store = tmp_path / "store"
    store.mkdir()
    (store / ".gla.lock").write_text(json.dumps(_holder(sleeper.pid, command="gla run other.toml")))
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        'store = "store"\n[[models]]\nname = "m"\narch = "a"\npretrained = "none"\n'
        '[[datasets]]\nname = "d"\nkind = "imagefolder"\n'
    )
    r = subprocess.run(
        [sys.executable, "-m", "gla.pipeline.cli", "run", str(cfg), "--stages", "analyze,report", "--workers", "0"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert r.returncode == 2, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert "locked" in line and f"pid {sleeper.pid}" in line and "gla run other.toml" in line
