"""Records: the one mechanism for integrity, freshness and publication, for every stage.

- **Integrity.** ``file_record(path)`` is what a seal says about a file (size, mtime,
  sha256); ``check_file`` compares a file with its record: a missing file or a different
  size is an ``IntegrityError`` at once; a different mtime means the file was touched
  since it was sealed, so its sha256 is recomputed and compared (a copied store whose
  bytes are intact passes); ``full=True`` always hashes. Parquet parts also carry
  per-page CRC32 checksums that the readers verify while decoding, so a part overwritten
  in place with its size and mtime kept is still caught on the read path.
- **Freshness.** ``Stamp`` is a small JSON record "this output was made from inputs with
  key K" (``is_current``, ``write``), written after the output it vouches for and removed
  before that output is rewritten. ``code_version(folder, ...)`` is the one code-version
  policy: a hash of the Python sources the output depends on.
- **Publication.** ``Ledger`` keeps numbered, write-once commit records in a folder
  (``<n>.json``); the newest one is current. A commit record is written last, after the
  immutable files it names, with an exclusive create (no rename of a directory is
  needed, so the same protocol can serve object stores); dropping a generation deletes
  its record first, so a reader never follows a record to missing files.

Every record is JSON written atomically (temporary file, fsync, rename). An unreadable
record is an ``IntegrityError`` naming the file; callers turn it into one line or, where
that is safe, rebuild. numpy/pyarrow-free: the analysis install and extract both use it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

CHUNK = 1 << 20
FAULT_ENV = "GLA_FAULT_KILL"  # "<point>[:<n>]": SIGKILL this process at the n-th hit (tests)
_fault_hits: dict[str, int] = {}


class IntegrityError(ValueError):
    """A file or record does not match what was sealed (message: one line naming it)."""


def fault_point(name: str) -> None:
    """A named point where the fault-injection tests kill the process (``GLA_FAULT_KILL``).
    A dictionary look-up when the variable is unset."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    point, _, nth = spec.partition(":")
    if point != name:
        return
    _fault_hits[name] = _fault_hits.get(name, 0) + 1
    if _fault_hits[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


# --------------------------------------------------------------------------- files


def _temp_beside(path: Path) -> tuple[int, str]:
    """A new temporary file next to ``path``, created with mode 0666 so that the kernel
    applies the user's umask (``tempfile.mkstemp`` would make it 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = str(path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue


def _synced_temp(path: Path, data: bytes) -> str:
    """``data`` in a new temporary file beside ``path``, on disk (fsync'd); the file is
    removed again when writing fails."""
    fd, tmp = _temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    tmp = _synced_temp(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def file_record(path: str | os.PathLike, **extra: Any) -> dict[str, Any]:
    """What a seal records about a file: name, size, mtime (ns) and sha256."""
    p = Path(path)
    st = p.stat()
    return {"file": p.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256(p), **extra}


def check_file(path: str | os.PathLike, record: dict[str, Any], sealed_by: str | os.PathLike,
               *, full: bool = False) -> bool:
    """Compare a file with its record. Returns True when its bytes were hashed.

    Missing file or other size: ``IntegrityError``. Same size and mtime: trusted (the
    Parquet page checksums still guard the bytes while they are decoded) unless
    ``full``. Otherwise the sha256 must match.
    """
    p = Path(path)
    st = _sized_stat(p, record, sealed_by)
    if not full and st.st_mtime_ns == record.get("mtime_ns"):
        return False
    want = record.get("sha256")
    if want and sha256(p) != want:
        raise IntegrityError(f"{p}: checksum differs from {sealed_by} (changed since sealed)")
    return bool(want)


def stat_changed(path: str | os.PathLike, record: dict[str, Any], sealed_by: str | os.PathLike) -> bool:
    """The no-change fast path: stat only. Missing or other size: ``IntegrityError``;
    returns True when the mtime differs from the record (the bytes need a check)."""
    return _sized_stat(Path(path), record, sealed_by).st_mtime_ns != record.get("mtime_ns")


def _sized_stat(p: Path, record: dict[str, Any], sealed_by: str | os.PathLike) -> os.stat_result:
    """The file's stat; ``IntegrityError`` when it is missing or its size is not the record's."""
    try:
        st = p.stat()
    except OSError:
        raise IntegrityError(f"{p}: missing, but {sealed_by} lists it") from None
    size = record.get("size")
    if size is not None and st.st_size != size:
        raise IntegrityError(f"{p}: {st.st_size} bytes, but {sealed_by} records {size} (changed since sealed)")
    return st


# --------------------------------------------------------------------------- records


def read_json(path: str | os.PathLike) -> dict[str, Any] | None:
    """A JSON record; None when absent; ``IntegrityError`` when unreadable or not an object."""
    p = Path(path)
    try:
        text = p.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise IntegrityError(f"{p}: unreadable ({e.strerror})") from None
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise IntegrityError(f"{p}: unreadable record (not valid JSON)") from None
    if not isinstance(doc, dict):
        raise IntegrityError(f"{p}: unreadable record (not a JSON object)")
    return doc


def write_json(path: str | os.PathLike, doc: dict[str, Any]) -> None:
    atomic_write_bytes(path, json.dumps(doc, indent=1, sort_keys=True, default=str).encode())


def key_of(doc: Any) -> str:
    """A short, stable hash of JSON-able data (canonical: sorted keys)."""
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:24]


# --------------------------------------------------------------------------- freshness


class Stamp:
    """``<path>``: "the output beside me was made from inputs with this key".

    ``clear()`` before rewriting the output, ``write(key)`` after: a crash in between
    leaves no stamp that vouches for an output it does not describe. An unreadable stamp
    counts as absent (the output is rebuilt: always safe for a stamp)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def read(self) -> dict[str, Any] | None:
        try:
            return read_json(self.path)
        except IntegrityError:
            return None

    def is_current(self, key: str) -> bool:
        doc = self.read()
        return doc is not None and doc.get("key") == key

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)

    def write(self, key: str, **info: Any) -> None:
        write_json(self.path, {"key": key, "at": time.time(), **info})


def code_version(*folders: str | os.PathLike, files: Iterable[str | os.PathLike] = ()) -> str:
    """The one code-version policy: a hash of the named Python sources' bytes (every
    ``*.py`` of each folder, plus ``files``). Content, not mtimes: a reinstall of the same
    code keeps outputs current; any edit invalidates them."""
    h = hashlib.sha256()
    paths = [p for d in folders for p in sorted(Path(d).glob("*.py"))] + [Path(f) for f in files]
    for p in paths:
        with contextlib.suppress(OSError):
            h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- publication


class Ledger:
    """Numbered, write-once commit records ``<folder>/<n:06d>.json``; the highest is current.

    A writer (holding the store lock) asks ``next_id()``, writes the immutable files of
    that generation, then ``commit(id, doc)``: an exclusive create of the record, written
    last. ``drop(id)`` removes a record (first) so its files can go after it.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    def _path(self, gen: str) -> Path:
        return self.folder / f"{gen}.json"

    def ids(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        out = [p.stem for p in self.folder.glob("*.json") if p.stem.isdigit()]
        return sorted(out, key=int)

    def next_id(self) -> str:
        used = [int(i) for i in self.ids()]
        used += [int(p.name) for p in self.folder.glob("*") if p.is_dir() and p.name.isdigit()] if self.folder.is_dir() else []
        return f"{max(used, default=0) + 1:06d}"

    def read(self, gen: str) -> dict[str, Any]:
        doc = read_json(self._path(gen))
        if doc is None:
            raise IntegrityError(f"{self._path(gen)}: no such run")
        return doc

    def latest(self) -> tuple[str, dict[str, Any]] | None:
        ids = self.ids()
        return (ids[-1], self.read(ids[-1])) if ids else None

    def commit(self, gen: str, doc: dict[str, Any]) -> Path:
        """Write the commit record of ``gen`` (fails if it exists). Written via a temporary
        file and a hard link, so the record appears whole or not at all."""
        path = self._path(gen)
        data = json.dumps({"id": gen, **doc}, indent=1, sort_keys=True, default=str).encode()
        tmp = _synced_temp(path, data)
        try:
            os.link(tmp, path)  # exclusive: an existing record is never replaced
        finally:
            Path(tmp).unlink(missing_ok=True)
        return path

    def drop(self, gen: str) -> None:
        self._path(gen).unlink(missing_ok=True)


@contextlib.contextmanager
def naming(path: str | os.PathLike):
    """An OSError while writing ``path`` names it: a failed write() (a full disk) carries
    no file name, and the one error line must say which file could not be written."""
    try:
        yield
    except OSError as e:
        if e.filename is None:
            raise OSError(e.errno, e.strerror or " ".join(str(e).split()), os.fspath(path)) from None
        raise
