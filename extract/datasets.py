"""Image datasets: a registry of kinds, each turning a dataset spec into labelled splits.

``build_source(spec) -> Source``: class names (in label order), and per split the sample
ids, labels (-1 unknown) and reader references in dataset order. Reading an image
(``source.reader(ref) -> PIL RGB image``) is a separate, picklable step that runs in the
data-loader workers. No torch here.

Kinds (``KINDS``):

- ``imagefolder``: ``root/<class>/<image>`` (class folders sorted; images sorted, recursive).
- ``manifest``: CSV or Parquet with columns ``path``, ``label`` [, ``split``] [, ``id``];
  paths relative to the manifest's folder; labels are class indices (then ``class_names``
  must come from the config) or class names.
- ``webdataset``: tar shards (``root`` is a glob) of ``<key>.<image ext>`` + ``<key>.cls``
  (the class index as text); read with ``tarfile`` by offset, no extra dependency.
- ``fashion-mnist`` / ``animal-mnist``: the offline sets of ``extract.sources``
  (``pool`` = "train" | "test"); 28×28 grayscale converted to RGB.

Splits (``spec["splits"]``, split name → one of):

- ``{per_class = k}``: k images per class drawn from the pool with ``seed``;
- ``{count = n}``: n images drawn from the pool;
- ``{rest = true}``: every pool image no other split drew;
- ``{root = ...}`` / ``{file = ...}``: an explicit source of the same kind for this split.

Drawn splits are taken in config order, then the ``rest`` split; each split keeps pool
order. Without ``splits`` a manifest's ``split`` column is used, else one split
``test`` holds the whole pool. ``limit_per_class`` caps the pool (first k of each class).
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gla.extract import hf_datasets, sources
from gla.extract.corruptions import CorruptedReader
from gla.extract.errors import ExtractError, did_you_mean, unknown_name

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".ppm", ".pgm", ".gif", ".tif", ".tiff"}


# ---------------------------------------------------------------------------- readers


class FileReader:
    """ref = image path."""

    def __call__(self, ref: str):
        from PIL import Image

        with Image.open(ref) as im:
            return im.convert("RGB")

    def describe(self, ref: str) -> str:
        return str(ref)


class ArrayReader:
    """ref = row index into a uint8 (N, H, W) grayscale array."""

    def __init__(self, images: np.ndarray, name: str):
        self.images = images
        self.name = name

    def __call__(self, ref: int):
        from PIL import Image

        return Image.fromarray(self.images[ref], mode="L").convert("RGB")

    def describe(self, ref: int) -> str:
        return f"{self.name}[{ref}]"


class TarReader:
    """ref = (tar path, data offset, size, member name): one seek + read per image."""

    def __call__(self, ref: tuple[str, int, int, str]):
        from PIL import Image

        path, offset, size, _ = ref
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(size)
        with Image.open(io.BytesIO(data)) as im:
            return im.convert("RGB")

    def describe(self, ref: tuple[str, int, int, str]) -> str:
        return f"{ref[0]}:{ref[3]}"


# ---------------------------------------------------------------------------- containers


@dataclass
class Pool:
    """Images of one source before splitting, in dataset order."""

    sample_ids: list[str]
    labels: np.ndarray  # int64, -1 unknown
    refs: list[Any]
    class_names: list[str]
    split_column: list[str] | None = None  # manifest's own split column
    named: bool = True  # classes have real names (folders, label strings), not indices
    reader: Any = None  # the kind's image reader; None: image files (FileReader)


@dataclass
class SplitData:
    name: str
    sample_ids: list[str]
    labels: np.ndarray
    refs: list[Any]

    def __len__(self) -> int:
        return len(self.sample_ids)

    def digest(self) -> str:
        h = hashlib.sha256()
        for s, y in zip(self.sample_ids, self.labels.tolist(), strict=True):
            h.update(f"{s}\0{y}\n".encode())
        return h.hexdigest()[:24]


@dataclass
class Source:
    name: str
    kind: str
    class_names: list[str]
    splits: dict[str, SplitData]
    reader: Callable[[Any], Any]
    identity: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------- class names


def _mismatch(where: str, found: list[str], given: list[str], what: str) -> str:
    """One line naming the configured names that are not classes of the dataset, and back."""
    missing = [n for n in given if n not in set(found)]
    unnamed = [n for n in found if n not in set(given)]
    parts = []
    if missing:
        first = missing[0]
        parts.append(f"{len(missing)} not among its classes: {first!r}{did_you_mean(first, unnamed or found)}"
                     + (f", {', '.join(map(repr, missing[1:3]))}" if len(missing) > 1 else "")
                     + (", ..." if len(missing) > 3 else ""))
    if unnamed:
        parts.append(f"{len(unnamed)} of its classes not named: {', '.join(map(repr, unnamed[:3]))}"
                     + (", ..." if len(unnamed) > 3 else ""))
    hint = '' if what == "mapping" else ' (to rename, map each folder: class_names = { folder = "name", ... })'
    return f"{where}: class_names {what} does not match the dataset's classes: {'; '.join(parts)}{hint}"


def _apply_class_names(where: str, found: list[str], spec: dict[str, Any], labels: np.ndarray,
                       named: bool) -> tuple[list[str], np.ndarray]:
    """Reconcile the dataset's classes with the configured names (label order = config order).

    named: the dataset's classes have real names (folders, string labels, a built-in set).
    Then a list must hold exactly those names (any order: the labels are reordered), and a
    ``{folder = "name"}`` mapping (``class_folders`` → ``class_names``) must name every one
    of them; a list that matches only some names is refused, never applied by position.
    Unnamed classes (class indices) take a list of the same length, by index.
    """
    configured = list(spec.get("class_names") or [])
    folders = list(spec.get("class_folders") or [])
    if not configured:
        return found, labels
    if len(set(configured)) != len(configured):
        dup = next(n for n in configured if configured.count(n) > 1)
        raise ExtractError(f"{where}: class_names has the name {dup!r} twice")
    if folders and not named:
        raise ExtractError(f"{where}: a class_names mapping needs named classes (folders or label "
                           "names); this dataset has class indices: give class_names as a list")
    if not named:
        if len(configured) != len(found):
            raise ExtractError(
                f"{where}: class_names has {len(configured)} names but the dataset has {len(found)} classes"
            )
        return configured, labels
    keys = folders or configured
    if set(keys) != set(found) or len(keys) != len(found):
        raise ExtractError(_mismatch(where, found, keys, "mapping" if folders else "list"))
    position = {n: i for i, n in enumerate(keys)}
    remap = np.array([position[n] for n in found], dtype=np.int64)
    if labels.size:
        labels = np.where(labels >= 0, remap[np.maximum(labels, 0)], -1)
    return configured, labels


# ---------------------------------------------------------------------------- inside the root


def _real_inside(base_real: str, real: str) -> bool:
    return real == base_real or real.startswith(base_real.rstrip(os.sep) + os.sep)


def check_inside_root(where: str, base: str | os.PathLike, paths: list[str], what: str) -> None:
    """Every path must resolve inside ``base`` (symlinks followed); one line names the first
    that does not. Parent folders are resolved once each, so a long manifest stays cheap."""
    base_real = os.path.realpath(base)
    parents: dict[str, str] = {}
    for i, p in enumerate(paths):
        full = os.path.normpath(os.path.join(base_real, p))
        parent, name = os.path.split(full)
        if parent not in parents:
            parents[parent] = os.path.realpath(parent)
        real = os.path.join(parents[parent], name)
        if os.path.islink(real):
            real = os.path.realpath(real)
        if not _real_inside(base_real, real):
            raise ExtractError(
                f"{where}: {what} {i + 1} ({p}) resolves outside the dataset root {base_real} "
                "(set allow_outside_root = true on the dataset to allow it)"
            )


# ---------------------------------------------------------------------------- kinds


def _imagefolder(spec: dict[str, Any], root: str) -> Pool:
    base = Path(root)
    if not base.is_dir():
        raise ExtractError(f"datasets[{spec['name']!r}]: imagefolder root {base} is not a folder")
    classes = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ExtractError(f"datasets[{spec['name']!r}]: imagefolder root {base} has no class folders")
    ids, labels, refs = [], [], []
    prefix = str(base) + os.sep
    for ci, cname in enumerate(classes):
        files = []
        for dirpath, dirnames, filenames in os.walk(base / cname):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            files.extend(
                os.path.join(dirpath, f) for f in filenames
                if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTS
            )
        files.sort(key=lambda p: p.split(os.sep))  # the order Path sorting gives
        for p in files:
            ids.append(p[len(prefix):].replace(os.sep, "/"))
            labels.append(ci)
            refs.append(p)
    return Pool(ids, np.asarray(labels, dtype=np.int64), refs, classes)


def _read_manifest_rows(path: Path, where: str) -> dict[str, list[Any]]:
    if not path.is_file():
        raise ExtractError(f"{where}: manifest {path} not found")
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as e:
            raise ExtractError(f"{where}: manifest {path} is not readable Parquet: {e}") from None
        return {c: table.column(c).to_pylist() for c in table.column_names}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ExtractError(f"{where}: manifest {path} is not readable CSV: {e}") from None
    cols: dict[str, list[Any]] = {}
    if rows:
        for k in rows[0]:
            cols[k] = [r[k] for r in rows]
    else:
        with open(path, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), [])
        cols = {k: [] for k in header}
    return cols


def _manifest(spec: dict[str, Any], root: str) -> Pool:
    where = f"datasets[{spec['name']!r}]"
    path = Path(root)
    cols = _read_manifest_rows(path, where)
    for col in ("path", "label"):
        if col not in cols:
            raise ExtractError(f"{where}: manifest {path} has no column {col!r} (needs path, label)")
    paths = [str(p) for p in cols["path"]]
    raw = cols["label"]
    # string labels are matched against the mapping's keys when there is one
    configured = list(spec.get("class_folders") or spec.get("class_names") or [])

    def as_int(v: Any) -> int | None:
        if v is None or v == "":
            return -1
        if isinstance(v, (int, np.integer)):
            return int(v)
        try:
            return int(str(v).strip())
        except ValueError:
            return None

    ints = [as_int(v) for v in raw]
    if all(i is not None for i in ints):
        labels = np.asarray(ints, dtype=np.int64)
        if not configured:
            raise ExtractError(
                f"{where}: manifest {path} has integer labels: give class_names in the config"
            )
        if labels.size and labels.max() >= len(configured) or (labels < -1).any():
            raise ExtractError(
                f"{where}: manifest {path} column 'label' has values outside 0..{len(configured) - 1}"
            )
        class_names, named = configured, False
    else:
        named = True
        names = ["" if v is None else str(v) for v in raw]
        class_names = configured or sorted({n for n in names if n})
        index = {n: i for i, n in enumerate(class_names)}
        unknown = sorted({n for n in names if n and n not in index})
        if unknown:
            raise ExtractError(
                f"{where}: manifest {path} column 'label' has names not in class_names: {unknown[:3]}"
            )
        labels = np.asarray([index[n] if n else -1 for n in names], dtype=np.int64)
    base = path.parent
    if not spec.get("allow_outside_root"):
        check_inside_root(where, base, paths, f"manifest {path} row")
    refs = [p if os.path.isabs(p) else str(base / p) for p in paths]
    ids = [str(v) for v in cols["id"]] if "id" in cols else paths
    if len(set(ids)) != len(ids):
        raise ExtractError(f"{where}: manifest {path} lists the same {'id' if 'id' in cols else 'path'} twice")
    split_col = [str(s) for s in cols["split"]] if "split" in cols else None
    return Pool(ids, labels, refs, class_names, split_col, named=named)


def _webdataset(spec: dict[str, Any], root: str) -> Pool:
    where = f"datasets[{spec['name']!r}]"
    shards = sorted(glob.glob(root)) if any(ch in root for ch in "*?[") else [root]
    shards = [s for s in shards if os.path.isfile(s)]
    if not shards:
        raise ExtractError(f"{where}: no tar shards match {root}")
    if not spec.get("allow_outside_root"):
        base = glob_base(root)
        check_inside_root(where, base, [os.path.relpath(s, base) for s in shards], "shard")
    configured = list(spec.get("class_names") or [])
    if not configured:
        raise ExtractError(f"{where}: webdataset shards carry class indices: give class_names in the config")
    ids, labels, refs = [], [], []
    for shard in shards:
        samples: dict[str, dict[str, Any]] = {}
        order: list[str] = []
        try:
            with tarfile.open(shard, "r:") as tar:
                for m in tar:
                    if not m.isfile():
                        continue
                    d, _, base = m.name.rpartition("/")
                    stem, dot, ext = base.partition(".")
                    if not dot:
                        continue
                    key = f"{d}/{stem}" if d else stem
                    if key not in samples:
                        samples[key] = {}
                        order.append(key)
                    ext = ext.lower()
                    if ext == "cls":
                        f = tar.extractfile(m)
                        samples[key]["cls"] = f.read().decode().strip() if f else ""
                    elif "." + ext.rsplit(".", 1)[-1] in IMAGE_EXTS:
                        samples[key]["img"] = (shard, m.offset_data, m.size, m.name)
        except (tarfile.TarError, OSError) as e:
            raise ExtractError(f"{where}: {shard} is not a readable tar file: {e}") from None
        name = Path(shard).name
        for key in order:
            s = samples[key]
            if "img" not in s:
                raise ExtractError(f"{where}: {shard}: sample {key!r} has no image entry")
            try:
                y = int(s.get("cls", "-1") or -1)
            except ValueError:
                raise ExtractError(f"{where}: {shard}: {key}.cls is not a class index") from None
            if y >= len(configured) or y < -1:
                raise ExtractError(f"{where}: {shard}: {key}.cls = {y} is outside 0..{len(configured) - 1}")
            ids.append(f"{name}/{key}")
            labels.append(y)
            refs.append(s["img"])
    return Pool(ids, np.asarray(labels, dtype=np.int64), refs, configured, named=False, reader=TarReader())


def glob_base(pattern: str) -> str:
    """The folder a glob pattern lists: its components before the first wildcard."""
    parts = Path(pattern).parts
    keep = []
    for part in parts:
        if any(ch in part for ch in "*?["):
            break
        keep.append(part)
    if len(keep) == len(parts):  # a plain file path: its folder
        keep = keep[:-1]
    return str(Path(*keep)) if keep else "."


def _builtin(loader_name: str, default_pool: str) -> Callable[[dict[str, Any], str], Pool]:
    def build(spec: dict[str, Any], root: str) -> Pool:
        pool = spec.get("pool") or default_pool
        try:
            if loader_name == "fashion-mnist":
                images, labels, names = sources.load_fashion_mnist(pool, root=root or None)
            else:
                images, labels, names = sources.load_animal_mnist(pool)
        except (ValueError, FileNotFoundError) as e:
            raise ExtractError(f"datasets[{spec['name']!r}]: {e}") from None
        pool_ids = [f"{pool}-{i:05d}" for i in range(len(labels))]
        p = Pool(pool_ids, np.asarray(labels, dtype=np.int64), list(range(len(labels))), list(names))
        p.reader = ArrayReader(images, f"{loader_name}:{pool}")
        return p

    return build


def _huggingface(spec: dict[str, Any], root: str) -> Pool:
    where = f"datasets[{spec['name']!r}]"
    listing = hf_datasets.list_rows(
        where, root, spec.get("pool") or "", spec.get("image_column") or "image",
        spec.get("label_column") or "label", list(spec.get("class_folders") or spec.get("class_names") or []),
    )
    return Pool(listing.sample_ids, listing.labels, listing.refs, listing.class_names,
                named=listing.named, reader=hf_datasets.ArrowImageReader(spec.get("image_column") or "image"))


# ---------------------------------------------------------------------------- fingerprints


def _stat(path: str, name: str) -> tuple[str, int, int] | tuple[str, str]:
    try:
        st = os.stat(path)
    except OSError:
        return (name, "missing")
    return (name, st.st_size, st.st_mtime_ns)


def _walk_stats(root: str, exts: set[str] | None) -> list[Any]:
    """(relative path, size, mtime_ns) of every non-hidden file under root, recursively."""
    if not os.path.isdir(root):
        return [_stat(root, os.path.basename(root))]
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for f in filenames:
            if f.startswith(".") or (exts is not None and os.path.splitext(f)[1].lower() not in exts):
                continue
            full = os.path.join(dirpath, f)
            out.append(_stat(full, os.path.relpath(full, root)))
    return sorted(out)


def _files_imagefolder(spec: dict[str, Any], root: str) -> list[Any]:
    return _walk_stats(root, IMAGE_EXTS)


def _files_manifest(spec: dict[str, Any], root: str) -> list[Any]:
    out = [_stat(root, os.path.basename(root))]
    try:
        paths = [str(p) for p in _read_manifest_rows(Path(root), "manifest").get("path", [])]
    except ExtractError:
        return out
    base = os.path.dirname(root)
    return out + [_stat(os.path.join(base, p), p) for p in paths]


def _files_webdataset(spec: dict[str, Any], root: str) -> list[Any]:
    shards = sorted(glob.glob(root)) if any(ch in root for ch in "*?[") else [root]
    return [_stat(s, os.path.relpath(s, glob_base(root))) for s in shards]


def _files_builtin(kind: str) -> Callable[[dict[str, Any], str], list[Any]]:
    def files(spec: dict[str, Any], root: str) -> list[Any]:
        try:
            folder = sources.fashion_mnist_dir(root or None) if kind == "fashion-mnist" else sources.animal_mnist_dir()
        except sources.SourceError:
            return ["missing"]
        # published data: sizes only, so a copy on another machine keeps the cell key
        return [(name, size) for name, size, *_ in _walk_stats(str(folder), None)]

    return files


def _files_huggingface(spec: dict[str, Any], root: str) -> list[Any]:
    if os.path.isdir(root):
        return _walk_stats(root, None)
    return _files_webdataset(spec, root)


@dataclass(frozen=True)
class Kind:
    """A dataset kind: how to list it, which files its listing reads (the fingerprint),
    and whether it draws splits from a ``root``."""

    build: Callable[[dict[str, Any], str], Pool]
    files: Callable[[dict[str, Any], str], list[Any]]
    needs_root: bool = True


KINDS: dict[str, Kind] = {
    "imagefolder": Kind(_imagefolder, _files_imagefolder),
    "manifest": Kind(_manifest, _files_manifest),
    "webdataset": Kind(_webdataset, _files_webdataset),
    "huggingface": Kind(_huggingface, _files_huggingface),
    "fashion-mnist": Kind(_builtin("fashion-mnist", "test"), _files_builtin("fashion-mnist"), needs_root=False),
    "animal-mnist": Kind(_builtin("animal-mnist", "test"), _files_builtin("animal-mnist"), needs_root=False),
}


def dataset_roots(spec: dict[str, Any]) -> list[str]:
    """The dataset's root and every split's own root/file, in config order."""
    roots = [spec.get("root") or ""]
    for s in (spec.get("splits") or {}).values():
        roots.append((s or {}).get("root") or (s or {}).get("file") or "")
    return roots


def dataset_fingerprint(spec: dict[str, Any]) -> str:
    """A cheap fingerprint of the files a dataset reads: a recursive listing with sizes and
    mtimes (imagefolder, Hugging Face folders), the manifest and every file it names, the
    webdataset shards matched now. An added shard, an image added in a nested folder or
    one overwritten in place changes it. No image is opened."""
    kind = KINDS.get(spec.get("kind") or "")
    if kind is None:
        return ""
    roots = [r for r in dataset_roots(spec) if r] or ([] if kind.needs_root else [""])
    doc = [kind.files(spec, r) for r in roots]
    return hashlib.sha256(json.dumps(doc, default=str).encode()).hexdigest()[:24]


# ---------------------------------------------------------------------------- splits


def _keep_classes(splits: dict[str, SplitData], class_names: list[str], classes: list[int] | None,
                  where: str) -> tuple[dict[str, SplitData], list[str]]:
    """Only the classes ``classes`` (indices), relabelled 0.. in that order. Applied after
    the splits are drawn, so each split holds the same images as without the filter (a
    shifted subset's test split stays inside its source's test split)."""
    if not classes:
        return splits, class_names
    c = len(class_names)
    if any(not 0 <= int(k) < c for k in classes) or len(set(classes)) != len(classes):
        raise ExtractError(f"{where}.classes: expected distinct indices in 0..{c - 1}, got {list(classes)}")
    remap = np.full(c, -1, dtype=np.int64)
    remap[np.asarray(classes, dtype=np.int64)] = np.arange(len(classes))
    out = {}
    for name, d in splits.items():
        keep = np.flatnonzero((d.labels >= 0) & (remap[np.maximum(d.labels, 0)] >= 0))
        out[name] = SplitData(name, [d.sample_ids[i] for i in keep], remap[d.labels[keep]],
                              [d.refs[i] for i in keep])
    return out, [class_names[k] for k in classes]


def _limit(pool: Pool, k: int | None) -> np.ndarray:
    idx = np.arange(len(pool.labels))
    if not k:
        return idx
    keep = []
    seen: dict[int, int] = {}
    for i, y in enumerate(pool.labels.tolist()):
        if seen.get(y, 0) < k:
            keep.append(i)
            seen[y] = seen.get(y, 0) + 1
    return np.asarray(keep, dtype=np.int64)


def _draw(spec: dict[str, Any], pool: Pool, idx: np.ndarray, drawn_specs: dict[str, dict[str, Any]],
          num_classes: int) -> dict[str, np.ndarray]:
    """Indices (into the pool, in pool order) of each drawn split."""
    where = f"datasets[{spec['name']!r}]"
    rng = np.random.default_rng(int(spec.get("seed") or 0))
    available = np.zeros(len(pool.labels), dtype=bool)  # the (limited) pool not yet drawn
    available[idx] = True
    out: dict[str, np.ndarray] = {}
    rest_name = None
    for name, s in drawn_specs.items():
        if s.get("rest"):
            rest_name = name
            continue
        if s.get("per_class") is not None:
            k = int(s["per_class"])
            chosen = []
            for c in range(num_classes):
                cand = np.flatnonzero(available & (pool.labels == c))
                if cand.size < k:
                    raise ExtractError(
                        f"{where}: split {name!r} wants per_class = {k} but class "
                        f"{pool.class_names[c]!r} has only {cand.size} images left"
                    )
                chosen.append(rng.choice(cand, size=k, replace=False))
            sel = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)
        else:
            n = int(s["count"])
            cand = np.flatnonzero(available)
            if cand.size < n:
                raise ExtractError(f"{where}: split {name!r} wants count = {n} but only {cand.size} images are left")
            sel = np.sort(rng.choice(cand, size=n, replace=False))
        available[sel] = False
        out[name] = sel
    if rest_name is not None:
        out[rest_name] = np.flatnonzero(available)
    return {name: out[name] for name in drawn_specs}


def _subset(pool: Pool, name: str, sel: np.ndarray) -> SplitData:
    return SplitData(name, [pool.sample_ids[i] for i in sel], pool.labels[sel].copy(),
                     [pool.refs[i] for i in sel])


def _check_unique_ids(where: str, splits: dict[str, SplitData]) -> None:
    """Sample ids are unique in the whole cell, across splits (per-split roots with the
    same layout would give the same relative ids and clash in the store)."""
    owner: dict[str, str] = {}
    for s in splits.values():
        if len(set(s.sample_ids)) != len(s.sample_ids):
            raise ExtractError(f"{where}: split {s.name!r} has repeated sample ids")
        for sid in s.sample_ids:
            first = owner.setdefault(sid, s.name)
            if first != s.name:
                raise ExtractError(f"{where}: splits {first!r} and {s.name!r} both have the sample id "
                                   f"{sid!r} (sample ids must be unique in the cell)")


def _split_configs(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        k: {kk: vv for kk, vv in (v or {}).items() if vv not in (None, "", False)}
        for k, v in (spec.get("splits") or {}).items()
    }


def _pool_splits(spec: dict[str, Any], pool: Pool, splits_cfg: dict, drawn: dict) -> dict[str, SplitData]:
    idx = _limit(pool, spec.get("limit_per_class"))
    if splits_cfg:
        return {s: _subset(pool, s, sel) for s, sel in _draw(spec, pool, idx, drawn, len(pool.class_names)).items()}
    if pool.split_column is None:
        return {"test": _subset(pool, "test", idx)}
    col = np.asarray(pool.split_column, dtype=object)
    return {s: _subset(pool, s, idx[col[idx] == s]) for s in dict.fromkeys(col[idx].tolist())}


def build_source(spec: dict[str, Any]) -> Source:
    """List a dataset (no image decoding): class names and labelled splits in dataset order."""
    name = spec.get("name") or "dataset"
    kind_name = spec.get("kind") or ""
    where = f"datasets[{name!r}]"
    if kind_name not in KINDS:
        raise ExtractError(f"{where}.kind: {unknown_name('dataset kind', kind_name, KINDS)}")
    kind = KINDS[kind_name]
    splits_cfg = _split_configs(spec)
    explicit = {k: v for k, v in splits_cfg.items() if v.get("root") or v.get("file")}
    drawn = {k: v for k, v in splits_cfg.items() if k not in explicit}
    # what the kind matches its class names against: the mapping's keys, else the list
    source_names = list(spec.get("class_folders") or spec.get("class_names") or [])

    splits: dict[str, SplitData] = {}
    class_names: list[str] = []
    reader = None
    if drawn or not splits_cfg:
        if not spec.get("root") and kind.needs_root:
            raise ExtractError(f"{where}: root is empty (the {kind_name} to draw splits from)")
        pool = kind.build(spec, spec.get("root") or "")
        source_names = source_names or pool.class_names
        pool.class_names, pool.labels = _apply_class_names(where, pool.class_names, spec, pool.labels, pool.named)
        class_names, reader = pool.class_names, pool.reader
        splits.update(_pool_splits(spec, pool, splits_cfg, drawn))
    for s, cfg in explicit.items():
        if not kind.needs_root:
            raise ExtractError(f"{where}: split {s!r}: root/file splits are not supported for kind {kind_name}")
        sub = kind.build({**spec, "class_names": source_names}, cfg.get("root") or cfg.get("file"))
        source_names = source_names or sub.class_names
        sub.class_names, sub.labels = _apply_class_names(f"{where}.splits.{s}", sub.class_names, spec,
                                                         sub.labels, sub.named)
        if class_names and sub.class_names != class_names:
            raise ExtractError(f"{where}: split {s!r} has classes {sub.class_names[:3]}... unlike the pool's")
        class_names, reader = class_names or sub.class_names, reader or sub.reader
        splits[s] = _subset(sub, s, _limit(sub, spec.get("limit_per_class")))
    splits, class_names = _keep_classes(splits, class_names, spec.get("classes"), where)
    order = list(splits_cfg) or list(splits)  # keep the config's split order
    splits = {s: splits[s] for s in order if s in splits}
    _check_unique_ids(where, splits)
    reader = reader or FileReader()
    if spec.get("corruption"):
        reader = CorruptedReader(reader, spec["corruption"], int(spec.get("severity") or 3))
    identity = {
        "name": name,
        "kind": kind_name,
        "pool": spec.get("pool") or "",
        "seed": int(spec.get("seed") or 0),
        "limit_per_class": spec.get("limit_per_class"),
        **({"classes": list(spec["classes"])} if spec.get("classes") else {}),
        **({"source_classes": list(spec["source_classes"])} if spec.get("source_classes") else {}),
        **({"corruption": spec["corruption"], "severity": int(spec.get("severity") or 3)}
           if spec.get("corruption") else {}),
        "splits": {s: {"rows": len(d), "digest": d.digest()} for s, d in splits.items()},
        "files": dataset_fingerprint(spec),
    }
    return Source(name, kind_name, class_names, splits, reader, identity)
