"""Bring your own logits (and training counts) into a gla store.

Inputs are ``.npy``, ``.npz`` (the single array, or ``file.npz:key``) or Parquet (a list
column, or numeric columns stacked in order; ``file.parquet:column`` picks one column).
Labels are 1-D integers (-1 = unknown), logits 2-D floats. Every check raises
``UserError`` with one line naming the file (and column/key) at fault; nothing is written
unless all checks pass.
"""

from __future__ import annotations

import csv
import os
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from gla.extract import cellformat as cf
from gla.pipeline.errors import UserError
from gla.pipeline.store import SplitInfo, Store

Spec = str | os.PathLike  # a file, or file.npz:key / file.parquet:column
PART_ROWS = 262144  # rows per Parquet part of an imported split


# --------------------------------------------------------------------------- loading


def _split_spec(spec: str | os.PathLike) -> tuple[Path, str | None]:
    """'file.npz:key' -> (file.npz, 'key'); a bare existing path has no key."""
    s = str(spec)
    if os.path.exists(s):
        return Path(s), None
    head, sep, key = s.rpartition(":")
    if sep and head and os.path.exists(head):
        return Path(head), key
    raise UserError(f"{s}: file not found")


def _parquet_array(path: Path, key: str | None, ndim: int) -> tuple[np.ndarray, str]:
    """The array of ``path`` (``key``: its column): a named column, the one label column
    or list column, else several numeric columns stacked in order."""
    table = _read_parquet(path, key)
    if key is None:
        key = _pick_column(path, table, ndim)
    if key is not None:
        return _column_array(table.column(key), f"{path}: column {key}"), f"{path}: column {key}"
    return _stacked_columns(path, table), str(path)


def _read_parquet(path: Path, key: str | None) -> pa.Table:
    try:
        return pq.read_table(path, columns=[key] if key else None)
    except (pa.ArrowInvalid, OSError, KeyError) as e:
        if key is not None:
            names = pq.read_schema(path).names if path.exists() else []
            if key not in names:
                raise UserError(
                    f"{path}: column {key} not found (columns: {', '.join(names)})"
                ) from None
        raise UserError(f"{path}: not a readable Parquet file ({e})") from None


def _is_list(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_fixed_size_list(t) or pa.types.is_large_list(t)


def _pick_column(path: Path, table: pa.Table, ndim: int) -> str | None:
    """The column an unnamed Parquet input means: for 1-D, its only column or a label
    column; for 2-D, its only list column (None: stack the numeric columns)."""
    cols = table.column_names
    list_cols = [c for c in cols if _is_list(table.schema.field(c).type)]
    if ndim == 1:
        preferred = [c for c in ("label", "labels", "y", "count") if c in cols]
        if len(cols) == 1:
            return cols[0]
        if preferred:
            return preferred[0]
        raise UserError(
            f"{path}: {len(cols)} columns; name one with {path}:COLUMN "
            f"(columns: {', '.join(cols)})"
        )
    if len(list_cols) == 1:
        return list_cols[0]
    if list_cols:
        raise UserError(
            f"{path}: several list columns ({', '.join(list_cols)}); name one with "
            f"{path}:COLUMN"
        )
    return None


def _column_array(col: pa.ChunkedArray, where: str) -> np.ndarray:
    """One column as an array: a list column as (rows, width), all rows equally long."""
    t = col.type
    if col.null_count:
        raise UserError(f"{where}: has missing (null) values")
    if _is_list(t):
        col = col.combine_chunks()
        lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
        if len(lengths) and (lengths != lengths[0]).any():
            bad = int(np.flatnonzero(lengths != lengths[0])[0])
            raise UserError(
                f"{where}: row {bad} has {lengths[bad]} values but row 0 has {lengths[0]}"
            )
        flat = col.flatten()
        if flat.null_count:
            raise UserError(f"{where}: has missing (null) values")
        width = int(lengths[0]) if len(lengths) else 0
        return flat.to_numpy(zero_copy_only=False).reshape(len(col), width)
    if not (pa.types.is_integer(t) or pa.types.is_floating(t)):
        raise UserError(f"{where}: has type {t}, expected numbers")
    return col.to_numpy()


def _stacked_columns(path: Path, table: pa.Table) -> np.ndarray:
    """Several numeric scalar columns: one per class, in order."""
    cols = table.column_names
    bad = [
        c for c in cols
        if not (pa.types.is_integer(table.schema.field(c).type)
                or pa.types.is_floating(table.schema.field(c).type))
    ]
    if bad:
        raise UserError(f"{path}: column {bad[0]} is not numeric (type {table.schema.field(bad[0]).type})")
    for c in cols:
        if table.column(c).null_count:
            raise UserError(f"{path}: column {c} has missing (null) values")
    return np.stack([table.column(c).to_numpy() for c in cols], axis=1) if cols else np.empty((0, 0))


def load_array(spec: str | os.PathLike, what: str, ndim: int) -> tuple[np.ndarray, str]:
    """Load an array from .npy / .npz[:key] / .parquet[:column] / .csv / .txt.

    Returns the array and a description of where it came from (for error messages).
    """
    path, key = _split_spec(spec)
    suffix = path.suffix.lower()
    where = str(path) if key is None else f"{path}:{key}"
    try:
        if suffix == ".npy":
            if key is not None:
                raise UserError(f"{path}: a .npy file has no keys (got :{key})")
            arr = np.load(path, allow_pickle=False, mmap_mode="r")  # parts are copied out
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.files)
                if key is None:
                    if len(keys) != 1:
                        raise UserError(
                            f"{path}: holds {len(keys)} arrays ({', '.join(keys)}); "
                            f"name one with {path}:KEY"
                        )
                    key = keys[0]
                if key not in keys:
                    raise UserError(f"{path}: key {key} not found (keys: {', '.join(keys)})")
                arr = z[key]
                where = f"{path}: key {key}"
        elif suffix in (".parquet", ".pq"):
            arr, where = _parquet_array(path, key, ndim)
        elif suffix in (".txt", ".csv") and ndim == 1:
            text = [ln.strip() for ln in path.read_text().splitlines()]
            vals = [ln.split(",")[-1] for ln in text if ln]
            try:
                arr = np.array([float(v) for v in vals])
            except ValueError:
                raise UserError(f"{path}: expected one number per line") from None
        else:
            raise UserError(
                f"{path}: unsupported file type {suffix or '(none)'} for {what} "
                "(use .npy, .npz or .parquet)"
            )
    except UserError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # empty, truncated, not numpy
        raise UserError(f"{path}: cannot read {what} ({type(e).__name__}: {e})") from None
    if arr.dtype == object:
        raise UserError(f"{where}: {what} must be numeric, got object array")
    if arr.ndim != ndim:
        raise UserError(f"{where}: {what} must be {ndim}-D, got shape {arr.shape}")
    return arr, where


def load_target_prior(spec: str | os.PathLike, c: int | None = None, context: str = "the cell",
                      what: str = "target prior") -> tuple[np.ndarray, str]:
    """A label distribution file (the target prior π_t, a fit label distribution): C
    finite values > 0, normalised; and where it came from."""
    arr, where = load_array(spec, what, 1)
    if arr.dtype.kind not in "iuf":
        raise UserError(f"{where}: {what} must be numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if c is not None and len(arr) != c:
        raise UserError(f"{where}: {what} has {len(arr)} values but {context} has {c} classes")
    if not np.isfinite(arr).all() or (arr <= 0).any():
        raise UserError(f"{where}: {what} values must be finite and > 0")
    return arr / arr.sum(), where


_INT_LIMIT = 2**53  # integers beyond this are not exact in float64 (and no class index or count)


def _as_int64(a: np.ndarray, where: str, what: str) -> np.ndarray:
    """Integer-valued 1-D numbers as int64; UserError (one line) for anything else.

    Checked before the cast, so NaN, ±Inf and huge values are reported as such rather
    than turned into garbage integers (with a numpy warning on stderr).
    """
    if a.dtype.kind not in "iuf":
        raise UserError(f"{where}: {what} must be integers, got dtype {a.dtype}")
    if a.dtype.kind in "uf":
        bad = ~np.isfinite(a) | (np.abs(a) > _INT_LIMIT) if a.dtype.kind == "f" else a > _INT_LIMIT
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise UserError(f"{where}: {what} must be finite integers within ±2^53 (value {a[i]} at row {i})")
        if a.dtype.kind == "f" and (a != np.round(a)).any():
            raise UserError(f"{where}: {what} must be integers (found non-integer values)")
    return a.astype(np.int64)


def load_labels(spec: str | os.PathLike) -> tuple[np.ndarray, str]:
    y, where = load_array(spec, "labels", 1)
    return _as_int64(y, where, "labels"), where


def load_logits(spec: str | os.PathLike, what: str) -> tuple[np.ndarray, str]:
    x, where = load_array(spec, f"{what} logits", 2)
    if x.dtype.kind not in "iuf":
        raise UserError(f"{where}: {what} logits must be numbers, got dtype {x.dtype}")
    bad = ~np.isfinite(x)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise UserError(f"{where}: {what} logits have NaN/Inf (first at row {r}, class {c})")
    if x.dtype not in (np.float16, np.float32):
        with np.errstate(over="ignore"):
            x = x.astype(np.float32)
        bad = ~np.isfinite(x)
        if bad.any():
            r, c = np.argwhere(bad)[0]
            raise UserError(
                f"{where}: {what} logits exceed the float32 range (first at row {r}, class {c})"
            )
    return x, where


def load_lines(path: str | os.PathLike, what: str) -> list[str]:
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: file not found ({what})")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{p}: cannot read {what} ({e})") from None
    while lines and not lines[-1].strip():
        lines.pop()
    return [ln.strip() for ln in lines]


def _parquet_strings(path: str, column: str) -> list[str]:
    names = pq.read_schema(path).names
    if column not in names:
        raise UserError(f"{path}: column {column} not found (columns: {', '.join(names)})")
    col = pq.read_table(path, columns=[column]).column(0)
    if col.null_count:
        raise UserError(f"{path}: column {column} has missing (null) values")
    return [str(v) for v in col.to_pylist()]


def load_windows(spec: str, n: int, *sources: Spec | None) -> list[str]:
    """Window keys, one per row: a file (.txt lines, .npy/.npz[:key], .parquet:column), or
    the name of a column of one of the Parquet ``sources`` (the --zs or --labels file)."""
    s = str(spec)
    try:
        path, key = _split_spec(s)
    except UserError:
        files = [_split_spec(x)[0] for x in sources if x is not None]
        files = [p for p in files if p.suffix.lower() == ".parquet"]
        owner = next((p for p in files if s in pq.read_schema(p).names), None)
        if owner is None:
            raise UserError(f"--window {s}: neither a file nor a column of "
                            f"{', '.join(map(str, files)) or 'a Parquet input'}") from None
        path, key = owner, s
    where = str(path) if key is None else f"{path}: column {key}"
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        keys = _parquet_strings(str(path), key or pq.read_schema(path).names[0])
    elif suffix in (".npy", ".npz"):
        keys = [str(v) for v in load_array(s, "windows", 1)[0].tolist()]
    else:
        keys = load_lines(path, "windows")
    if len(keys) != n:
        raise UserError(f"{where}: {len(keys)} windows but zs has {n} rows")
    empty = next((i for i, k in enumerate(keys) if not k.strip()), None)
    if empty is not None:
        raise UserError(f"{where}: window of row {empty} is empty")
    return keys


# --------------------------------------------------------------------------- logits


def _existing_class_names(store: Store, dataset: str, num_classes: int) -> tuple[str, ...] | None:
    """Class names already known for a dataset (another model's cell), if C matches."""
    for m, d in store.cells():
        if d != dataset:
            continue
        try:
            info = store.cell_info(m, d)
        except UserError:
            continue
        if info.num_classes == num_classes:
            return info.class_names
    return None


def _check_names(model: str, dataset: str, split: str) -> None:
    for name, what in ((model, "model"), (dataset, "dataset"), (split, "split")):
        try:
            cf.check_name(name, what)
        except ValueError as e:
            raise UserError(f"--{what}: {e}") from None


def _load_inputs(labels: Spec | None, zs: Spec, ft: Spec | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, str]:
    """Labels, zs and ft arrays, checked against each other; and where zs came from.
    Without ``labels`` every row's label is unknown (−1): deployment data, whose label
    distribution ``gla analyze --target-estimator`` estimates."""
    zs_arr, zs_where = load_logits(zs, "zs")
    n, c = zs_arr.shape
    if n == 0:
        raise UserError(f"{zs_where}: zs logits have no rows")
    if c < 2:
        raise UserError(f"{zs_where}: zs logits have {c} column(s); need at least 2 classes")
    y, y_where = (np.full(n, -1, dtype=np.int64), "--labels") if labels is None else load_labels(labels)
    if len(y) != n:
        raise UserError(f"{y_where}: {len(y)} labels but {zs_where} has {n} rows")
    ft_arr = None
    if ft is not None:
        ft_arr, ft_where = load_logits(ft, "ft")
        if ft_arr.shape[1] != c:
            raise UserError(
                f"{ft_where}: ft logits have {ft_arr.shape[1]} columns but zs has {c}"
            )
        if ft_arr.shape[0] != n:
            raise UserError(f"{ft_where}: ft logits have {ft_arr.shape[0]} rows but zs has {n}")
    bad = (y < -1) | (y >= c)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise UserError(
            f"{y_where}: label {int(y[i])} at row {i} is out of range [0, {c - 1}] "
            "(-1 = unknown)"
        )
    return y, zs_arr, ft_arr, zs_where


def _reference_split(store: Store, model: str, dataset: str, split: str, c: int,
                     has_ft: bool, zs_where: str) -> SplitInfo | None:
    """Another sealed split of the cell, which this one must agree with (width, ft)."""
    existing = [s for s in store.splits(model, dataset) if s != split]
    if not existing:
        return None
    ref = store.split_info(model, dataset, existing[0])
    if ref.num_classes != c:
        raise UserError(
            f"{zs_where}: zs logits have {c} columns but split {existing[0]!r} of "
            f"{model}/{dataset} has {ref.num_classes} classes"
        )
    if ref.has_ft and not has_ft:
        raise UserError(
            f"--ft: split {existing[0]!r} of {model}/{dataset} has ft logits; give --ft "
            "for this split too"
        )
    if not ref.has_ft and has_ft:
        raise UserError(
            f"--ft: split {existing[0]!r} of {model}/{dataset} has no ft logits; import "
            "all splits with the same columns"
        )
    return ref


def _class_names(store: Store, model: str, dataset: str, classnames: Spec | None, c: int,
                 ref: SplitInfo | None) -> tuple[str, ...]:
    if classnames is None:
        if ref is not None:
            return ref.class_names
        return _existing_class_names(store, dataset, c) or tuple(f"class_{i}" for i in range(c))
    names = load_lines(classnames, "class names")
    if len(names) != c:
        raise UserError(f"{classnames}: {len(names)} class names but zs has {c} columns")
    if any(not s for s in names):
        raise UserError(f"{classnames}: empty class name at line {names.index('') + 1}")
    if len(set(names)) != len(names):
        dup = next(s for s in names if names.count(s) > 1)
        raise UserError(f"{classnames}: class name {dup!r} appears twice")
    if ref is not None and ref.class_names != tuple(names):
        raise UserError(
            f"{classnames}: class names differ from those of split {ref.name!r} of "
            f"{model}/{dataset}"
        )
    return tuple(names)


def _sample_ids(store: Store, model: str, dataset: str, split: str, sample_ids: Spec | None,
                n: int) -> list[str]:
    """The split's sample ids (given, or ``<split>-<row>``): unique here and in the cell."""
    if sample_ids is not None:
        ids = load_lines(sample_ids, "sample ids")
        if len(ids) != n:
            raise UserError(f"{sample_ids}: {len(ids)} sample ids but zs has {n} rows")
    else:
        ids = [f"{split}-{i}" for i in range(n)]
    ids_arr = pa.array(ids, pa.string())
    dup = _first_duplicate(ids_arr)
    if dup is not None:
        raise UserError(f"{sample_ids}: sample id {dup!r} appears twice")
    for s in store.splits(model, dataset):
        if s == split:
            continue
        for f, other in store.read_sample_ids(model, dataset, s):
            hit = pc.is_in(other, value_set=ids_arr)
            if pc.any(hit).as_py():
                i = int(np.flatnonzero(hit.to_numpy(zero_copy_only=False))[0])
                raise UserError(
                    f"{sample_ids or '--sample-ids'}: sample id {other[i].as_py()!r} is already "
                    f"used in {f} (column sample_id); ids must be unique in the cell"
                )
    return ids


def _split_tables(ids: list[str], split: str, y: np.ndarray, zs_arr: np.ndarray,
                  ft_arr: np.ndarray | None, meta: dict,
                  windows: list[str] | None = None) -> list[pa.Table]:
    n = len(y)
    dtype = "float16" if zs_arr.dtype == np.float16 and (
        ft_arr is None or ft_arr.dtype == np.float16
    ) else "float32"
    tables = []
    for start in range(0, max(n, 1), PART_ROWS):
        sl = slice(start, min(n, start + PART_ROWS))
        t = cf.build_table(
            ids[sl], split, y[sl].astype(np.int32), zs_arr[sl],
            None if ft_arr is None else ft_arr[sl], metadata=meta, dtype=dtype,
        )
        if windows is not None:  # optional time-window key (label-shift tracking)
            t = t.append_column("window", pa.array(windows[sl], pa.string()))
        tables.append(t)
    return tables


def import_logits(
    store: Store | str | os.PathLike,
    model: str,
    dataset: str,
    split: str,
    labels: Spec | None,
    zs: Spec,
    ft: Spec | None = None,
    classnames: Spec | None = None,
    sample_ids: Spec | None = None,
    windows: str | None = None,
) -> dict:
    """Write one split of a cell from array files; replaces that split only.

    Every check runs before anything is written."""
    store = store if isinstance(store, Store) else Store(store)
    _check_names(model, dataset, split)
    y, zs_arr, ft_arr, zs_where = _load_inputs(labels, zs, ft)
    n, c = zs_arr.shape
    ref = _reference_split(store, model, dataset, split, c, ft_arr is not None, zs_where)
    names = _class_names(store, model, dataset, classnames, c, ref)
    ids = _sample_ids(store, model, dataset, split, sample_ids, n)
    win = None if windows is None else load_windows(windows, n, zs, labels)
    meta = {
        "class_names": list(names),
        "model": {"name": model, "source": "import", "zs_file": os.fspath(zs),
                  **({"ft_file": os.fspath(ft)} if ft is not None else {})},
        "dataset": {"name": dataset, "source": "import"},
        "templates_hash": None,
    }
    cell = store.cell_path(model, dataset)
    manifest = cf.write_split(cell, split, _split_tables(ids, split, y, zs_arr, ft_arr, meta, win))
    return {"cell": str(cell), "split": split, "rows": n, "classes": c,
            "has_ft": ft_arr is not None, "manifest": str(manifest)}


def _first_duplicate(arr: pa.Array) -> str | None:
    if len(arr) == 0 or pc.count_distinct(arr).as_py() == len(arr):
        return None
    counts = pc.value_counts(arr)
    vals, cnts = counts.field("values"), counts.field("counts").to_numpy()
    return vals[int(np.flatnonzero(cnts > 1)[0])].as_py()


# --------------------------------------------------------------------------- counts


def _read_counts_csv(path: Path) -> dict[int, int]:
    rows = []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = [r for r in csv.reader(f) if r and any(x.strip() for x in r)]
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read ({e})") from None
    if not rows:
        raise UserError(f"{path}: empty")
    header = [h.strip().lower() for h in rows[0]]
    if "count" in header:
        if "class_index" not in header:
            raise UserError(f"{path}: column class_index is missing (header: {','.join(rows[0])})")
        ci, cc = header.index("class_index"), header.index("count")
        body = rows[1:]
    else:
        if len(rows[0]) < 2:
            raise UserError(f"{path}: expected two columns class_index,count")
        ci, cc = 0, 1
        body = rows
    out: dict[int, int] = {}
    for lineno, r in enumerate(body, start=2 if body is not rows else 1):
        try:
            k = int(r[ci])
            v = float(r[cc])
        except (ValueError, IndexError):
            raise UserError(f"{path}: line {lineno}: expected integers class_index,count") from None
        if not (abs(v) <= _INT_LIMIT and v == int(v)):  # also NaN and ±Inf
            raise UserError(f"{path}: line {lineno}: column count must be an integer")
        if k in out:
            raise UserError(f"{path}: line {lineno}: class_index {k} appears twice")
        out[k] = int(v)
    return out


def read_counts(counts: str | os.PathLike, num_classes: int | None = None,
                context: str = "") -> tuple[np.ndarray, str]:
    """Training counts from CSV (class_index,count) or .npy/.npz/.parquet: (counts, where).

    A CSV's missing classes count 0; ``num_classes`` (when known) bounds its class indices.
    """
    path, key = _split_spec(counts)
    where = str(path)
    if path.suffix.lower() in (".csv", ".txt") and key is None:
        table = _read_counts_csv(path)
        c = num_classes if num_classes is not None else (max(table) + 1 if table else 0)
        bad = [k for k in table if k < 0 or k >= c]
        if bad:
            raise UserError(f"{path}: column class_index has {bad[0]}, out of range [0, {c - 1}]"
                            + (context if num_classes is not None else ""))
        arr = np.zeros(c, dtype=np.int64)
        for k, v in table.items():
            arr[k] = v
        where = f"{path}: column count"
    else:
        raw, where = load_array(counts, "counts", 1)
        arr = _as_int64(raw, where, "counts")
    if (arr < 0).any():
        raise UserError(f"{where}: counts must be >= 0 (class {int(np.flatnonzero(arr < 0)[0])})")
    if len(arr) < 2:
        raise UserError(f"{where}: need counts for at least 2 classes, got {len(arr)}")
    if arr.sum() == 0:
        raise UserError(f"{where}: all counts are zero")
    return arr, where


def import_counts(
    store: Store | str | os.PathLike,
    dataset: str,
    counts: str | os.PathLike,
    classnames: str | os.PathLike | None = None,
) -> dict:
    """Write ``datasets/<dataset>/class_counts.parquet`` from .npy/.npz/.parquet or CSV."""
    store = store if isinstance(store, Store) else Store(store)
    try:
        cf.check_name(dataset, "dataset")
    except ValueError as e:
        raise UserError(f"--dataset: {e}") from None
    known_c = None
    known_names = None
    for m, d in store.cells():
        if d == dataset:
            info = store.cell_info(m, d)
            known_c, known_names = info.num_classes, info.class_names
            break
    arr, where = read_counts(counts, known_c, f" (the cells of dataset {dataset} have {known_c} classes)")
    if known_c is not None and len(arr) != known_c:
        raise UserError(
            f"{where}: {len(arr)} counts but the cells of dataset {dataset} have {known_c} classes"
        )
    if classnames is not None:
        names = load_lines(classnames, "class names")
        if len(names) != len(arr):
            raise UserError(f"{classnames}: {len(names)} class names but {len(arr)} counts")
    else:
        names = list(known_names) if known_names else [f"class_{i}" for i in range(len(arr))]
    out = store.write_class_counts(dataset, arr, names)
    return {"path": str(out), "classes": len(arr), "total": int(arr.sum())}
