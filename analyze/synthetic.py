"""Planted-prior worlds: logits whose true label bias is known, shared by tests and benches.

Class-conditional logit features are ``l = a·e_y + ε`` with ``ε ~ N(0, I_C)``. Then
``log p(l | y=k) = a·l_k + const``, so ``a·l`` is an exactly calibrated balanced-class
log-likelihood and the zero-shot logits ``zs = a·l + log π_p`` behave as a model trained
under the label prior ``π_p``: subtracting the true ``log π_p`` is the Bayes-optimal
balanced classifier (the oracle), and the GLA objective is minimised at ``π_p`` in the
population limit. The fine-tuned logits use an independent draw and the downstream
training prior ``π_s`` (``ft = a_ft·l' + log π_s``), so ``zs + ft − log π_p − log π_s`` is the
Bayes-optimal combination of two conditionally independent views.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def zipf_prior(num_classes: int, exponent: float = 1.0, seed: int = 0) -> np.ndarray:
    """A long-tailed prior ∝ rank^-exponent, randomly permuted over classes (float64, sums to 1)."""
    p = np.arange(1, num_classes + 1, dtype=np.float64) ** -float(exponent)
    p = np.random.default_rng(seed).permutation(p)
    return p / p.sum()


@dataclass(frozen=True)
class PlantedWorld:
    zs: np.ndarray  # (N, C) zero-shot logits, biased by log pi_p
    ft: np.ndarray | None  # (N, C) fine-tuned logits, biased by log pi_s
    labels: np.ndarray  # (N,) int64
    pi_p: np.ndarray  # (C,) the planted pretraining prior
    pi_s: np.ndarray  # (C,) the planted downstream training prior

    @property
    def oracle(self) -> np.ndarray:
        """Zero-shot logits de-biased with the true prior (Bayes-optimal for a balanced target)."""
        return self.zs - np.log(self.pi_p).astype(self.zs.dtype)


def _counts(num_classes: int, n_per_class) -> np.ndarray:
    counts = np.broadcast_to(np.asarray(n_per_class, dtype=np.int64), (num_classes,))
    if (counts < 0).any():
        raise ValueError("n_per_class must be non-negative")
    return counts


def _features(rng, labels, num_classes, signal, dtype) -> np.ndarray:
    x = rng.standard_normal((labels.size, num_classes), dtype=np.float32)
    x[np.arange(labels.size), labels] += signal
    x *= signal  # a·l: the calibrated balanced log-likelihood (up to a per-row constant)
    return x.astype(dtype, copy=False)


def planted_world(
    num_classes: int,
    n_per_class=50,
    prior: np.ndarray | None = None,
    *,
    seed: int = 0,
    signal: float = 3.0,
    ft_signal: float | None = 3.5,
    pi_s: np.ndarray | None = None,
    dtype=np.float32,
) -> PlantedWorld:
    """Draw a labelled set with ``n_per_class`` samples of each class (int or (C,) counts).

    ``prior`` is the planted π_p (default: Zipf(1) permuted with ``seed``); ``signal`` sets
    zero-shot difficulty; ``ft_signal=None`` leaves out fine-tuned logits; ``pi_s`` is the
    planted downstream prior (default uniform). Deterministic given ``seed``.
    """
    C = int(num_classes)
    pi_p = zipf_prior(C, seed=seed) if prior is None else np.asarray(prior, dtype=np.float64)
    pi_s = np.full(C, 1.0 / C) if pi_s is None else np.asarray(pi_s, dtype=np.float64)
    for name, p in (("prior", pi_p), ("pi_s", pi_s)):
        if p.shape != (C,) or (p <= 0).any() or not np.isclose(p.sum(), 1.0):
            raise ValueError(f"{name} must be a positive (C,) vector summing to 1")
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(C, dtype=np.int64), _counts(C, n_per_class))
    zs = _features(rng, labels, C, signal, dtype)
    zs += np.log(pi_p).astype(dtype)
    ft = None
    if ft_signal is not None:
        ft = _features(rng, labels, C, ft_signal, dtype)
        ft += np.log(pi_s).astype(dtype)
    return PlantedWorld(zs=zs, ft=ft, labels=labels, pi_p=pi_p, pi_s=pi_s)


# ------------------------------------------------------------- label shift and label noise


def label_counts(prior, n: int) -> np.ndarray:
    """(C,) integer counts summing to n, as close to n·prior as rounding allows (largest remainder)."""
    p = np.asarray(prior, dtype=np.float64)
    raw = p / p.sum() * int(n)
    counts = np.floor(raw).astype(np.int64)
    short = int(n) - int(counts.sum())
    counts[np.argsort(-(raw - counts), kind="stable")[:short]] += 1
    return counts


def shifted_world(world: PlantedWorld, target_prior, n: int, *, seed: int = 1, signal: float = 3.0,
                  ft_signal: float | None = 3.5) -> PlantedWorld:
    """A deployment set of ``n`` rows from the same model biases (π_p, π_s) as ``world``, with
    labels in proportions ``target_prior`` (exact counts, rows shuffled). Its true π_t is
    ``label_counts(target_prior, n) / n``."""
    counts = label_counts(target_prior, n)
    w = planted_world(world.pi_p.size, counts, world.pi_p, seed=seed, signal=signal,
                      ft_signal=ft_signal, pi_s=world.pi_s)
    order = np.random.default_rng(seed + 7919).permutation(n)
    return PlantedWorld(w.zs[order], None if w.ft is None else w.ft[order], w.labels[order],
                        w.pi_p, w.pi_s)


def flip_labels(labels, rate: float, num_classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(noisy labels, flipped mask): a ``rate`` fraction of rows (exactly round(rate·N), at
    random) get a label drawn uniformly from the other classes."""
    y = np.asarray(labels, dtype=np.int64).copy()
    rng = np.random.default_rng(seed)
    flipped = np.zeros(y.size, dtype=bool)
    flipped[rng.choice(y.size, int(round(rate * y.size)), replace=False)] = True
    y[flipped] = (y[flipped] + rng.integers(1, num_classes, flipped.sum())) % num_classes
    return y, flipped
