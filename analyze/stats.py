"""Classification metrics as mergeable sufficient statistics.

A :class:`Tally` holds per-class counts, the summed NLL and the ECE bin sums of a set of
predictions. Tallies of disjoint chunks add up (``merge``) to exactly the tally of their
union, so a cell of any size is reduced chunk by chunk in bounded memory, and every metric
is a function of the merged tally. All work is vectorised over samples (bincount).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

N_BINS = 15
_CHUNK_ROWS = 4096  # rows per internal block: keeps (rows, C) temporaries in cache


@dataclass
class Tally:
    support: np.ndarray  # (C,) int64: samples whose label is k
    correct: np.ndarray  # (C,) int64: samples of class k predicted k (true positives)
    predicted: np.ndarray  # (C,) int64: samples predicted k
    nll_sum: float  # Σ −log softmax(z_i)[y_i]
    bin_count: np.ndarray  # (B,) int64: samples whose top-label confidence falls in bin b
    bin_conf: np.ndarray  # (B,) float64: Σ confidence in bin b
    bin_correct: np.ndarray  # (B,) int64: Σ correct in bin b
    correct5: np.ndarray  # (C,) int64: samples of class k whose label is among the top 5

    @classmethod
    def empty(cls, num_classes: int, n_bins: int = N_BINS) -> Tally:
        zi = lambda n: np.zeros(n, dtype=np.int64)  # noqa: E731
        return cls(zi(num_classes), zi(num_classes), zi(num_classes), 0.0, zi(n_bins),
                   np.zeros(n_bins), zi(n_bins), zi(num_classes))

    @property
    def n(self) -> int:
        return int(self.support.sum())

    def merge(self, other: Tally) -> Tally:
        """The tally of the union of two disjoint sets (a new object)."""
        if self.support.shape != other.support.shape or self.bin_count.shape != other.bin_count.shape:
            raise ValueError("cannot merge tallies with different numbers of classes or bins")
        return Tally(
            self.support + other.support,
            self.correct + other.correct,
            self.predicted + other.predicted,
            self.nll_sum + other.nll_sum,
            self.bin_count + other.bin_count,
            self.bin_conf + other.bin_conf,
            self.bin_correct + other.bin_correct,
            self.correct5 + other.correct5,
        )


def confidence_bins(conf: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """Equal-width bin of each confidence: bin b holds (b/B, (b+1)/B] (Guo et al. 2017)."""
    return np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)


def _block_stats(z: np.ndarray, y: np.ndarray):
    """pred, top-label confidence and NLL of one block of logits."""
    rows = np.arange(z.shape[0])
    pred = z.argmax(axis=1)
    m = z[rows, pred]
    e = z - m[:, None]
    np.exp(e, out=e)
    # Row sums as a matrix-vector product: BLAS is ~7x faster than a float64 sum and
    # accurate to float32 rounding (terms lie in (0, 1], the largest is 1).
    se = (e @ np.ones(z.shape[1], dtype=e.dtype)).astype(np.float64)
    lse = m.astype(np.float64) + np.log(se)
    zy = z[rows, y]
    # Top-5: fewer than 5 classes score strictly above the label's logit (ties count for
    # the label, as argmax's first-index rule does for top-1 only approximately).
    top5 = np.count_nonzero(z > zy[:, None], axis=1) < 5
    return pred, 1.0 / se, lse - zy, top5


def tally(logits, labels, num_classes: int, n_bins: int = N_BINS) -> Tally:
    """Sufficient statistics of (logits, labels); logits (N, C) finite, labels in [0, C)."""
    return tally_and_predictions(logits, labels, num_classes, n_bins)[0]


def tally_and_predictions(logits, labels, num_classes: int, n_bins: int = N_BINS) -> tuple[Tally, np.ndarray]:
    """The tally and the (N,) int32 predicted classes (argmax), from one pass over the logits."""
    z = np.asarray(logits)
    y = np.asarray(labels).astype(np.int64, copy=False)
    C = int(num_classes)
    if z.ndim != 2 or z.shape[1] != C or y.shape != (z.shape[0],):
        raise ValueError(f"tally needs logits (N, {C}) and labels (N,), got {z.shape} and {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= C):
        raise ValueError(f"labels out of range [0, {C})")
    if not np.issubdtype(z.dtype, np.floating) or z.dtype.itemsize < 4:
        z = z.astype(np.float32)
    t = Tally.empty(C, n_bins)
    preds = np.empty(z.shape[0], dtype=np.int32)
    for s in range(0, z.shape[0], _CHUNK_ROWS):
        zb, yb = z[s : s + _CHUNK_ROWS], y[s : s + _CHUNK_ROWS]
        pred, conf, nll, top5 = _block_stats(zb, yb)
        preds[s : s + _CHUNK_ROWS] = pred
        hit = pred == yb
        b = confidence_bins(conf, n_bins)
        t.support += np.bincount(yb, minlength=C)
        t.correct += np.bincount(yb[hit], minlength=C)
        t.predicted += np.bincount(pred, minlength=C)
        t.nll_sum += float(nll.sum())
        t.bin_count += np.bincount(b, minlength=n_bins)
        t.bin_conf += np.bincount(b, weights=conf, minlength=n_bins)
        t.bin_correct += np.bincount(b[hit], minlength=n_bins)
        t.correct5 += np.bincount(yb[top5], minlength=C)
    return t, preds


def _ratio(a, b) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1.0), np.nan)


def summary_metrics(t: Tally) -> dict:
    """n, accuracy, balanced accuracy (mean recall over classes present), top-5, NLL, ECE."""
    n = t.n
    recall = _ratio(t.correct, t.support)
    present = t.support > 0
    return {
        "n": n,
        "accuracy": float(t.correct.sum() / n) if n else float("nan"),
        "balanced_accuracy": float(recall[present].mean()) if present.any() else float("nan"),
        "top5": float(t.correct5.sum() / n) if n else float("nan"),
        "nll": float(t.nll_sum / n) if n else float("nan"),
        "ece": float(np.abs(t.bin_conf - t.bin_correct).sum() / n) if n else float("nan"),
    }


def per_class_metrics(t: Tally) -> dict[str, np.ndarray]:
    """(C,) arrays: n (support), accuracy (= recall), precision, pred_share; NaN when undefined."""
    n = t.n
    return {
        "n": t.support.copy(),
        "accuracy": _ratio(t.correct, t.support),
        "precision": _ratio(t.correct, t.predicted),
        "pred_share": _ratio(t.predicted, np.full(t.predicted.shape, n)),
    }


# The released GLA code's conventions are the defaults; the other variants keep their own
# names (docs/conventions.md).
GROUP_SCHEMES = ("released", "array-split")
GROUP_AVERAGES = ("per-class", "pooled")


def group_accuracy(t: Tally, groups: np.ndarray, average: str = "pooled") -> dict[str, float]:
    """Accuracy of each group of classes (NaN when the group has no eval sample).

    ``average``: "pooled" = Σ correct / Σ support over the group's classes; "per-class" =
    the mean of the group's per-class accuracies (classes without eval samples left out),
    as the released code reports many/medium/few-shot accuracy.
    """
    if average not in GROUP_AVERAGES:
        raise ValueError(f"group average: expected one of {', '.join(GROUP_AVERAGES)}, got {average!r}")
    recall = _ratio(t.correct, t.support)
    out = {}
    for g in dict.fromkeys(groups.tolist()):
        sel = groups == g
        if average == "pooled":
            out[g] = float(_ratio(t.correct[sel].sum(), t.support[sel].sum()))
        else:
            r = recall[sel & (t.support > 0)]
            out[g] = float(r.mean()) if r.size else float("nan")
    return out


def group_sizes(num_classes: int, scheme: str = "released") -> tuple[int, int, int]:
    """(head, medium, tail) class counts: "released" gives C//3, C//3 and the rest (the
    tail takes the leftovers); "array-split" gives the leftovers to the earlier groups."""
    c = int(num_classes)
    if scheme == "released":
        return c // 3, c // 3, c - 2 * (c // 3)
    if scheme == "array-split":
        return tuple(len(a) for a in np.array_split(np.arange(c), 3))
    raise ValueError(f"groups: expected one of {', '.join(GROUP_SCHEMES)}, got {scheme!r}")


def prior_groups(prior, scheme: str = "released") -> np.ndarray:
    """"head"/"medium"/"tail": classes sorted by prior (largest first), cut by ``group_sizes``.

    Ties keep class order (stable sort).
    """
    prior = np.asarray(prior, dtype=np.float64)
    order = np.argsort(-prior, kind="stable")
    h, m, _ = group_sizes(prior.shape[0], scheme)
    out = np.empty(prior.shape[0], dtype=object)
    out[order[:h]], out[order[h : h + m]], out[order[h + m :]] = "head", "medium", "tail"
    return out.astype(str)


def count_groups(counts) -> np.ndarray:
    """Long-tail convention by training count: "many" > 100, "medium" 20–100, "few" < 20."""
    c = np.asarray(counts)
    return np.where(c > 100, "many", np.where(c >= 20, "medium", "few"))


# Standalone metrics over (logits, labels), for users and tests.


def accuracy(logits, labels) -> float:
    z = np.asarray(logits)
    return summary_metrics(tally(z, labels, z.shape[1]))["accuracy"]


def balanced_accuracy(logits, labels) -> float:
    z = np.asarray(logits)
    return summary_metrics(tally(z, labels, z.shape[1]))["balanced_accuracy"]


def nll(logits, labels) -> float:
    z = np.asarray(logits)
    return summary_metrics(tally(z, labels, z.shape[1]))["nll"]


def ece(logits, labels, n_bins: int = N_BINS) -> float:
    z = np.asarray(logits)
    return summary_metrics(tally(z, labels, z.shape[1], n_bins))["ece"]
