"""The demo world: which images pretrain the tiny CLIP, which fine-tune, and how often.

Everything here is a constant or a seeded function of the constants, so the assets
can be rebuilt bit for bit (``python -m gla.extract.demo.build_assets``).

- 20 classes: Fashion-MNIST's 10 and animal-mnist's 10, named as in ``extract.sources``.
- Pretraining: a long tail over the 20 classes, geometric from ``PRETRAIN_MAX`` images down
  to ``PRETRAIN_MAX / PRETRAIN_RATIO``, in a seeded random class order (so frequency is
  not confounded with how confusable a class is). Images come from the "train" pools.
- Downstream: per dataset, a fine-tuning split from the same "train" pools (disjoint
  from the pretraining images), long-tailed in *another* seeded order; val and test are
  drawn by the pipeline from the held-out pools ("test"), balanced.
"""

from __future__ import annotations

import numpy as np
from gla.extract.sources import ANIMAL_CLASSES, FASHION_CLASSES

DATASETS = {"fashion": FASHION_CLASSES, "animals": ANIMAL_CLASSES}
CLASSES = FASHION_CLASSES + ANIMAL_CLASSES  # pretraining label space (20)

SEED = 20231110
PRETRAIN_MAX = 500
PRETRAIN_RATIO = 100.0
FINETUNE_MAX = 250
FINETUNE_RATIO = 50.0

# Caption templates of the pretraining corpus; the zero-shot head uses the same ones.
TEMPLATES = [
    "a photo of a {}.",
    "a drawing of a {}.",
    "a picture of the {}.",
    "a small {}.",
    "a black and white photo of a {}.",
    "an image showing a {}.",
]


def geometric_counts(n: int, top: int, ratio: float) -> np.ndarray:
    """``n`` counts falling geometrically from ``top`` to ``top / ratio``."""
    return np.round(top * ratio ** (-np.arange(n) / (n - 1))).astype(np.int64)


def pretrain_counts() -> dict[str, int]:
    """Class name -> number of pretraining images (the ground truth of π_p)."""
    rng = np.random.default_rng(SEED)
    order = rng.permutation(len(CLASSES))
    counts = geometric_counts(len(CLASSES), PRETRAIN_MAX, PRETRAIN_RATIO)
    return {CLASSES[c]: int(counts[rank]) for rank, c in enumerate(order)}


def finetune_counts(dataset: str) -> np.ndarray:
    """Per-class training counts of a downstream dataset, in its label order."""
    names = DATASETS[dataset]
    rng = np.random.default_rng([SEED, 1 + list(DATASETS).index(dataset)])
    order = rng.permutation(len(names))
    counts = geometric_counts(len(names), FINETUNE_MAX, FINETUNE_RATIO)
    out = np.empty(len(names), dtype=np.int64)
    out[order] = counts
    return out


def draw_indices(labels: np.ndarray, counts: np.ndarray, rng: np.random.Generator,
                 exclude: np.ndarray | None = None) -> np.ndarray:
    """Draw ``counts[k]`` indices of class k from ``labels`` (not in ``exclude``), sorted."""
    taken = np.zeros(len(labels), dtype=bool)
    if exclude is not None:
        taken[exclude] = True
    picks = []
    for k, n in enumerate(counts):
        pool = np.flatnonzero((labels == k) & ~taken)
        if n > len(pool):
            raise ValueError(f"class {k}: {n} images wanted, {len(pool)} available")
        picks.append(rng.choice(pool, size=int(n), replace=False))
    return np.sort(np.concatenate(picks))
