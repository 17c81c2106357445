"""Hugging Face ``datasets`` as a dataset kind: an image column and a label column.

``root`` is either a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``
(``pool`` names the split of a DatasetDict) or Parquet: one file, a glob, or a folder of
``*.parquet`` files (the layout of the Hub's Parquet exports).

- Class names come from the label column's ``ClassLabel`` feature (the names are then
  real names, matched like imagefolder's folders); string labels are names too; integer
  labels without a ``ClassLabel`` need ``class_names`` in the config. ``-1`` or null: unknown.
- Images are the ``Image`` feature's stored bytes (``{"bytes", "path"}``) or a binary
  column, decoded with PIL in the data-loader workers.

Saved folders are opened with ``datasets.load_from_disk`` (memory-mapped Arrow: no copy,
no cache written); Parquet is read with pyarrow directly, so the Hub library's cache
folder is never filled. The ``datasets`` package is the ``hf`` extra.
"""

from __future__ import annotations

import glob
import io
import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from gla.extract.errors import ExtractError, unknown_name


@dataclass
class Listing:
    sample_ids: list[str]
    labels: np.ndarray
    refs: list[tuple]
    class_names: list[str]
    named: bool


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())[:300] or type(e).__name__


def parquet_files(root: str) -> list[str]:
    if os.path.isdir(root):
        return sorted(glob.glob(os.path.join(glob.escape(root), "**", "*.parquet"), recursive=True))
    if any(ch in root for ch in "*?["):
        return sorted(f for f in glob.glob(root) if os.path.isfile(f))
    return [root] if os.path.isfile(root) else []


def _load_saved(where: str, root: str, pool: str) -> tuple[Any, str]:
    try:
        import datasets
    except ImportError:
        raise ExtractError(f"{where}: {root} is a saved Hugging Face dataset: it needs the datasets "
                           "package (pip install 'gla-pipeline[hf]')") from None
    try:
        obj = datasets.load_from_disk(root)
    except Exception as e:  # datasets raises FileNotFoundError and its own types
        raise ExtractError(f"{where}: {root} is neither Parquet nor a folder written by "
                           f"save_to_disk: {_one_line(e)}") from None
    if isinstance(obj, datasets.DatasetDict):
        if not pool and len(obj) == 1:
            pool = next(iter(obj))
        if pool not in obj:
            what = f"pool = {pool!r}: {unknown_name('split', pool, obj)}" if pool else \
                f"holds the splits {', '.join(obj)}: set pool = one of them"
            raise ExtractError(f"{where}: {root} {what}")
        obj = obj[pool]
    elif pool:
        raise ExtractError(f"{where}: pool = {pool!r} but {root} holds one dataset, not a DatasetDict")
    return obj, pool


def _check_columns(where: str, source: str, columns: list[str], wanted: list[tuple[str, str]]) -> None:
    for key, col in wanted:
        if col not in columns:
            raise ExtractError(f"{where}.{key}: {source}: {unknown_name('column', col, columns)}")


def _label_feature(features: dict[str, Any], column: str) -> list[str] | None:
    """ClassLabel names from a features dict (``Features.to_dict()`` or Parquet metadata)."""
    feat = features.get(column) or {}
    if isinstance(feat, dict) and feat.get("_type") == "ClassLabel" and feat.get("names"):
        return [str(n) for n in feat["names"]]
    return None


def _labels(where: str, source: str, raw: list[Any], names: list[str] | None,
            configured: list[str]) -> tuple[np.ndarray, list[str], bool]:
    """(labels, class names, named) from one label column."""
    if names is not None or all(v is None or isinstance(v, (int, np.integer)) for v in raw):
        ints = np.asarray([-1 if v is None else int(v) for v in raw], dtype=np.int64)
        classes = names if names is not None else configured
        if not classes:
            raise ExtractError(f"{where}: {source} has integer labels and no ClassLabel feature: "
                               "give class_names in the config")
        if ints.size and (ints.max() >= len(classes) or ints.min() < -1):
            raise ExtractError(f"{where}: {source}: label values outside 0..{len(classes) - 1}")
        return ints, list(classes), names is not None
    strings = ["" if v is None else str(v) for v in raw]
    classes = configured or sorted({s for s in strings if s})
    index = {n: i for i, n in enumerate(classes)}
    unknown = sorted({s for s in strings if s and s not in index})
    if unknown:
        raise ExtractError(f"{where}: {source}: labels not in class_names: {unknown[:3]}")
    return np.asarray([index[s] if s else -1 for s in strings], dtype=np.int64), classes, True


def list_rows(where: str, root: str, pool: str, image_column: str, label_column: str,
              configured: list[str]) -> Listing:
    """Sample ids, labels and row references of a saved folder or of Parquet files."""
    wanted = [("image_column", image_column), ("label_column", label_column)]
    files = parquet_files(root)
    if os.path.isdir(root) and not files:
        ds, pool = _load_saved(where, root, pool)
        _check_columns(where, root, list(ds.column_names), wanted)
        raw = ds.data.column(label_column).to_pylist()
        labels, classes, named = _labels(where, root, raw, _label_feature(ds.features.to_dict(), label_column),
                                         configured)
        prefix = f"{pool}/" if pool else ""
        ids = [f"{prefix}{i:07d}" for i in range(len(raw))]
        return Listing(ids, labels, [("disk", root, pool, i) for i in range(len(raw))], classes, named)
    if not files:
        raise ExtractError(f"{where}: no Parquet files or saved dataset at {root}")
    if pool:
        raise ExtractError(f"{where}: pool = {pool!r} is for a saved DatasetDict; Parquet splits are "
                           "chosen by file (splits.NAME.root)")
    import pyarrow.parquet as pq

    ids, refs, label_parts, classes, named = [], [], [], None, True
    for f in files:
        try:
            pf = pq.ParquetFile(f)
        except Exception as e:
            raise ExtractError(f"{where}: {f} is not readable Parquet: {_one_line(e)}") from None
        schema = pf.schema_arrow
        _check_columns(where, f, schema.names, wanted)
        meta = json.loads((schema.metadata or {}).get(b"huggingface", b"{}") or b"{}")
        names = _label_feature(meta.get("info", {}).get("features", {}), label_column)
        raw = pf.read(columns=[label_column]).column(0).to_pylist()
        lab, cls, named_f = _labels(where, f, raw, names, configured or (classes or []))
        if classes is not None and cls != classes:
            raise ExtractError(f"{where}: {f} has classes {cls[:3]}... unlike {files[0]}")
        classes, named = cls, named and named_f
        base = os.path.basename(f)
        ids += [f"{base}/{i:07d}" for i in range(len(raw))]
        refs += [("parquet", f, "", i) for i in range(len(raw))]
        label_parts.append(lab)
    labels = np.concatenate(label_parts) if label_parts else np.zeros(0, dtype=np.int64)
    return Listing(ids, labels, refs, classes or [], named)


class ArrowImageReader:
    """ref = ("disk", folder, split, row) or ("parquet", file, "", row) → PIL RGB image.

    Opened lazily in each data-loader worker (pickles without its open tables); Parquet is
    read one row group at a time, the last one kept, since rows come in dataset order.
    """

    def __init__(self, column: str):
        self.column = column
        self._tables: dict[tuple, Any] = {}
        self._group: tuple[Any, int, int, Any] | None = None  # (file, start, stop, column)

    def __getstate__(self) -> dict[str, Any]:
        return {"column": self.column, "_tables": {}, "_group": None}

    def _disk_value(self, folder: str, split: str, row: int) -> Any:
        key = (folder, split)
        if key not in self._tables:
            import datasets

            obj = datasets.load_from_disk(folder)
            self._tables = {key: (obj[split] if split else obj).data.column(self.column)}
        return self._tables[key][row].as_py()

    def _parquet_value(self, path: str, row: int) -> Any:
        g = self._group
        if g is None or g[0] != path or not g[1] <= row < g[2]:
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(path)
            start = 0
            for i in range(pf.num_row_groups):
                n = pf.metadata.row_group(i).num_rows
                if row < start + n:
                    col = pf.read_row_group(i, columns=[self.column]).column(0)
                    g = self._group = (path, start, start + n, col)
                    break
                start += n
            else:
                raise IndexError(f"row {row} is past the end of {path}")
        return g[3][row - g[1]].as_py()

    def __call__(self, ref: tuple):
        from PIL import Image

        kind, path, split, row = ref
        value = self._disk_value(path, split, row) if kind == "disk" else self._parquet_value(path, row)
        data = value.get("bytes") if isinstance(value, dict) else value
        if not data:
            raise ValueError(f"column {self.column!r} holds no image bytes at row {row}")
        with Image.open(io.BytesIO(data)) as im:
            return im.convert("RGB")

    def describe(self, ref: tuple) -> str:
        kind, path, split, row = ref
        return f"{path}{'/' + split if split else ''}[{row}]"
