"""One run at a time per store: ``<store>/.gla.lock``.

The lock file is created with ``O_CREAT | O_EXCL`` and holds JSON naming its holder
(host, pid, process start ticks, command, start time). A second run fails fast with a
``StoreLocked`` error (a ``UserError``: exit 2) whose message names the holder. A lock
left by a process that no longer exists on this host is stale and is taken over. The
check-and-take-over step runs under an ``flock`` on a guard file, so two runs that find
the same stale lock cannot both take it. Locks are re-entrant within one process
(``gla run`` holds the lock and calls the analysis, which locks too).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gla.pipeline.errors import UserError

LOCK_NAME = ".gla.lock"
GUARD_NAME = ".gla.lock.guard"

_held: dict[str, int] = {}  # lock path -> re-entrancy depth (this process)
_held_mutex = threading.Lock()


class StoreLocked(UserError):
    """Another run holds the store's lock."""

    def __init__(self, path: Path, holder: dict[str, Any]):
        self.path = path
        self.holder = holder
        super().__init__(f"store is locked by another run ({describe_holder(holder)}); lock file {path}")


def describe_holder(holder: dict[str, Any]) -> str:
    if not holder:
        return "holder unknown: empty or unreadable lock file"
    started = holder.get("started")
    when = (
        time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started))
        if isinstance(started, int | float)
        else "?"
    )
    return (
        f"command {holder.get('command', '?')!r}, pid {holder.get('pid', '?')} "
        f"on host {holder.get('host', '?')}, started {when}"
    )


def _proc_start_ticks(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot (Linux), to detect pid reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22; the command name (field 2) may contain spaces, so split after the last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def holder_info(command: str) -> dict[str, Any]:
    pid = os.getpid()
    return {
        "host": socket.gethostname(),
        "pid": pid,
        "pid_start_ticks": _proc_start_ticks(pid),
        "command": command,
        "started": time.time(),
        "argv": sys.argv[:8],
    }


def read_holder(path: str | os.PathLike) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def is_stale(holder: dict[str, Any], path: Path, *, empty_grace: float = 10.0) -> bool:
    """A lock is stale when its holder is a dead (or reused) pid on this host.

    A lock held from another host is never judged stale here (we cannot see its
    processes). An empty lock file (holder died between create and write) is stale once
    it is older than ``empty_grace`` seconds.
    """
    if not holder:
        try:
            return time.time() - path.stat().st_mtime > empty_grace
        except OSError:
            return True
    if holder.get("host") != socket.gethostname():
        return False
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return True
    if not _pid_alive(pid):
        return True
    ticks = holder.get("pid_start_ticks")
    now_ticks = _proc_start_ticks(pid)
    return ticks is not None and now_ticks is not None and ticks != now_ticks


@contextlib.contextmanager
def _guard(store: Path) -> Iterator[None]:
    fd = os.open(store / GUARD_NAME, os.O_CREAT | os.O_RDWR, 0o666)  # the umask decides: teammates share the store
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def is_read_only(folder: str | os.PathLike) -> bool:
    """The folder is on a file system mounted read-only (root cannot write there either)."""
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def acquire(store: str | os.PathLike, command: str, *, read_only_ok: bool = False) -> Path:
    """Take the store's lock or raise ``StoreLocked``. Returns the lock path.

    On a store mounted read-only nothing can be written, by us or anyone, so there is
    nothing to lock: with ``read_only_ok`` (a command that writes only when something
    changed, such as gla analyze) it goes on unlocked; otherwise one line refuses it."""
    store = Path(store)
    try:
        store.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create store folder {store}: {e.strerror}") from e
    path = store / LOCK_NAME
    key = str(path.resolve())
    with _held_mutex:
        if key in _held:
            _held[key] += 1
            return path
    if is_read_only(store):
        if not read_only_ok:
            raise UserError(f"store {store} is on a read-only file system and {command} writes to it "
                            "(commands that only read, such as gla report --out DIR, still work)")
        with _held_mutex:
            _held[key] = 1
        return path
    with _guard(store):
        for _ in range(3):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                holder = read_holder(path)
                if is_stale(holder, path):
                    print(
                        f"gla: taking over a stale lock ({describe_holder(holder)})",
                        file=sys.stderr,
                    )
                    path.unlink(missing_ok=True)
                    continue
                raise StoreLocked(path, holder) from None
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(holder_info(command), f)
                    f.flush()
                    os.fsync(f.fileno())
            except BaseException as e:  # a full disk: no empty lock file may block the next run
                path.unlink(missing_ok=True)
                if isinstance(e, OSError):
                    raise UserError(f"{path}: cannot write the lock file ({e.strerror or e})") from None
                raise
            break
        else:  # pragma: no cover - only under a storm of concurrent stale takeovers
            raise StoreLocked(path, read_holder(path))
    with _held_mutex:
        _held[key] = 1
    return path


def release(store: str | os.PathLike) -> None:
    path = Path(store) / LOCK_NAME
    key = str(path.resolve())
    with _held_mutex:
        depth = _held.get(key, 0)
        if depth > 1:
            _held[key] = depth - 1
            return
        _held.pop(key, None)
    # Remove only our own lock (never one taken over by someone else meanwhile).
    holder = read_holder(path)
    if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def store_lock(store: str | os.PathLike, command: str = "gla", *, read_only_ok: bool = False) -> Iterator[Path]:
    """``with store_lock(store, "gla run"):`` — one run at a time per store."""
    path = acquire(store, command, read_only_ok=read_only_ok)
    try:
        yield path
    finally:
        release(store)
