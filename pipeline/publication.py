"""Publication by run: the one way result tables are published and read.

A run is a set of immutable files ``results/runs/<run_id>/<table>.parquet`` plus ONE
commit record ``results/runs/<run_id>.json``, written last with an atomic single-file
write. The record names each table's size, sha256 and row count
(``records.file_record``), the parent run, the config hash, the code version, the
command, the cells the run added / changed / removed / kept and the estimators it holds.

- Readers take the newest committed record (``latest``) and verify every file they read
  against it; a mismatch is one line naming the file. A run folder without a record is
  invisible (an interrupted or refused publication) and the next writer removes it.
- No step renames a directory, and the only in-place change is a single-file write
  (the record, ``LATEST``), so the protocol serves object stores as well as POSIX disks.
- ``results/LATEST`` holds the newest run id as plain text for people reading without
  gla; gla itself never trusts it (the records decide).
- Retention (``prune_runs``) deletes a run's record first, then its files, so a reader
  never follows a record to missing files; the latest run is never pruned.

Why not Delta Lake: a run here spans many tables that must change together, and a
reader without gla needs nothing but a Parquet reader and one JSON file; Delta Lake
commits one table at a time (a cross-table snapshot would need a second protocol on
top) and adds a dependency every reader must carry.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
from gla.extract import records
from gla.extract.records import IntegrityError
from gla.pipeline import results
from gla.pipeline.errors import UserError

FORMAT = 1
RUNS_DIR = "runs"
LATEST_FILE = "LATEST"
DEFAULT_KEEP_RUNS = 20  # when neither keep_runs nor keep_days is set
_ID = re.compile(r"^\d{8}T\d{6}\.\d{3}Z-[0-9a-f]{6}$")
_ID_TIME = "%Y%m%dT%H%M%S.%f"

StoreLike = Any  # a Store (has .root) or a path


def store_root(store: StoreLike) -> Path:
    """The store folder of a ``Store`` or a path (``Path.root`` is not a store's root)."""
    return Path(store) if isinstance(store, str | os.PathLike) else Path(store.root)


def runs_dir(store: StoreLike) -> Path:
    return store_root(store) / "results" / RUNS_DIR


def run_dir(store: StoreLike, run_id: str) -> Path:
    """The folder of a run's table files (immutable once its record exists)."""
    return runs_dir(store) / run_id


def record_path(store: StoreLike, run_id: str) -> Path:
    return runs_dir(store) / f"{run_id}.json"


def latest_file(store: StoreLike) -> Path:
    return store_root(store) / "results" / LATEST_FILE


@dataclass(frozen=True)
class Run:
    """One committed run: its id, its commit record and the store it belongs to."""

    id: str
    record: dict[str, Any]
    store: Path

    @property
    def dir(self) -> Path:
        return run_dir(self.store, self.id)

    @property
    def tables(self) -> dict[str, dict[str, Any]]:
        """Table name -> its file record (file, size, sha256, rows)."""
        return dict(self.record.get("tables") or {})

    @property
    def parent(self) -> str | None:
        return self.record.get("parent")

    @property
    def created_at(self) -> datetime:
        return parse_time(self.record.get("created_at")) or id_time(self.id)

    def path(self, name: str) -> Path | None:
        rec = self.tables.get(name)
        return None if rec is None else self.dir / rec["file"]


# --------------------------------------------------------------------------- ids and times


def id_time(run_id: str) -> datetime:
    return datetime.strptime(run_id[:19], _ID_TIME).replace(tzinfo=UTC)


def parse_time(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def new_run_id(after: str | None = None, now: datetime | None = None) -> str:
    """UTC time to the millisecond plus a random suffix: ids sort in commit order. A
    clock that went back still yields an id after ``after`` (the latest run)."""
    now = now or datetime.now(UTC)
    if after is not None and now <= id_time(after):
        now = id_time(after) + timedelta(milliseconds=1)
    return f"{now.strftime(_ID_TIME)[:-3]}Z-{secrets.token_hex(3)}"


# --------------------------------------------------------------------------- reading


def run_ids(store: StoreLike) -> list[str]:
    """Ids of the committed runs, oldest first (a record file is a commit)."""
    d = runs_dir(store)
    if not d.is_dir():
        return []
    return sorted(p.stem for p in d.glob("*.json") if _ID.match(p.stem))


def read_run(store: StoreLike, run_id: str) -> Run:
    try:
        doc = records.read_json(record_path(store, run_id))
    except IntegrityError as e:
        raise UserError(str(e)) from None
    if doc is None:
        raise UserError(f"{record_path(store, run_id)}: no such run (see gla history --store {store_root(store)})")
    return Run(run_id, doc, store_root(store))


def runs(store: StoreLike) -> list[Run]:
    """Every committed run, oldest first."""
    return [read_run(store, i) for i in run_ids(store)]


def latest(store: StoreLike) -> Run | None:
    """The newest committed run (None before the first publication)."""
    ids = run_ids(store)
    return read_run(store, ids[-1]) if ids else None


def resolve(store: StoreLike, ref: str | None = None) -> Run:
    """A run by reference: None or "latest", "previous" (the latest run's parent), an
    exact id, or a unique prefix of one. Unknown: one line listing what exists."""
    ids = run_ids(store)
    if not ids:
        raise UserError(f"{store_root(store)}: no published runs (run gla analyze or gla run first)")
    if ref in (None, "", "latest"):
        return read_run(store, ids[-1])
    if ref == "previous":
        if len(ids) < 2:
            raise UserError(f"{store_root(store)}: only one run ({ids[-1]}), so no previous run")
        return read_run(store, ids[-2])
    hits = [i for i in ids if i.startswith(ref)]
    if len(hits) != 1:
        what = "matches several runs" if hits else "no such run"
        raise UserError(f"run {ref!r}: {what} in {store_root(store)} (runs: {', '.join(ids[-5:])})")
    return read_run(store, hits[0])


def _run_of(store: StoreLike, run: Run | str | None) -> Run | None:
    if isinstance(run, Run):
        return run
    if run is None:
        return latest(store)
    return resolve(store, run)


def table_path(store: StoreLike, name: str, run: Run | str | None = None) -> Path | None:
    """The verified file of table ``name`` in ``run`` (default: the latest run); None
    when there is no run or the run has no such table. A file that does not match its
    record is a one-line ``UserError`` naming it."""
    r = _run_of(store, run)
    if r is None or name not in r.tables:
        return None
    path = r.path(name)
    try:
        records.check_file(path, r.tables[name], record_path(store, r.id))
    except IntegrityError as e:
        raise UserError(str(e)) from None
    return path


def read_table(store: StoreLike, name: str, run: Run | str | None = None) -> pl.DataFrame | None:
    """Table ``name`` of ``run`` (default: the latest) as a polars DataFrame; None when
    there is no run or the run lacks the table (an optional table no cell produced)."""
    path = table_path(store, name, run)
    if path is None:
        return None
    try:
        return pl.read_parquet(path)
    except Exception as e:  # noqa: BLE001 - undecodable despite its record: name it
        raise UserError(f"{path}: unreadable Parquet ({e})") from None


def read_tables(store: StoreLike, names: Iterable[str] | None = None,
                run: Run | str | None = None) -> dict[str, pl.DataFrame]:
    """The run's tables by name (``names`` default: all it has; absent ones left out)."""
    r = _run_of(store, run)
    if r is None:
        return {}
    wanted = list(r.tables) if names is None else [n for n in names if n in r.tables]
    return {n: read_table(store, n, r) for n in wanted}


def verify(store: StoreLike, run: Run | str | None = None) -> None:
    """Check every file of a run against its record (``UserError`` on the first mismatch)."""
    r = _run_of(store, run)
    for name in r.tables if r else ():
        table_path(store, name, r)


def latest_dir(store: StoreLike) -> Path:
    """The verified folder of the latest run's tables (``<table>.parquet`` files), for
    code that reads a folder of tables; ``UserError`` when nothing is published."""
    run = resolve(store, None)
    verify(store, run)
    return run.dir


# --------------------------------------------------------------------------- writing

# Called with (parent run or None, the new tables) before anything is written; False
# means "do not publish" (a failing gate with --gate-blocks-publish).
Hook = Callable[["Run | None", Mapping[str, pl.DataFrame]], bool]


def collect_garbage(store: StoreLike) -> list[str]:
    """Remove run folders that have no record (interrupted or refused publications,
    files of pruned runs) and stray temporary files. Call with the store lock held."""
    d = runs_dir(store)
    if not d.is_dir():
        return []
    committed = set(run_ids(store))
    removed = []
    for p in sorted(d.iterdir()):
        if p.is_dir() and p.name not in committed:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
        elif p.is_file() and p.name.startswith(".") and p.name.endswith(".tmp"):
            p.unlink(missing_ok=True)
    return removed


def _write_tables(folder: Path, tables: Mapping[str, pl.DataFrame | None]) -> dict[str, dict[str, Any]]:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in results.ordered(tables):
        df = tables[name]
        if df is None:
            continue
        path = folder / f"{name}.parquet"
        df.write_parquet(path)
        out[name] = records.file_record(path, rows=df.height)
        records.fault_point("publish.table")
    return out


def publish(store: StoreLike, tables: Mapping[str, pl.DataFrame | None], meta: Mapping[str, Any],
            *, hook: Hook | None = None, keep_runs: int | None = None,
            keep_days: float | None = None) -> Run | None:
    """Publish ``tables`` as a new run: table files, then the commit record, then
    ``LATEST``; then apply retention. Returns the run, or None when ``hook`` refused.
    The caller holds the store lock. ``meta`` goes into the record as given."""
    collect_garbage(store)
    parent = latest(store)
    if hook is not None and not hook(parent, {k: v for k, v in tables.items() if v is not None}):
        return None
    run_id = new_run_id(parent.id if parent else None)
    try:
        files = _write_tables(run_dir(store, run_id), tables)
        records.fault_point("publish.before_record")
        now = datetime.now(UTC)
        doc = {"format": FORMAT, "id": run_id, "parent": parent.id if parent else None,
               "created_at": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
               **meta, "command": meta.get("command") or command_line(), "tables": files}
        records.write_json(record_path(store, run_id), doc)
    except BaseException:
        # No record, so the folder is invisible anyway; removing it now leaves
        # results/runs/ exactly as it was (a kill -9 leaves it to collect_garbage).
        shutil.rmtree(run_dir(store, run_id), ignore_errors=True)
        raise
    records.fault_point("publish.after_record")
    with contextlib.suppress(OSError):  # a convenience for readers without gla only
        records.atomic_write_bytes(latest_file(store), f"{run_id}\n".encode())
    _remove_legacy(store)
    prune_runs(store, keep_runs, keep_days)
    return Run(run_id, doc, store_root(store))


def command_line() -> str:
    return " ".join(["gla", *sys.argv[1:]]) if sys.argv and sys.argv[0].endswith("gla") else " ".join(sys.argv)


def _remove_legacy(store: StoreLike) -> None:
    """Tables of the layout before runs (``results/<table>.parquet``): a mix of
    generations that no reader may see once a run exists."""
    res = store_root(store) / "results"
    for p in res.glob("*.parquet"):
        p.unlink(missing_ok=True)
    (res / "cells" / "_combined.json").unlink(missing_ok=True)


# --------------------------------------------------------------------------- retention


def retention(keep_runs: int | None, keep_days: float | None) -> tuple[int | None, float | None]:
    """The effective setting: DEFAULT_KEEP_RUNS when neither is given; 0 = no limit."""
    if keep_runs is None and keep_days is None:
        return DEFAULT_KEEP_RUNS, None
    return (keep_runs or None), (keep_days if keep_days else None)


def runs_to_prune(store: StoreLike, keep_runs: int | None, keep_days: float | None,
                  now: datetime | None = None) -> list[str]:
    """Runs outside the retention: a run is kept when it is among the last ``keep_runs``
    or younger than ``keep_days`` (either suffices); the latest is always kept."""
    keep_runs, keep_days = retention(keep_runs, keep_days)
    ids = run_ids(store)
    if not ids or (keep_runs is None and keep_days is None):
        return []
    now = now or datetime.now(UTC)
    keep = set(ids[-1:])
    if keep_runs is not None:
        keep.update(ids[-keep_runs:])
    if keep_days is not None:
        keep.update(i for i in ids if now - read_run(store, i).created_at <= timedelta(days=keep_days))
    return [i for i in ids if i not in keep]


def drop_run(store: StoreLike, run_id: str) -> None:
    """Delete one run atomically for readers: its record first, then its files."""
    record_path(store, run_id).unlink(missing_ok=True)
    records.fault_point("prune.after_record")
    shutil.rmtree(run_dir(store, run_id), ignore_errors=True)


def prune_runs(store: StoreLike, keep_runs: int | None = None, keep_days: float | None = None,
               now: datetime | None = None) -> list[str]:
    """Apply the retention setting; returns the ids of the runs removed."""
    gone = runs_to_prune(store, keep_runs, keep_days, now)
    for run_id in gone:
        drop_run(store, run_id)
    return gone
