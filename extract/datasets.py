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
import os
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gla.extract.corruptions import CorruptedReader
from gla.extract.errors import ExtractError

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


def _apply_class_names(where: str, found: list[str], configured: list[str], labels: np.ndarray,
                       by_name: bool) -> tuple[list[str], np.ndarray]:
    """Reconcile the dataset's classes with a configured list.

    by_name: the dataset's names are real names (imagefolder): the same set in another
    order reorders the labels; a different set of the same size renames in order.
    """
    if not configured:
        return found, labels
    if len(configured) != len(found):
        raise ExtractError(
            f"{where}: class_names has {len(configured)} names but the dataset has {len(found)} classes"
        )
    if len(set(configured)) != len(configured):
        raise ExtractError(f"{where}: class_names has repeated names")
    if by_name and set(configured) == set(found) and configured != found:
        remap = np.array([configured.index(n) for n in found], dtype=np.int64)
        labels = np.where(labels >= 0, remap[np.maximum(labels, 0)], -1)
    return list(configured), labels


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
    configured = list(spec.get("class_names") or [])

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
        class_names = configured
    else:
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
    refs = [p if os.path.isabs(p) else str(base / p) for p in paths]
    ids = [str(v) for v in cols["id"]] if "id" in cols else paths
    if len(set(ids)) != len(ids):
        raise ExtractError(f"{where}: manifest {path} lists the same {'id' if 'id' in cols else 'path'} twice")
    split_col = [str(s) for s in cols["split"]] if "split" in cols else None
    return Pool(ids, labels, refs, class_names, split_col)


def _webdataset(spec: dict[str, Any], root: str) -> Pool:
    where = f"datasets[{spec['name']!r}]"
    shards = sorted(glob.glob(root)) if any(ch in root for ch in "*?[") else [root]
    shards = [s for s in shards if os.path.isfile(s)]
    if not shards:
        raise ExtractError(f"{where}: no tar shards match {root}")
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
    return Pool(ids, np.asarray(labels, dtype=np.int64), refs, configured)


def _builtin(loader_name: str, default_pool: str) -> Callable[[dict[str, Any], str], Pool]:
    def build(spec: dict[str, Any], root: str) -> Pool:
        from gla.extract import sources

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
        p.images = images  # type: ignore[attr-defined]
        return p

    return build


KINDS: dict[str, Callable[[dict[str, Any], str], Pool]] = {
    "imagefolder": _imagefolder,
    "manifest": _manifest,
    "webdataset": _webdataset,
    "fashion-mnist": _builtin("fashion-mnist", "test"),
    "animal-mnist": _builtin("animal-mnist", "test"),
}
READERS = {
    "imagefolder": FileReader,
    "manifest": FileReader,
    "webdataset": TarReader,
}


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


def build_source(spec: dict[str, Any]) -> Source:
    """List a dataset (no image decoding): class names and labelled splits in dataset order."""
    name = spec.get("name") or "dataset"
    kind = spec.get("kind") or ""
    if kind not in KINDS:
        raise ExtractError(f"datasets[{name!r}].kind = {kind!r}: expected one of {', '.join(KINDS)}")
    build = KINDS[kind]
    splits_cfg: dict[str, dict[str, Any]] = {
        k: {kk: vv for kk, vv in (v or {}).items() if vv not in (None, "", False)}
        for k, v in (spec.get("splits") or {}).items()
    }
    explicit = {k: v for k, v in splits_cfg.items() if v.get("root") or v.get("file")}
    drawn = {k: v for k, v in splits_cfg.items() if k not in explicit}
    configured = list(spec.get("class_names") or [])
    by_name = kind == "imagefolder"
    where = f"datasets[{name!r}]"

    pool = None
    if drawn or not splits_cfg:
        if not spec.get("root") and kind in ("imagefolder", "manifest", "webdataset"):
            raise ExtractError(f"{where}: root is empty (the {kind} to draw splits from)")
        pool = build(spec, spec.get("root") or "")
        found = pool.class_names
        pool.class_names, pool.labels = _apply_class_names(where, found, configured, pool.labels, by_name)
        class_names = pool.class_names
    else:
        class_names = []

    splits: dict[str, SplitData] = {}
    images = getattr(pool, "images", None)
    if pool is not None:
        idx = _limit(pool, spec.get("limit_per_class"))
        if not splits_cfg:
            if pool.split_column is not None:
                col = np.asarray(pool.split_column, dtype=object)
                for s in dict.fromkeys(col[idx].tolist()):
                    splits[s] = _subset(pool, s, idx[col[idx] == s])
            else:
                splits["test"] = _subset(pool, "test", idx)
        else:
            for s, sel in _draw(spec, pool, idx, drawn, len(class_names)).items():
                splits[s] = _subset(pool, s, sel)
    for s, cfg in explicit.items():
        sub = build({**spec, "class_names": configured or class_names}, cfg.get("root") or cfg.get("file"))
        sub.class_names, sub.labels = _apply_class_names(
            f"{where}.splits.{s}", sub.class_names, configured or class_names, sub.labels, by_name)
        if class_names and sub.class_names != class_names:
            raise ExtractError(f"{where}: split {s!r} has classes {sub.class_names[:3]}... unlike the pool's")
        class_names = class_names or sub.class_names
        if getattr(sub, "images", None) is not None:
            raise ExtractError(f"{where}: split {s!r}: root/file splits are not supported for kind {kind}")
        splits[s] = _subset(sub, s, _limit(sub, spec.get("limit_per_class")))
    splits, class_names = _keep_classes(splits, class_names, spec.get("classes"), where)
    # keep the config's split order
    order = list(splits_cfg) or list(splits)
    splits = {s: splits[s] for s in order if s in splits}
    for s in splits.values():
        if len(set(s.sample_ids)) != len(s.sample_ids):
            raise ExtractError(f"{where}: split {s.name!r} has repeated sample ids")
    reader = ArrayReader(images, f"{kind}:{spec.get('pool') or 'test'}") if images is not None else READERS[kind]()
    if spec.get("corruption"):
        reader = CorruptedReader(reader, spec["corruption"], int(spec.get("severity") or 3))
    identity = {
        "name": name,
        "kind": kind,
        "pool": spec.get("pool") or "",
        "seed": int(spec.get("seed") or 0),
        "limit_per_class": spec.get("limit_per_class"),
        **({"classes": list(spec["classes"])} if spec.get("classes") else {}),
        **({"source_classes": list(spec["source_classes"])} if spec.get("source_classes") else {}),
        **({"corruption": spec["corruption"], "severity": int(spec.get("severity") or 3)}
           if spec.get("corruption") else {}),
        "splits": {s: {"rows": len(d), "digest": d.digest()} for s, d in splits.items()},
    }
    return Source(name, kind, class_names, splits, reader, identity)
