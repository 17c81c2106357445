"""Run the ``gla`` CLI with a fault injected at the n-th file-system change.

    python tests/fault_inject.py ARGS...        (the gla command line)

``GLA_TEST_KILL_AT=N`` SIGKILLs the process just before its N-th call of ``os.replace``,
``os.rename``, ``os.link``, ``os.unlink`` or ``os.rmdir`` (every commit, swap or removal
a writer makes goes through one of them, ``pathlib`` and ``shutil`` included), so a test
can kill a command at each of its steps without knowing the code's internals.
``GLA_TEST_FAIL_AT=N`` raises ``OSError(ENOSPC)`` there instead (a disk that fills up);
``GLA_TEST_SLEEP_AT=N:SECONDS`` sleeps there (a slow writer holding the store's lock).
``GLA_TEST_COUNT=FILE`` writes the number of such calls at exit (how many steps a clean
run has) and ``GLA_TEST_TRACE=FILE`` one line per call (``n op path``). Only this
process is patched: use ``--workers 0``.
"""

from __future__ import annotations

import atexit
import errno
import os
import signal
import sys
import time

OPS = ("replace", "rename", "link", "unlink", "rmdir")
_count = [0]


def _wrap(name: str, fn, kill_at: int, fail_at: int, trace: str, sleep: tuple[int, float]):
    def op(*args, **kwargs):
        _count[0] += 1
        if _count[0] == sleep[0]:
            time.sleep(sleep[1])
        if trace:
            with open(trace, "a") as f:
                f.write(f"{_count[0]} {name} {args[0] if args else ''}\n")
        if _count[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if _count[0] == fail_at:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(args[0]))
        return fn(*args, **kwargs)

    op.__name__ = name
    return op


def install() -> None:
    kill_at = int(os.environ.get("GLA_TEST_KILL_AT") or 0)
    fail_at = int(os.environ.get("GLA_TEST_FAIL_AT") or 0)
    trace = os.environ.get("GLA_TEST_TRACE", "")
    at, _, secs = (os.environ.get("GLA_TEST_SLEEP_AT") or "0:0").partition(":")
    for name in OPS:
        setattr(os, name, _wrap(name, getattr(os, name), kill_at, fail_at, trace, (int(at), float(secs or 0))))
    out = os.environ.get("GLA_TEST_COUNT")
    if out:
        atexit.register(lambda: open(out, "w").write(str(_count[0])))


if __name__ == "__main__":
    install()
    from gla.pipeline.cli import main

    sys.exit(main(sys.argv[1:]))
