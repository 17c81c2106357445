"""Raw offline image sources for the built-in datasets (numpy only, no torch).

Each loader returns ``(images, labels, class_names)``: ``images`` uint8 (N, 28, 28),
``labels`` int64 (N,) in ``0..C-1`` and ``class_names`` a list in label order.
Order within a pool is deterministic (the same on every machine), so callers can draw
seeded splits from it.

- Fashion-MNIST: IDX files ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz`` in
  ``$GLA_DATA_DIR/fashion-mnist`` (``make data`` fetches them; the variable defaults to
  ``.cache/data`` in the repository). Pools: ``"train"`` (60 000) and ``"test"`` (t10k, 10 000).
- animal-mnist (PyPI ``animal-mnist``, installed with ``--no-deps``): gzip'd pickles of
  numpy arrays shipped as package data, 1 000 images per class. They are unpickled with a
  loader that accepts nothing but numpy arrays. Pools: a fixed per-class 80/20 split
  (seeded permutation): ``"train"`` (800 per class), ``"test"`` (200 per class), ``"all"``.
  The demo pretrains and fine-tunes on ``"train"`` only, so evaluation images drawn from
  ``"test"`` are never seen in training.
- scikit-learn digits (optional, ``pool="all"`` only): 8x8 images upsampled to 28x28.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np

FASHION_CLASSES = [
    "t-shirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
]
ANIMAL_CLASSES = [
    "bear", "bird", "cat", "cow", "dog",
    "elephant", "giraffe", "horse", "sheep", "zebra",
]
DIGIT_CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

ANIMAL_SPLIT_SEED = 20231107
ANIMAL_TRAIN_FRACTION = 0.8
FASHION_POOLS = {"train": "train", "test": "t10k"}
ANIMAL_POOLS = ("train", "test", "all")

_REPO_ROOT = Path(__file__).resolve().parent.parent


class SourceError(FileNotFoundError):
    """A built-in image source is missing or unreadable (message says how to fix it)."""


def data_dir() -> Path:
    """``$GLA_DATA_DIR`` or ``<repo>/.cache/data``."""
    env = os.environ.get("GLA_DATA_DIR", "").strip()
    return Path(env) if env else _REPO_ROOT / ".cache" / "data"


# ---------------------------------------------------------------------------- Fashion-MNIST


def _read_idx(path: Path, expect_dims: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4:
        raise SourceError(f"{path}: not an IDX file (too short)")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08 or ndim != expect_dims:
        raise SourceError(f"{path}: not an unsigned-byte IDX file with {expect_dims} dimensions")
    dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise SourceError(f"{path}: expected {int(np.prod(dims))} bytes of data, found {body.size}")
    return body.reshape(dims)


def fashion_mnist_dir(root: str | os.PathLike | None = None) -> Path:
    return Path(root) if root else data_dir() / "fashion-mnist"


def load_fashion_mnist(
    pool: str = "train", root: str | os.PathLike | None = None
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Fashion-MNIST ``pool`` ("train" = 60k, "test" = t10k) from IDX gz files."""
    if pool not in FASHION_POOLS:
        raise ValueError(f"fashion-mnist pool must be one of {sorted(FASHION_POOLS)}, not {pool!r}")
    folder = fashion_mnist_dir(root)
    prefix = FASHION_POOLS[pool]
    img_path = folder / f"{prefix}-images-idx3-ubyte.gz"
    lab_path = folder / f"{prefix}-labels-idx1-ubyte.gz"
    for p in (img_path, lab_path):
        if not p.is_file():
            raise SourceError(
                f"Fashion-MNIST file {p} not found: set GLA_DATA_DIR to the folder holding "
                "fashion-mnist/ or run `make data` to fetch it"
            )
    images = _read_idx(img_path, 3)
    labels = _read_idx(lab_path, 1).astype(np.int64)
    if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
        raise SourceError(f"{folder}: images {images.shape} do not match labels {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= len(FASHION_CLASSES)):
        raise SourceError(f"{lab_path}: labels outside 0..{len(FASHION_CLASSES) - 1}")
    return np.ascontiguousarray(images), labels, list(FASHION_CLASSES)


# ---------------------------------------------------------------------------- animal-mnist


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain numpy arrays and refuses every other global (no code execution)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle global {module}.{name}")
        if name == "_reconstruct":
            # the array-rebuilding function, whichever module numpy keeps it in
            return np.zeros(0).__reduce__()[0]
        return getattr(np, name)


def _load_numpy_pickle_gz(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    obj = _NumpyOnlyUnpickler(io.BytesIO(raw)).load()
    if not isinstance(obj, np.ndarray):
        raise SourceError(f"{path}: expected a numpy array, found {type(obj).__name__}")
    return obj


def animal_mnist_dir() -> Path:
    spec = importlib.util.find_spec("animal_mnist")
    if spec is None or not spec.submodule_search_locations:
        raise SourceError(
            "animal-mnist is not installed: run `make data` "
            "(it does `pip install --no-deps animal-mnist==0.4`)"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "Animal_MNIST"


def _animal_all() -> tuple[np.ndarray, np.ndarray]:
    folder = animal_mnist_dir()
    data_path = folder / "animal_data_version_3.gz"
    label_path = folder / "animal_label_version_3.gz"
    for p in (data_path, label_path):
        if not p.is_file():
            raise SourceError(f"animal-mnist file {p} not found: reinstall it with `make data`")
    images = _load_numpy_pickle_gz(data_path)
    labels = _load_numpy_pickle_gz(label_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28) or images.shape[0] != labels.shape[0]:
        raise SourceError(f"{folder}: unexpected shapes {images.shape} / {labels.shape}")
    images = np.ascontiguousarray(images, dtype=np.uint8)
    labels = labels.astype(np.int64).reshape(-1)
    if labels.min() < 0 or labels.max() >= len(ANIMAL_CLASSES):
        raise SourceError(f"{label_path}: labels outside 0..{len(ANIMAL_CLASSES) - 1}")
    return images, labels


def animal_pool_indices(labels: np.ndarray, pool: str) -> np.ndarray:
    """Indices of ``pool`` in the full animal-mnist arrays: a fixed per-class 80/20 split."""
    if pool not in ANIMAL_POOLS:
        raise ValueError(f"animal-mnist pool must be one of {list(ANIMAL_POOLS)}, not {pool!r}")
    if pool == "all":
        return np.arange(labels.shape[0])
    rng = np.random.default_rng(ANIMAL_SPLIT_SEED)
    chosen = []
    for c in range(len(ANIMAL_CLASSES)):
        idx = np.flatnonzero(labels == c)
        perm = idx[rng.permutation(idx.size)]
        n_train = int(round(ANIMAL_TRAIN_FRACTION * idx.size))
        chosen.append(perm[:n_train] if pool == "train" else perm[n_train:])
    return np.sort(np.concatenate(chosen))


def load_animal_mnist(pool: str = "train") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """animal-mnist ``pool``: "train" (80% of each class), "test" (the other 20%) or "all"."""
    images, labels = _animal_all()
    idx = animal_pool_indices(labels, pool)
    return images[idx], labels[idx], list(ANIMAL_CLASSES)


# ---------------------------------------------------------------------------- sklearn digits


def load_digits(pool: str = "all") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """scikit-learn's 8x8 digits (1797 images) upsampled to 28x28 uint8 (needs scikit-learn)."""
    if pool != "all":
        raise ValueError(f"digits pool must be 'all', not {pool!r}")
    try:
        from sklearn.datasets import load_digits as _sk_digits
    except ImportError as e:  # pragma: no cover - dev extra
        raise SourceError("sklearn digits need scikit-learn (pip install scikit-learn)") from e
    d = _sk_digits()
    small = d.images.astype(np.float64) / 16.0  # (N, 8, 8) in [0, 1]
    # nearest-neighbour 8 -> 24, padded to 28 like MNIST's centred digits
    big = np.repeat(np.repeat(small, 3, axis=1), 3, axis=2)
    out = np.zeros((small.shape[0], 28, 28), dtype=np.uint8)
    out[:, 2:26, 2:26] = np.clip(big * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out, d.target.astype(np.int64), list(DIGIT_CLASSES)


LOADERS = {
    "fashion-mnist": load_fashion_mnist,
    "animal-mnist": load_animal_mnist,
    "digits": load_digits,
}


def load_source(kind: str, pool: str, root: str | os.PathLike | None = None):
    """Dispatch by dataset kind ("fashion-mnist", "animal-mnist", "digits")."""
    if kind not in LOADERS:
        raise ValueError(f"unknown built-in source {kind!r}; expected one of {sorted(LOADERS)}")
    if kind == "fashion-mnist":
        return load_fashion_mnist(pool, root=root or None)
    return LOADERS[kind](pool)
