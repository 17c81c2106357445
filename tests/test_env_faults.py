"""Environment faults: a read-only store, a full disk. Each test asserts the store's
bytes, not only exit codes.

Tests run as root, for whom ``chmod`` stops nothing, so the store goes on a small tmpfs
(remounted read-only, or filled up). Where mounting is not allowed the tmpfs variant is
skipped with its reason, and a patched-writer variant (every file-system change under
the store fails with EROFS / ENOSPC) checks the same promises.
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from gla.pipeline import lock
from gla.pipeline.cli import main

C = 4


def snapshot(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*")) if not str(p.relative_to(root)).startswith(skip)}


def cli(capsys, *argv) -> tuple[int, list[str]]:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err.strip().splitlines()


def make_inputs(folder: Path) -> Path:
    rng = np.random.default_rng(3)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("val", 24), ("test", 60), ("new", 30)):
        np.save(folder / f"y_{split}.npy", np.r_[np.arange(C), rng.integers(0, C, n - C)])
        np.save(folder / f"zs_{split}.npy", rng.standard_normal((n, C)).astype(np.float32))
    np.save(folder / "counts.npy", np.array([5, 9, 3, 7]))
    return folder


def fill_store(capsys, store: Path, inputs: Path) -> None:
    for m in ("m1", "m2"):
        for split in ("val", "test"):
            rc, err = cli(capsys, "import", "--store", store, "--model", m, "--dataset", "d", "--split", split,
                          "--labels", inputs / f"y_{split}.npy", "--zs", inputs / f"zs_{split}.npy")
            assert rc == 0, err
    assert cli(capsys, "analyze", "--store", store, "--workers", "0", "--quiet")[0] == 0


def _mount(target: Path, size: str) -> None:
    target.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(target)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or 'mount failed'}); "
                    "the patched-writer variant covers this")


@pytest.fixture
def tmpfs(tmp_path):
    """Mount small tmpfs file systems under tmp_path (unmounted afterwards)."""
    mounted: list[Path] = []

    def make(name: str, size: str = "16m") -> Path:
        target = tmp_path / name
        _mount(target, size)
        mounted.append(target)
        return target

    yield make
    for target in reversed(mounted):
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


def _remount_ro(target: Path) -> None:
    r = subprocess.run(["mount", "-o", "remount,ro", str(target)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot remount read-only ({r.stderr.strip()})")


class PatchedDisk:
    """Every file-system change under ``root`` fails with ``code`` (EROFS or ENOSPC)."""

    def __init__(self, monkeypatch, root: Path, code: int, read_only: bool):
        self.root = str(root.resolve())
        self.code = code
        for name in ("replace", "rename", "link", "unlink", "rmdir", "mkdir", "makedirs"):
            monkeypatch.setattr(os, name, self._guard(getattr(os, name)))
        real_open, real_os_open = builtins.open, os.open

        def fake_open(file, mode="r", *a, **k):
            if any(c in mode for c in "wax+") and self._inside(file):
                self._fail(file)
            return real_open(file, mode, *a, **k)

        def fake_os_open(path, flags, *a, **k):
            if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and self._inside(path):
                self._fail(path)
            return real_os_open(path, flags, *a, **k)

        monkeypatch.setattr(builtins, "open", fake_open)
        monkeypatch.setattr(os, "open", fake_os_open)
        if read_only:
            real_ro = lock.is_read_only
            monkeypatch.setattr(lock, "is_read_only", lambda p: self._inside(p) or real_ro(p))
            real_access = os.access
            monkeypatch.setattr(os, "access", lambda p, m, **k: False if m & os.W_OK and self._inside(p)
                                else real_access(p, m, **k))

    def _inside(self, path) -> bool:
        try:
            p = os.path.abspath(os.fspath(path))
        except TypeError:
            return False
        return p == self.root or p.startswith(self.root + os.sep)

    def _fail(self, path):
        raise OSError(self.code, os.strerror(self.code), os.fspath(path))

    def _guard(self, fn):
        def op(path, *a, **k):
            if self._inside(path):
                self._fail(path)
            return fn(path, *a, **k)
        return op


# --------------------------------------------------------------------------- read-only


def _read_only_store(how: str, tmpfs, tmp_path, monkeypatch, capsys) -> Path:
    inputs = make_inputs(tmp_path / "in")
    root = tmpfs("ro") if how == "tmpfs" else tmp_path / "ro"
    store = root / "store"
    fill_store(capsys, store, inputs)
    if how == "tmpfs":
        _remount_ro(root)
    else:
        PatchedDisk(monkeypatch, store, errno.EROFS, read_only=True)
    return store


@pytest.mark.parametrize("how", ["tmpfs", "patched"])
def test_read_only_store_readers_work_writers_refuse_in_one_line(how, tmpfs, tmp_path, monkeypatch, capsys):
    store = _read_only_store(how, tmpfs, tmp_path, monkeypatch, capsys)
    inputs = tmp_path / "in"
    before = snapshot(store)
    # readers: a no-change analysis, a report written elsewhere, a diff
    assert cli(capsys, "analyze", "--store", store, "--workers", "0", "--quiet") == (0, [])
    rc, err = cli(capsys, "report", "--store", store, "--out", tmp_path / "out" / "report.html")
    assert rc == 0 and (tmp_path / "out" / "report.html").stat().st_size > 1000, err
    assert cli(capsys, "diff", "--store", store, "--against", store)[0] == 0  # either results layout
    # writers: one line each, naming the store or the file
    writers = [
        ("import", "--store", store, "--model", "m1", "--dataset", "d", "--split", "new",
         "--labels", inputs / "y_new.npy", "--zs", inputs / "zs_new.npy"),
        ("import", "--store", store, "--dataset", "d", "--train-counts", inputs / "counts.npy"),
        ("analyze", "--store", store, "--workers", "0", "--quiet", "--smoothing", "1"),
        ("report", "--store", store),
    ]
    for argv in writers:
        rc, err = cli(capsys, *argv)
        assert rc == 2 and len(err) == 1, (argv, err)
        assert str(store) in err[0] and ("read-only" in err[0].lower()), (argv, err)
    assert snapshot(store) == before


@pytest.mark.parametrize("how", ["tmpfs", "patched"])
def test_read_only_store_run_is_refused_before_any_work(how, tmpfs, tmp_path, monkeypatch, capsys):
    store = _read_only_store(how, tmpfs, tmp_path, monkeypatch, capsys)
    before = snapshot(store)
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'store = "{store}"\n[[models]]\nname = "m1"\narch = "x"\npretrained = "none"\n'
                   '[[datasets]]\nname = "d"\nkind = "imagefolder"\nroot = "nowhere"\n')
    for command in ("run", "check"):
        rc, err = cli(capsys, command, cfg)
        assert rc == 2 and len(err) == 1 and "read-only" in err[0], err
    assert snapshot(store) == before


# --------------------------------------------------------------------------- full disk


def _fill_disk(root: Path) -> Path:
    """Write a filler file until the file system is full; returns it."""
    filler = root / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC
    try:  # the last partial block too
        with open(filler, "ab") as f:
            while True:
                f.write(b"\0" * 512)
                f.flush()
    except OSError:
        pass
    return filler


def _full_store(how: str, tmpfs, tmp_path, monkeypatch, capsys) -> tuple[Path, Path]:
    inputs = make_inputs(tmp_path / "in")
    root = tmpfs("full", "8m") if how == "tmpfs" else tmp_path / "full"
    store = root / "store"
    fill_store(capsys, store, inputs)
    if how == "tmpfs":
        _fill_disk(root)
    else:
        PatchedDisk(monkeypatch, store, errno.ENOSPC, read_only=False)
    return store, inputs


@pytest.mark.parametrize("how", ["tmpfs", "patched"])
def test_full_disk_one_line_previous_results_intact_no_lock_left(how, tmpfs, tmp_path, monkeypatch, capsys):
    store, inputs = _full_store(how, tmpfs, tmp_path, monkeypatch, capsys)
    results = snapshot(store / "results")
    logits = snapshot(store / "logits")
    writers = [
        ("analyze", "--store", store, "--workers", "0", "--quiet", "--smoothing", "1", "--force"),
        ("import", "--store", store, "--model", "m1", "--dataset", "d", "--split", "new",
         "--labels", inputs / "y_new.npy", "--zs", inputs / "zs_new.npy"),
        ("import", "--store", store, "--dataset", "d", "--train-counts", inputs / "counts.npy"),
        ("report", "--store", store),
    ]
    for argv in writers:
        rc, err = cli(capsys, *argv)
        assert rc == 2 and len(err) == 1, (argv, err)
        assert "No space left on device" in err[0] and str(store) in err[0], (argv, err)
        assert not (store / lock.LOCK_NAME).exists(), argv  # no lock file blocks the next run
        assert snapshot(store / "results", skip=("cells",)) == {k: v for k, v in results.items()
                                                                 if not k.startswith("cells")}, argv
        assert snapshot(store / "logits") == logits, argv
        leftovers = [p for p in store.rglob("*") if p.name.endswith((".tmp", ".staged"))]
        assert not leftovers, (argv, leftovers)
