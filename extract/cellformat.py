"""The on-disk format of one logit cell: the contract between producers and readers.

A cell is ``<store>/logits/<model>/<dataset>/``. Its **cell record** ``_cell.json``
(written last, replaced atomically) names, per split, the manifest of the split's current
generation. A manifest ``_split-<split>.<gen>.json`` lists the split's parts
``part-<split>.<gen>-<NNNNN>.parquet`` in row order, each with its row count, size, mtime
and sha256 (``extract.records.file_record``). Readers find files through the cell record
and manifests only, never by a name pattern, so splits whose names share a prefix never
touch each other. A new generation of a split (a re-import, a re-extraction with other
inputs) is written beside the current one under its own names and swapped in by the
cell record once it is sealed: until then the old generation stays complete and
readable, and a failed or killed write leaves it byte for byte. ``commit_cell`` then
removes the files no record names any more.

Columns: ``sample_id`` (string), ``split`` (string), ``label`` (int32, -1 unknown),
``zs`` and optionally ``ft`` (fixed_size_list<float32 or float16>[C]), optionally
``image_emb`` (fixed_size_list<float16>[D]), and optionally extra logit columns of
the same cell named ``<method>@<parameter>`` (e.g. ``wiseft@0.5`` for WiSE-FT at α = 0.5),
also fixed_size_list[C], listed in the metadata under ``extra_logits``; readers that do
not know them ignore them. The fixed-size list keeps a row's C logits
contiguous, so a column converts to an (N, C) numpy array without a copy (see
bench/bench_layout.py for the measurement that chose it over C scalar columns). Parts
carry Parquet page checksums (CRC32), which readers verify while decoding.

The schema metadata key ``gla`` holds JSON: schema_version, class_names, model identity,
dataset identity, templates hash. This module needs only numpy and pyarrow: the
analysis install (no torch) imports it too.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from gla.extract import records

SCHEMA_VERSION = 2  # 2: generations, cell record, part checksums
CELL_RECORD = "_cell.json"
META_KEY = b"gla"
LOGIT_COLUMNS = ("zs", "ft")
EXTRA_MARK = "@"  # an extra logit column is named <method>@<parameter>
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def check_name(name: str, what: str) -> str:
    """A model, dataset or split name used as a path component: no '/', no '..'."""
    if not isinstance(name, str) or not _NAME_RE.match(name) or ".." in name:
        raise ValueError(
            f"{what} name {name!r} is not usable as a folder name "
            "(letters, digits, '.', '_', '-'; no '/')"
        )
    return name


def safe_name(name: str) -> str:
    """Turn an arbitrary identifier (e.g. 'ViT-B-32/openai') into a valid cell name."""
    out = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")
    out = out.replace("..", ".")
    return out or "unnamed"


def cell_dir(store: str | os.PathLike, model: str, dataset: str) -> Path:
    return Path(store) / "logits" / check_name(model, "model") / check_name(dataset, "dataset")


def part_name(split: str, index: int, gen: str) -> str:
    """``part-<split>.<gen>-<NNNNN>.parquet`` (unique per split and generation)."""
    return f"part-{check_name(split, 'split')}.{gen}-{index:05d}.parquet"


def manifest_name(split: str, gen: str) -> str:
    return f"_split-{check_name(split, 'split')}.{gen}.json"


def _logit_array(x: np.ndarray, dtype: str) -> pa.FixedSizeListArray:
    x = np.ascontiguousarray(x, dtype=np.dtype(dtype))
    if x.ndim != 2:
        raise ValueError(f"logits must be 2-D (N, C), got shape {x.shape}")
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])


def build_table(
    sample_ids: Sequence[str] | np.ndarray,
    split: str,
    labels: np.ndarray,
    zs: np.ndarray,
    ft: np.ndarray | None = None,
    image_emb: np.ndarray | None = None,
    *,
    metadata: dict[str, Any] | None = None,
    dtype: str = "float32",
    extra: dict[str, np.ndarray] | None = None,
) -> pa.Table:
    """One table in the cell schema; ``metadata`` goes under the ``gla`` key.

    ``extra``: more (N, C) logits of the same rows, by column name (``wiseft@0.5``).
    """
    n = len(labels)
    cols: dict[str, pa.Array] = {
        "sample_id": pa.array([str(s) for s in sample_ids], pa.string()),
        "split": pa.array([split] * n, pa.string()),
        "label": pa.array(np.asarray(labels, dtype=np.int32)),
        "zs": _logit_array(zs, dtype),
    }
    if ft is not None:
        cols["ft"] = _logit_array(ft, dtype)
    if image_emb is not None:
        cols["image_emb"] = _logit_array(image_emb, "float16")
    for name, x in (extra or {}).items():
        if not is_extra_logit_column(name):
            raise ValueError(f"extra logit column {name!r}: expected <method>@<parameter>")
        cols[name] = _logit_array(x, dtype)
    table = pa.table(cols)
    meta = {"schema_version": SCHEMA_VERSION, **(metadata or {})}
    if extra:
        meta["extra_logits"] = list(extra)
    return table.replace_schema_metadata({META_KEY: json.dumps(meta, sort_keys=True).encode()})


def is_extra_logit_column(name: str) -> bool:
    method, mark, param = name.partition(EXTRA_MARK)
    return bool(method and mark and param)


def extra_logit_columns(schema: pa.Schema) -> list[str]:
    """The extra logit columns of a part (``wiseft@0.5``, ...), in file order."""
    return [f.name for f in schema if is_extra_logit_column(f.name) and pa.types.is_fixed_size_list(f.type)]


def table_metadata(schema: pa.Schema) -> dict[str, Any]:
    raw = (schema.metadata or {}).get(META_KEY)
    return json.loads(raw) if raw else {}


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """``records.atomic_write_bytes``; a failed write names the file."""
    with records.naming(path):
        records.atomic_write_bytes(path, data)


def atomic_write_table(path: str | os.PathLike, table: pa.Table, **kwargs: Any) -> None:
    """Write Parquet to a temporary file in the same folder, then rename into place."""
    path = Path(path)
    with records.naming(path):
        fd, tmp = records._temp_beside(path)
        os.close(fd)
        try:
            pq.write_table(table, tmp, **kwargs)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


ROW_GROUP_BYTES = 64 << 20


def row_group_rows(table: pa.Table, target_bytes: int = ROW_GROUP_BYTES) -> int:
    """Rows per row group so that one group holds about ``target_bytes`` of data.

    Readers stream a split by row group, so this bounds their memory whatever C is
    (a fixed row count would make a 1,000-class group 262 MB per logit column).
    """
    per_row = table.nbytes / max(table.num_rows, 1)
    return max(1024, int(target_bytes // max(per_row, 1)))


def new_generation() -> str:
    """A fresh generation tag (12 hex digits); extraction uses its cell key's first 12."""
    return uuid.uuid4().hex[:12]


def write_part(
    cell: str | os.PathLike,
    split: str,
    index: int,
    table: pa.Table,
    gen: str,
    row_group_size: int | None = None,
) -> Path:
    """One part of generation ``gen`` of a split (not yet listed by any manifest)."""
    path = Path(cell) / part_name(split, index, gen)
    # No dictionary for float lists: it only costs time on logits.
    atomic_write_table(
        path,
        table,
        row_group_size=row_group_size or row_group_rows(table),
        use_dictionary=["sample_id", "split"],
        write_page_checksum=True,
    )
    records.fault_point("part-written")
    return path


def seal_split(
    cell: str | os.PathLike,
    split: str,
    parts: Sequence[str | os.PathLike],
    gen: str,
    extra: dict[str, Any] | None = None,
) -> str:
    """Seal generation ``gen`` of a split: its manifest lists the parts (in row order) with
    row count, size, mtime and sha256. Returns the manifest's file name. The split is not
    current until ``commit_cell`` names this manifest.

    The manifest carries a fresh ``write_id`` and its ``sealed_at`` time, so any rewrite of a split changes the
    content key that incremental runs derive from the manifests. ``extra`` adds keys
    (e.g. the extractor's ``cell_key``) without overriding the standard ones.
    """
    cell = Path(cell)
    entries = []
    for p in parts:
        f = cell / Path(p).name
        entries.append(records.file_record(f, rows=pq.ParquetFile(f).metadata.num_rows))
    doc = {
        "schema_version": SCHEMA_VERSION,
        "split": split,
        "generation": gen,
        "parts": entries,
        "rows": sum(e["rows"] for e in entries),
        "write_id": uuid.uuid4().hex,
        "sealed_at": iso_utc(time.time()),
    }
    doc = {**(extra or {}), **doc}
    name = manifest_name(split, gen)
    records.write_json(cell / name, doc)
    records.fault_point("split-sealed")
    return name


def iso_utc(seconds: float) -> str:
    """A POSIX time as ISO-8601 UTC to the second (``2026-12-02T04:51:03Z``); strings of
    this form sort in time order."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def read_cell_record(cell: str | os.PathLike) -> dict[str, Any] | None:
    """The cell record (None for a cell folder without one); ``IntegrityError`` if corrupt."""
    path = Path(cell) / CELL_RECORD
    doc = records.read_json(path)
    if doc is not None and not isinstance(doc.get("splits"), dict):
        raise records.IntegrityError(f"{path}: unreadable cell record (no splits)")
    return doc


def _listed_files(cell: Path, record: dict[str, Any]) -> set[str]:
    """Every file a cell record names: its manifests, their parts and skip lists."""
    names = {CELL_RECORD}
    for mname in record.get("splits", {}).values():
        names.add(mname)
        doc = records.read_json(cell / mname) or {}
        names.update(str(e.get("file")) for e in doc.get("parts", []))
        if doc.get("skipped_file"):
            names.add(str(doc["skipped_file"]))
    return names


def _is_cell_file(name: str) -> bool:
    return name.endswith((".parquet", ".json")) and name.startswith(("part-", "_split-", "_skipped-", ".skipped-"))


def commit_cell(
    cell: str | os.PathLike,
    splits: dict[str, str],
    *,
    replace: bool = False,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Swap sealed generations in: the cell record names ``splits`` (split -> manifest file
    name), merged into the current record unless ``replace``. Written last; then files
    that no record names any more (the previous generations, leftovers of killed writes)
    are removed."""
    cell = Path(cell)
    old = read_cell_record(cell) or {"splits": {}}
    current = {} if replace else dict(old.get("splits", {}))
    current.update(splits)
    kept = {} if replace else {k: v for k, v in old.items() if k not in ("splits", "committed_at")}
    doc = {**kept, **(extra or {}), "schema_version": SCHEMA_VERSION,
           "splits": dict(sorted(current.items())), "committed_at": time.time()}
    path = cell / CELL_RECORD
    records.write_json(path, doc)
    records.fault_point("cell-committed")
    keep = _listed_files(cell, doc)
    for f in cell.iterdir():
        if _is_cell_file(f.name) and f.name not in keep:
            f.unlink(missing_ok=True)
    return path


def write_split(
    cell: str | os.PathLike, split: str, tables: Sequence[pa.Table], extra: dict[str, Any] | None = None
) -> Path:
    """Replace a whole split: write a new generation of it, seal it, swap it in.

    The new parts get names of their own, so until the cell record names the new
    manifest the old one still lists intact old parts: a crash at any point leaves the
    split either as it was or as it is meant to be. Other splits are not touched.
    """
    cell = Path(cell)
    gen = new_generation()
    written = [write_part(cell, split, i, t, gen).name for i, t in enumerate(tables)]
    name = seal_split(cell, split, written, gen, extra)
    commit_cell(cell, {split: name})
    return cell / name


def manifest_file(cell: str | os.PathLike, split: str) -> Path | None:
    """The current manifest of a split (from the cell record), or None."""
    rec = read_cell_record(cell)
    name = (rec or {}).get("splits", {}).get(split)
    return Path(cell) / name if name else None


def read_manifest(cell: str | os.PathLike, split: str) -> dict[str, Any] | None:
    """The current manifest of a split, or None; ``IntegrityError`` if it is unreadable."""
    path = manifest_file(cell, split)
    if path is None:
        return None
    doc = records.read_json(path)
    if doc is None:
        raise records.IntegrityError(f"{path}: missing, but {Path(cell) / CELL_RECORD} names it")
    if not isinstance(doc.get("parts"), list):
        raise records.IntegrityError(f"{path}: unreadable manifest (no parts)")
    return doc


def damaged_parts(cell: str | os.PathLike, *, full: bool = False) -> list[Path]:
    """Parts of the current generation that do not match their seal (missing, other size,
    or touched and with another sha256; every part's sha256 with ``full``)."""
    cell = Path(cell)
    bad = []
    for split in sealed_splits(cell):
        mpath = manifest_file(cell, split)
        for e in (read_manifest(cell, split) or {}).get("parts", []):
            try:
                records.check_file(cell / str(e["file"]), e, mpath, full=full)
            except records.IntegrityError:
                bad.append(cell / str(e["file"]))
    return bad


def sealed_splits(cell: str | os.PathLike) -> list[str]:
    """The splits the cell record names (none for a folder without a record)."""
    if not Path(cell).is_dir():
        return []
    return sorted((read_cell_record(cell) or {}).get("splits", {}))


def text_hash(items: Sequence[str]) -> str:
    """Stable short hash of a list of strings (class names, templates)."""
    h = hashlib.sha256()
    for s in items:
        h.update(s.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


file_sha256 = records.sha256
