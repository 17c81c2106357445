"""The on-disk format of one logit cell: the contract between producers and readers.

A cell is ``<store>/logits/<model>/<dataset>/``. It holds Parquet parts named
``part-<split>-<NNNNN>.parquet`` and, per split, a manifest ``_split-<split>.json``
that is written last and lists the parts of that split. Readers trust only parts a
manifest lists, so a split being written (or an interrupted extraction) is never read
half-done. Every file is written to a temporary name and renamed into place.

Columns: ``sample_id`` (string), ``split`` (string), ``label`` (int32, -1 unknown),
``zs`` and optionally ``ft`` (fixed_size_list<float32 or float16>[C]), optionally
``image_emb`` (fixed_size_list<float16>[D]), and optionally extra logit columns of
the same cell named ``<method>@<parameter>`` (e.g. ``wiseft@0.5`` for WiSE-FT at α = 0.5),
also fixed_size_list[C], listed in the metadata under ``extra_logits``; readers that do
not know them ignore them. The fixed-size list keeps a row's C logits
contiguous, so a column converts to an (N, C) numpy array without a copy (see
bench/bench_layout.py for the measurement that chose it over C scalar columns).

The schema metadata key ``gla`` holds JSON: schema_version, class_names, model identity,
dataset identity, templates hash. This module needs only numpy and pyarrow: the
analysis install (no torch) imports it too.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_VERSION = 1
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


def part_name(split: str, index: int, tag: str = "") -> str:
    """``part-<split>-<NNNNN>.parquet``; with ``tag``, ``part-<split>-<tag>-<NNNNN>.parquet``."""
    middle = f"{tag}-" if tag else ""
    return f"part-{check_name(split, 'split')}-{middle}{index:05d}.parquet"


def manifest_path(cell: str | os.PathLike, split: str) -> Path:
    return Path(cell) / f"_split-{check_name(split, 'split')}.json"


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


def _temp_beside(path: Path) -> tuple[int, str]:
    """A new temporary file next to ``path``, open for writing, created with mode 0666 so
    that the kernel applies the user's umask (group-readable on a shared store under
    umask 022; ``tempfile.mkstemp`` would make it 0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = str(path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    fd, tmp = _temp_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_table(path: str | os.PathLike, table: pa.Table, **kwargs: Any) -> None:
    """Write Parquet to a temporary file in the same folder, then rename into place."""
    path = Path(path)
    fd, tmp = _temp_beside(path)
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


def write_part(
    cell: str | os.PathLike,
    split: str,
    index: int,
    table: pa.Table,
    row_group_size: int | None = None,
    tag: str = "",
) -> Path:
    path = Path(cell) / part_name(split, index, tag)
    # No dictionary for float lists: it only costs time on logits.
    atomic_write_table(
        path,
        table,
        row_group_size=row_group_size or row_group_rows(table),
        use_dictionary=["sample_id", "split"],
    )
    return path


def write_manifest(
    cell: str | os.PathLike,
    split: str,
    parts: Sequence[str | os.PathLike],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Seal a split: list its parts (in row order) with their row counts.

    The manifest carries a fresh ``write_id``, so any rewrite of a split changes the
    content key that incremental runs derive from the manifests. ``extra`` adds keys
    (e.g. the extractor's ``cell_key``) without overriding the standard ones.
    """
    cell = Path(cell)
    entries = []
    for p in parts:
        p = Path(p)
        entries.append({"file": p.name, "rows": pq.ParquetFile(cell / p.name).metadata.num_rows})
    doc = {
        "schema_version": SCHEMA_VERSION,
        "split": split,
        "parts": entries,
        "rows": sum(e["rows"] for e in entries),
        "write_id": uuid.uuid4().hex,
    }
    doc = {**(extra or {}), **doc}
    path = manifest_path(cell, split)
    atomic_write_bytes(path, json.dumps(doc, indent=1, sort_keys=True).encode())
    return path


def write_split(
    cell: str | os.PathLike, split: str, tables: Sequence[pa.Table]
) -> Path:
    """Replace a whole split: write its parts, seal it, then drop parts no longer listed.

    When the split exists already, the new parts get names of their own (a fresh tag), so
    until the new manifest is in place the old one still lists intact old parts: a crash
    at any point leaves the split either as it was or as it is meant to be.
    """
    cell = Path(cell)
    tag = uuid.uuid4().hex[:8] if manifest_path(cell, split).exists() else ""
    written = [write_part(cell, split, i, t, tag=tag).name for i, t in enumerate(tables)]
    manifest = write_manifest(cell, split, written)
    keep = set(written)
    for old in cell.glob(f"part-{split}-*.parquet"):
        if old.name not in keep:
            old.unlink(missing_ok=True)
    return manifest


def read_manifest(cell: str | os.PathLike, split: str) -> dict[str, Any] | None:
    path = manifest_path(cell, split)
    if not path.exists():
        return None
    return json.loads(path.read_text())


def sealed_splits(cell: str | os.PathLike) -> list[str]:
    return sorted(p.name[len("_split-") : -len(".json")] for p in Path(cell).glob("_split-*.json"))


def text_hash(items: Sequence[str]) -> str:
    """Stable short hash of a list of strings (class names, templates)."""
    h = hashlib.sha256()
    for s in items:
        h.update(s.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
