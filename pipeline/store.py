"""Read access to a gla store: cells, splits, logits as numpy, class counts, content keys.

The on-disk format is ``extract.cellformat`` (see DESIGN.md): a cell is
``<store>/logits/<model>/<dataset>/`` with Parquet parts and one sealed manifest per
split. Only parts listed by a manifest are read. Logit columns are
``fixed_size_list<float32|float16>[C]``; they come back as ``(N, C)`` float32 arrays
(float16 is upcast). ``iter_split`` batches are zero-copy views of Arrow buffers (read-only:
callers must not write into them); ``read_split`` fills fresh, writable arrays.

Everything here needs only numpy and pyarrow (no torch), so an analysis worker can use it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from gla.extract import cellformat as cf
from gla.extract import records
from gla.extract.records import IntegrityError
from gla.pipeline.errors import UserError

COUNTS_FILE = "class_counts.parquet"
DEFAULT_BATCH_ROWS = 4096
STREAM_BUFFER_BYTES = 8 << 20  # read-ahead per column stream in iter_split


@dataclass(frozen=True)
class SplitInfo:
    """One sealed split of a cell, from its manifest and the first part's schema."""

    name: str
    rows: int
    files: tuple[Path, ...]
    part_rows: tuple[int, ...]
    write_id: str
    num_classes: int
    has_ft: bool
    logit_dtype: str
    class_names: tuple[str, ...]
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    extra_logits: tuple[str, ...] = ()  # extra logit columns (wiseft@0.5, ...)
    sealed_at: str = ""  # ISO-8601 UTC seal time (older manifests: newest part mtime)
    part_sha256: tuple[str, ...] = ()  # the parts' checksums, as sealed


@dataclass(frozen=True)
class CellInfo:
    model: str
    dataset: str
    path: Path
    class_names: tuple[str, ...]
    num_classes: int
    has_ft: bool
    splits: dict[str, SplitInfo]
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass
class SplitArrays:
    """A split (or a batch of one) as numpy arrays. ``zs``/``ft`` are (N, C) float32."""

    labels: np.ndarray | None
    zs: np.ndarray | None
    ft: np.ndarray | None
    sample_ids: pa.ChunkedArray | pa.Array | None = None
    file: Path | None = None  # the part this batch came from (batches only)
    row_offset: int = 0  # first row of this batch inside ``file``
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # extra logit columns asked for

    def __len__(self) -> int:
        for a in (self.labels, self.zs, self.ft, self.sample_ids):
            if a is not None:
                return len(a)
        return 0


@dataclass(frozen=True)
class ClassCounts:
    counts: np.ndarray  # (C,) int64
    class_names: tuple[str, ...]
    path: Path


# --------------------------------------------------------------------------- helpers


def _logit_width(t: pa.DataType) -> int | None:
    if pa.types.is_fixed_size_list(t):
        return t.list_size
    return None


def _column_to_numpy(col: pa.ChunkedArray | pa.Array, width: int, what: str) -> np.ndarray:
    """A fixed_size_list<float> column as an (N, width) float32 array.

    One chunk of float32 without nulls is returned zero-copy (read-only). Several chunks
    are copied once into a preallocated array; float16/float64 are converted.
    """
    chunks = col.chunks if isinstance(col, pa.ChunkedArray) else [col]
    chunks = [c for c in chunks if len(c)]
    n = sum(len(c) for c in chunks)
    if any(c.null_count for c in chunks):
        raise UserError(f"{what}: has missing (null) rows")
    if len(chunks) == 1:
        flat = chunks[0].flatten()
        if flat.null_count:
            raise UserError(f"{what}: has missing (null) values")
        arr = flat.to_numpy(zero_copy_only=False)
        if arr.dtype != np.float32:
            arr = arr.astype(np.float32)
        return arr.reshape(n, width)
    out = np.empty((n, width), dtype=np.float32)
    row = 0
    for c in chunks:
        flat = c.flatten()
        if flat.null_count:
            raise UserError(f"{what}: has missing (null) values")
        k = len(c)
        out[row : row + k] = flat.to_numpy(zero_copy_only=False).reshape(k, width)
        row += k
    return out


def _labels_to_numpy(col: pa.ChunkedArray | pa.Array, what: str) -> np.ndarray:
    if col.null_count:
        raise UserError(f"{what}: has missing (null) labels")
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    arr = col.to_numpy(zero_copy_only=False)
    if arr.dtype != np.int32:
        arr = arr.astype(np.int32)
    return arr


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _read_schema(path: Path) -> pa.Schema:
    try:
        return pq.read_schema(path)
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"{path}: unreadable Parquet part ({str(e).splitlines()[0]})") from None


def _logit_layout(first: Path, schema: pa.Schema, meta: dict[str, Any]
                  ) -> tuple[int, bool, tuple[str, ...], tuple[str, ...]]:
    """(class count, has ft, class names, extra logit columns) of a split, from its first
    part's schema: every logit column a fixed-size list as wide as zs."""
    if "zs" not in schema.names:
        raise UserError(f"{first}: column zs is missing")
    width = _logit_width(schema.field("zs").type)
    if width is None:
        raise UserError(
            f"{first}: column zs has type {schema.field('zs').type}, "
            "expected fixed_size_list<float>[C]"
        )
    has_ft = "ft" in schema.names
    if has_ft:
        fw = _logit_width(schema.field("ft").type)
        if fw != width:
            raise UserError(
                f"{first}: column ft has width {fw} but column zs has width {width}"
            )
    names = tuple(str(s) for s in meta.get("class_names") or [])
    if names and len(names) != width:
        raise UserError(
            f"{first}: metadata lists {len(names)} class names but column zs has "
            f"width {width}"
        )
    if not names:
        names = tuple(f"class_{i}" for i in range(width))
    extra = tuple(cf.extra_logit_columns(schema))
    for col in extra:
        if _logit_width(schema.field(col).type) != width:
            raise UserError(f"{first}: column {col} has width "
                            f"{_logit_width(schema.field(col).type)} but column zs has width {width}")
    return width, has_ft, names, extra


def _part_batches(path: Path, rows: int, batch_rows: int, columns: Sequence[str]) -> Iterator[pa.RecordBatch]:
    """A part's record batches, its row count checked against the manifest and its page
    checksums verified while decoding. Buffered column streams: without them pyarrow
    pre-reads whole column chunks of a row group (65,536 rows × C floats per logit
    column), so memory would scale with C × row-group size rather than with batch_rows."""
    try:
        pf = pq.ParquetFile(path, buffer_size=STREAM_BUFFER_BYTES, pre_buffer=False,
                            page_checksum_verification=True)
        if pf.metadata.num_rows != rows:
            raise UserError(f"{path}: {pf.metadata.num_rows} rows, but its manifest records {rows}")
        yield from pf.iter_batches(batch_size=batch_rows, columns=list(columns), use_threads=True)
    except (pa.ArrowException, OSError) as e:
        raise UserError(f"{path}: unreadable Parquet part ({str(e).splitlines()[0]})") from None


def _make_store(root: str, verify: bool) -> Store:
    return Store(root, verify=verify)


# --------------------------------------------------------------------------- store


@contextlib.contextmanager
def _integrity() -> Iterator[None]:
    """A seal mismatch or unreadable record becomes one line (exit 2)."""
    try:
        yield
    except IntegrityError as e:
        raise UserError(str(e)) from None


class Store:
    """A gla store rooted at ``root`` (a plain path: the object pickles cheaply).

    Every part read is checked against its manifest record: present, same size, same row
    count; hashed (sha256) when its mtime differs from the seal, and always with
    ``verify=True``; its Parquet page checksums are verified while it is decoded."""

    def __init__(self, root: str | os.PathLike, *, verify: bool = False):
        self.root = Path(root)
        self.verify = verify
        self._checked: dict[Path, tuple[int, int]] = {}  # part -> (size, mtime) verified here

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    def __reduce__(self):
        return (_make_store, (str(self.root), self.verify))

    def _check_part(self, path: Path, record: dict[str, Any], manifest: Path) -> None:
        try:
            st = path.stat()
            seen = (st.st_size, st.st_mtime_ns)
        except OSError:
            seen = None
        if seen is not None and self._checked.get(path) == seen:
            return
        with _integrity():
            records.check_file(path, record, manifest, full=self.verify)
        if seen is not None:
            self._checked[path] = seen

    # ---- layout
    @property
    def logits_dir(self) -> Path:
        return self.root / "logits"

    @property
    def results_dir(self) -> Path:
        return self.root / "results"

    def cell_path(self, model: str, dataset: str) -> Path:
        try:
            return cf.cell_dir(self.root, model, dataset)
        except ValueError as e:
            raise UserError(str(e)) from None

    def counts_path(self, dataset: str) -> Path:
        try:
            cf.check_name(dataset, "dataset")
        except ValueError as e:
            raise UserError(str(e)) from None
        return self.root / "datasets" / dataset / COUNTS_FILE

    # ---- listing
    def cells(self) -> list[tuple[str, str]]:
        """(model, dataset) of every cell with at least one sealed split, sorted."""
        out = []
        if not self.logits_dir.is_dir():
            return out
        for mdir in sorted(p for p in self.logits_dir.iterdir() if p.is_dir()):
            for ddir in sorted(p for p in mdir.iterdir() if p.is_dir()):
                if (ddir / cf.CELL_RECORD).is_file():
                    out.append((mdir.name, ddir.name))
        return out

    def splits(self, model: str, dataset: str) -> list[str]:
        with _integrity():
            return cf.sealed_splits(self.cell_path(model, dataset))

    def _manifest(self, cell: Path, split: str) -> tuple[Path, dict[str, Any]]:
        with _integrity():
            mpath = cf.manifest_file(cell, split)
            doc = cf.read_manifest(cell, split) if mpath is not None else None
        if mpath is None or doc is None:
            present = self.splits(cell.parent.name, cell.name)
            raise UserError(
                f"{cell}: split {split!r} not found (splits present: "
                f"{', '.join(present) if present else 'none'})"
            )
        return mpath, doc

    def split_info(self, model: str, dataset: str, split: str) -> SplitInfo:
        cell = self.cell_path(model, dataset)
        try:
            cf.check_name(split, "split")
        except ValueError as e:
            raise UserError(str(e)) from None
        mpath, doc = self._manifest(cell, split)
        files, part_rows, records = self._part_files(cell, mpath, doc)
        schema = _read_schema(files[0])
        meta = cf.table_metadata(schema)
        width, has_ft, names, extra = _logit_layout(files[0], schema, meta)
        logit_cols = [c for c in ("zs", "ft", *extra) if c in schema.names]
        for f in files[1:]:
            s = _read_schema(f)
            if s.names != schema.names or any(s.field(c).type != schema.field(c).type for c in logit_cols):
                raise UserError(f"{f}: columns differ from {files[0].name} in the same split")
        dtype = str(schema.field("zs").type.value_type)
        # Manifests written before sealed_at existed: the newest part's recorded mtime.
        newest_part = max(int(r.get("mtime_ns") or 0) for r in records) / 1e9
        sealed_at = str(doc.get("sealed_at") or cf.iso_utc(newest_part))
        return SplitInfo(
            name=split,
            rows=int(doc.get("rows", 0)),
            files=tuple(files),
            part_rows=tuple(part_rows),
            write_id=str(doc.get("write_id", "")),
            num_classes=width,
            has_ft=has_ft,
            logit_dtype=dtype,
            class_names=names,
            metadata=meta,
            extra_logits=extra,
            sealed_at=sealed_at,
            part_sha256=tuple(str(r.get("sha256") or "") for r in records),
        )

    def _part_files(self, cell: Path, mpath: Path, doc: dict[str, Any]
                    ) -> tuple[list[Path], list[int], list[dict[str, Any]]]:
        """The split's part files (each checked against its manifest entry), their row
        counts and their manifest entries."""
        try:
            entries = [(str(e["file"]), int(e["rows"]), e) for e in doc["parts"]]
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise UserError(f"{mpath}: unreadable manifest ({e})") from None
        files, part_rows = [], []
        for name, rows, record in entries:
            f = cell / name
            self._check_part(f, record, mpath)
            files.append(f)
            part_rows.append(rows)
        if not files:
            raise UserError(f"{mpath}: lists no parts")
        return files, part_rows, [record for _, _, record in entries]

    @staticmethod
    def locate_row(info: SplitInfo, row: int) -> tuple[Path, int]:
        """(part file, row inside it) of row ``row`` of a split."""
        for f, n in zip(info.files, info.part_rows, strict=True):
            if row < n:
                return f, row
            row -= n
        return info.files[-1], row

    def cell_info(self, model: str, dataset: str) -> CellInfo:
        cell = self.cell_path(model, dataset)
        names = self.splits(model, dataset)
        if not names:
            raise UserError(f"{cell}: no sealed split (no {cf.CELL_RECORD} cell record)")
        splits = {s: self.split_info(model, dataset, s) for s in names}
        first = splits[names[0]]
        for s in names[1:]:
            info = splits[s]
            if info.num_classes != first.num_classes:
                raise UserError(
                    f"{info.files[0]}: column zs has width {info.num_classes} but split "
                    f"{first.name!r} has {first.num_classes}"
                )
            if info.class_names != first.class_names:
                raise UserError(
                    f"{info.files[0]}: class names differ from split {first.name!r} "
                    "(metadata class_names)"
                )
            if info.has_ft != first.has_ft:
                which, other = (info, first) if info.has_ft else (first, info)
                raise UserError(
                    f"{which.files[0]}: column ft present in split {which.name!r} "
                    f"but not in split {other.name!r}"
                )
        return CellInfo(
            model=model,
            dataset=dataset,
            path=cell,
            class_names=first.class_names,
            num_classes=first.num_classes,
            has_ft=first.has_ft,
            splits=splits,
            metadata=first.metadata,
        )

    # ---- reading
    def _columns(self, info: SplitInfo, columns: Sequence[str]) -> list[str]:
        cols = [c for c in columns if c != "ft" or info.has_ft]
        return [c for c in cols if not cf.is_extra_logit_column(c) or c in info.extra_logits]

    def read_split(
        self,
        model: str,
        dataset: str,
        split: str,
        columns: Sequence[str] = ("label", "zs", "ft"),
        *,
        info: SplitInfo | None = None,
        batch_rows: int = DEFAULT_BATCH_ROWS,
    ) -> SplitArrays:
        """A whole split in memory. ``columns`` ⊆ label, zs, ft, sample_id (ft skipped if absent).

        Decoded batch by batch straight into preallocated arrays: a one-shot
        ``pq.read_table`` of a list column materialises Parquet's repetition/definition
        levels for every value and peaks at ~5× the logits' size; this peaks at ~1×.
        """
        info = info or self.split_info(model, dataset, split)
        cols = self._columns(info, columns)
        n = sum(info.part_rows)
        c = info.num_classes
        labels = np.empty(n, np.int32) if "label" in cols else None
        zs = np.empty((n, c), np.float32) if "zs" in cols else None
        ft = np.empty((n, c), np.float32) if "ft" in cols else None
        extra = {e: np.empty((n, c), np.float32) for e in cols if e in info.extra_logits}
        ids = []
        row = 0
        for b in self.iter_split(model, dataset, split, cols, batch_rows=batch_rows, info=info):
            k = len(b)
            for out, part in ((labels, b.labels), (zs, b.zs), (ft, b.ft)):
                if out is not None:
                    out[row : row + k] = part
            for e, out in extra.items():
                out[row : row + k] = b.extra[e]
            if b.sample_ids is not None:
                ids.append(b.sample_ids)
            row += k
        if row != n:
            raise UserError(f"{info.files[0].parent}: split {split!r} read {row} rows, expected {n}")
        sample_ids = None
        if "sample_id" in cols:
            sample_ids = pa.chunked_array(ids, type=pa.string())
        return SplitArrays(labels=labels, zs=zs, ft=ft, sample_ids=sample_ids, extra=extra)

    def iter_split(
        self,
        model: str,
        dataset: str,
        split: str,
        columns: Sequence[str] = ("label", "zs", "ft"),
        *,
        batch_rows: int = DEFAULT_BATCH_ROWS,
        info: SplitInfo | None = None,
    ) -> Iterator[SplitArrays]:
        """The split in batches of at most ``batch_rows`` rows (bounded memory).

        Each batch records the part file it came from and its first row in that file, so
        validation errors can name the file and row.
        """
        info = info or self.split_info(model, dataset, split)
        cols = self._columns(info, columns)
        for f, rows in zip(info.files, info.part_rows, strict=True):
            offset = 0
            for rb in _part_batches(f, rows, batch_rows, cols):
                n = rb.num_rows
                yield SplitArrays(
                    labels=_labels_to_numpy(rb.column("label"), f"{f}: column label")
                    if "label" in cols
                    else None,
                    zs=_column_to_numpy(rb.column("zs"), info.num_classes, f"{f}: column zs")
                    if "zs" in cols
                    else None,
                    ft=_column_to_numpy(rb.column("ft"), info.num_classes, f"{f}: column ft")
                    if "ft" in cols
                    else None,
                    sample_ids=rb.column("sample_id") if "sample_id" in cols else None,
                    file=f,
                    row_offset=offset,
                    extra={c: _column_to_numpy(rb.column(c), info.num_classes, f"{f}: column {c}")
                           for c in cols if c in info.extra_logits},
                )
                offset += n

    def read_sample_ids(self, model: str, dataset: str, split: str) -> Iterator[tuple[Path, pa.Array]]:
        """Per part file, its sample_id column, one file at a time (bounded memory)."""
        info = self.split_info(model, dataset, split)
        for f, rows in zip(info.files, info.part_rows, strict=True):
            batches = list(_part_batches(f, rows, 1 << 20, ["sample_id"]))
            col = pa.chunked_array([b.column("sample_id") for b in batches], type=pa.string())
            yield f, col.combine_chunks()

    # ---- class counts
    def read_class_counts(self, dataset: str) -> ClassCounts | None:
        path = self.counts_path(dataset)
        if not path.exists():
            return None
        try:
            t = pq.read_table(path)
        except (pa.ArrowInvalid, OSError) as e:
            raise UserError(f"{path}: unreadable ({e})") from None
        for c in ("class_index", "count"):
            if c not in t.column_names:
                raise UserError(f"{path}: column {c} is missing")
        idx = t.column("class_index").to_numpy().astype(np.int64)
        cnt = t.column("count").to_numpy().astype(np.int64)
        c = len(idx)
        if c == 0 or not np.array_equal(np.sort(idx), np.arange(c)):
            raise UserError(f"{path}: column class_index must be 0..C-1, each once")
        if (cnt < 0).any():
            raise UserError(f"{path}: column count has negative values")
        order = np.argsort(idx)
        names = (
            t.column("class_name").to_pylist()
            if "class_name" in t.column_names
            else [f"class_{i}" for i in range(c)]
        )
        return ClassCounts(
            counts=cnt[order], class_names=tuple(str(names[i]) for i in order), path=path
        )

    def write_class_counts(
        self, dataset: str, counts: np.ndarray, class_names: Sequence[str] | None = None
    ) -> Path:
        counts = np.asarray(counts, dtype=np.int64).reshape(-1)
        c = len(counts)
        names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(c)]
        if len(names) != c:
            raise ValueError(f"{len(names)} class names for {c} counts")
        table = pa.table(
            {
                "class_index": pa.array(np.arange(c, dtype=np.int32)),
                "class_name": pa.array([str(n) for n in names], pa.string()),
                "count": pa.array(counts),
            }
        )
        path = self.counts_path(dataset)
        cf.atomic_write_table(path, table)
        return path

    def split_rows(self, model: str, dataset: str) -> dict[str, int]:
        """Rows of every sealed split, from the manifests (reads no parts)."""
        cell = self.cell_path(model, dataset)
        with _integrity():
            return {s: int((cf.read_manifest(cell, s) or {}).get("rows", 0)) for s in cf.sealed_splits(cell)}

    # ---- content key
    def content_key(self, model: str, dataset: str, _follow: bool = True) -> str:
        """A cheap key that changes whenever the cell's inputs change.

        Hash of the schema version, every sealed manifest's (split, write_id) — a rewrite
        of a split always gets a fresh write_id — and the dataset's class-counts file
        content (a small file). Reads no logits, but stats every part (the no-change fast
        path): a missing or resized part is an error here; a part whose mtime differs
        from its seal enters the key with its stat, so the cell is analysed again and its
        bytes are hashed on that read.
        """
        cell = self.cell_path(model, dataset)
        h = hashlib.sha256()
        h.update(f"schema={cf.SCHEMA_VERSION}\n".encode())
        with _integrity():
            for split in cf.sealed_splits(cell):
                mpath = cf.manifest_file(cell, split)
                doc = cf.read_manifest(cell, split) or {}
                h.update(f"split={split}:{doc.get('write_id', '')}:{doc.get('rows', '')}\n".encode())
                for e in doc.get("parts", []):
                    f = cell / str(e.get("file"))
                    if records.stat_changed(f, e, mpath):
                        h.update(f"touched={f.name}:{f.stat().st_mtime_ns}\n".encode())
        counts = self.counts_path(dataset)
        h.update(f"counts={_file_digest(counts) if counts.exists() else '-'}\n".encode())
        shift = counts.parent / "evaluate_with.json"  # a shifted set depends on its source cell
        if shift.is_file() and _follow:
            h.update(shift.read_bytes())
            try:
                source = str(json.loads(shift.read_text())["source"])
                if source != dataset and cf.cell_dir(self.root, model, source).is_dir():
                    h.update(f"source={self.content_key(model, source, False)}\n".encode())
            except (ValueError, KeyError, TypeError):
                pass  # analysis reports the unreadable file
        return h.hexdigest()[:24]
