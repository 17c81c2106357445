"""Label issues: which given labels look wrong, from de-biased probabilities.

Two views, both from the same per-sample probabilities (gla, or zs_debiased without ft):

- **FDR-controlled flags** (in the spirit of BHN, ICML 2023). A sample's score is the
  log-probability of its given label. Its conformal p-value is its rank among the scores
  of a clean labelled split (the fit split by default): ``p = (1 + #{clean ≤ s}) / (n + 1)``.
  Correctly labelled samples exchangeable with the clean split have super-uniform p-values,
  so Benjamini–Hochberg at level α controls the false discovery rate of the flags.
- **Confident learning** (Northcutt et al. 2021) with per-class thresholds
  ``t_j = mean p_j over samples labelled j``: the confident joint counts (given, likely true)
  label pairs; its off-diagonal is the estimated number of issues and gives the class pairs
  most often confused.

Map-reduce: p-values take one of n + 1 values, so the counts per value are a sufficient
statistic for the BH threshold; CL thresholds are per-class sums. ``audit_labels`` runs two
passes over parts (thresholds and p-value counts, then the confident joint and the flagged
rows) and keeps only candidate rows in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from gla.analyze.priors import check_labels


def log_softmax(logits) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    m = z.max(axis=1, keepdims=True)
    return z - (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))


def label_scores(logits, labels) -> np.ndarray:
    """log softmax(logits)[label]: the negative cross-entropy of each given label."""
    lp = log_softmax(logits)
    y = check_labels(labels, lp.shape[0], lp.shape[1], "labels")
    return lp[np.arange(lp.shape[0]), y]


def conformal_pvalues(scores, clean_scores) -> np.ndarray:
    """p_i = (1 + #{clean scores ≤ s_i}) / (n_clean + 1): small when s_i is unusually low."""
    ref = np.sort(np.asarray(clean_scores, dtype=np.float64))
    if ref.size == 0:
        raise ValueError("label issues: the clean split has no labelled rows")
    ranks = np.searchsorted(ref, np.asarray(scores, dtype=np.float64), side="right")
    return (1.0 + ranks) / (ref.size + 1.0)


def pvalue_level_counts(pvalues, n_clean: int) -> np.ndarray:
    """(n_clean + 1,) counts of p-values at each level k/(n_clean + 1), k = 1..n_clean + 1."""
    k = np.rint(np.asarray(pvalues) * (n_clean + 1)).astype(np.int64) - 1
    return np.bincount(k, minlength=n_clean + 1)


def bh_threshold(level_counts: np.ndarray, alpha: float) -> float:
    """Benjamini–Hochberg cut-off from p-value level counts: flag p ≤ the returned value.

    With levels v_k = k/(n+1) and R(v) = #{p ≤ v}, BH rejects every p ≤ v* where v* is the
    largest level with v ≤ α R(v)/m (0 when there is none).
    """
    counts = np.asarray(level_counts, dtype=np.int64)
    m = int(counts.sum())
    if m == 0:
        return 0.0
    levels = np.arange(1, counts.size + 1) / counts.size
    ok = np.flatnonzero((counts > 0) & (levels <= alpha * np.cumsum(counts) / m))
    return float(levels[ok[-1]]) if ok.size else 0.0


def bh_reject(pvalues, alpha: float) -> np.ndarray:
    """Plain BH on an array of p-values (the reference form, for any p-values)."""
    p = np.asarray(pvalues, dtype=np.float64)
    m = p.size
    order = np.sort(p)
    ok = np.flatnonzero(order <= alpha * np.arange(1, m + 1) / m)
    return p <= order[ok[-1]] if ok.size else np.zeros(m, dtype=bool)


# ------------------------------------------------------------------- confident learning


def softmax(logits) -> np.ndarray:
    return np.exp(log_softmax(logits))


def class_threshold_stats(probs, labels, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class (Σ p_j over rows labelled j, count): the parts of t_j, which add up."""
    p = np.asarray(probs)
    y = np.asarray(labels, dtype=np.int64)
    return (np.bincount(y, weights=p[np.arange(y.size), y], minlength=num_classes),
            np.bincount(y, minlength=num_classes).astype(np.float64))


def confident_guess(probs, thresholds) -> tuple[np.ndarray, np.ndarray]:
    """(likely true label, has a confident class) per row, as cleanlab's confident joint.

    Classes with p_j ≥ t_j are confident; with several, the argmax of p; with one, that one.
    """
    p = np.asarray(probs)
    confident = p >= np.asarray(thresholds)[None, :] - 1e-6
    k = confident.sum(axis=1)
    guess = np.where(k > 1, p.argmax(axis=1), confident.argmax(axis=1))
    return guess, k > 0


def confident_joint_part(probs, labels, thresholds) -> tuple[np.ndarray, np.ndarray]:
    """(C, C) counts [given, likely true] of one part and its CL issue mask.

    An issue is a row whose confident guess differs from its label and whose argmax also
    differs from it (cleanlab's find_label_issues drops rows the model predicts as labelled).
    """
    p = np.asarray(probs)
    C = p.shape[1]
    y = np.asarray(labels, dtype=np.int64)
    guess, has = confident_guess(p, thresholds)
    joint = np.bincount(y[has] * C + guess[has], minlength=C * C).reshape(C, C)
    issue = has & (guess != y) & (p.argmax(axis=1) != y)
    return joint, issue


# ----------------------------------------------------------------------- the two passes


@dataclass
class LabelAudit:
    """Result of ``audit_labels``: candidate rows and the class-level counts."""

    rows: dict[str, np.ndarray]  # index, label, suggested_label, score, p_value, flagged, cl_issue
    confident_joint: np.ndarray  # (C, C) [given, likely true]
    threshold: float  # the BH cut-off on p-values
    thresholds: np.ndarray  # (C,) confident-learning thresholds
    n_tested: int
    n_flagged: int
    n_cl_issues: int


def audit_labels(
    parts: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]],
    clean_scores,
    num_classes: int,
    alpha: float = 0.1,
) -> LabelAudit:
    """Flag label issues over parts of (de-biased logits, labels), in two passes.

    ``parts()`` yields the audited split's parts afresh each time it is called (rows with
    label −1 are skipped). ``index`` in the returned rows counts rows over all parts.
    Only rows with p ≤ α (a superset of BH's flags) or a CL issue are kept in memory.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"--fdr must be in (0, 1), got {alpha}")
    C = int(num_classes)
    ref = np.sort(np.asarray(clean_scores, dtype=np.float64))
    n_clean = ref.size
    levels = np.zeros(n_clean + 1, dtype=np.int64)
    tsum, tcnt = np.zeros(C), np.zeros(C)
    for z, y in parts():
        keep = np.asarray(y) >= 0
        if not keep.any():
            continue
        p, yk = softmax(np.asarray(z)[keep]), np.asarray(y)[keep]
        s, c = class_threshold_stats(p, yk, C)
        tsum, tcnt = tsum + s, tcnt + c
        levels += pvalue_level_counts(conformal_pvalues(np.log(p[np.arange(yk.size), yk]), ref), n_clean)
    thresholds = np.divide(tsum, tcnt, out=np.full(C, np.inf), where=tcnt > 0)
    cut = bh_threshold(levels, alpha)
    joint = np.zeros((C, C), dtype=np.int64)
    kept: dict[str, list] = {k: [] for k in ("index", "label", "suggested_label", "score", "p_value",
                                             "flagged", "cl_issue")}
    offset = 0
    for z, y in parts():
        y = np.asarray(y, dtype=np.int64)
        idx = np.flatnonzero(y >= 0)
        if idx.size:
            z, yk = np.asarray(z)[idx], y[idx]
            lp = log_softmax(z)
            score = lp[np.arange(yk.size), yk]
            pv = conformal_pvalues(score, ref)
            j, issue = confident_joint_part(np.exp(lp), yk, thresholds)
            joint += j
            sel = (pv <= alpha) | issue
            for k, v in (("index", idx + offset), ("label", yk), ("suggested_label", lp.argmax(axis=1)),
                         ("score", score), ("p_value", pv), ("flagged", pv <= cut), ("cl_issue", issue)):
                kept[k].append(v[sel])
        offset += y.size
    rows = {k: np.concatenate(v) if v else np.zeros(0) for k, v in kept.items()}
    either = rows["flagged"].astype(bool) | rows["cl_issue"].astype(bool)
    rows = {k: v[either] for k, v in rows.items()}
    return LabelAudit(rows, joint, cut, thresholds, int(levels.sum()), int(rows["flagged"].sum()),
                      int(rows["cl_issue"].sum()))


def top_confusions(joint: np.ndarray, k: int = 50) -> list[tuple[int, int, int]]:
    """The k largest off-diagonal entries (given, likely true, count) with count > 0."""
    J = np.array(joint, dtype=np.int64)
    np.fill_diagonal(J, 0)
    flat = np.argsort(-J, axis=None, kind="stable")[:k]
    return [(int(i // J.shape[1]), int(i % J.shape[1]), int(J.flat[i])) for i in flat if J.flat[i] > 0]
