"""The audits beyond the paper for one cell: target prior π_t (and its tracking over time
windows) and label issues, from the same cached logits. Arrays and part iterators in,
``analyze.schema`` tables out; no I/O.

Both audits run on the de-biased model (gla, or zs_debiased without ft logits) with the
cell's fitted π_p and π_s. Parts are given as zero-argument callables that yield the split's
parts afresh on every call, so an estimator that needs several passes (EM) re-reads them
and memory stays bounded by one part.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
from gla.analyze import adjust, noise, schema, shift, stats
from gla.analyze.cell import AnalysisOptions, FittedPriors, build_tables

Parts = Callable[[], Iterable[tuple]]  # () -> iterator of (zs, ft | None, labels, windows | None)
# keep(make) -> a re-iterable over what make() yields (kept in memory, on disk, or remade)
Keep = Callable[[Callable[[], Iterable]], Callable[[], Iterable]]
# refit(zs, ft | None, labels) -> the cell's priors fitted on those fit-split rows alone
Refit = Callable[[np.ndarray, np.ndarray | None, np.ndarray], FittedPriors]


@dataclass(frozen=True)
class AuditOptions:
    target_estimators: tuple[str, ...] = ()  # em, bbse
    window_memory: float = 0.0  # EM pseudo-counts borrowed from the previous window's estimate
    bbse_ridge: float = 0.0  # ridge toward uniform in the BBSE least squares
    label_issues: bool = False
    fdr: float = 0.1  # Benjamini–Hochberg level α

    def __post_init__(self):
        for t in self.target_estimators:
            if t not in shift.TARGET_ESTIMATORS:
                raise ValueError(f"unknown target estimator {t!r}; choose from {', '.join(shift.TARGET_ESTIMATORS)}")
        if not 0 < self.fdr < 1:
            raise ValueError(f"fdr must be in (0, 1), got {self.fdr}")
        if self.window_memory < 0 or self.bbse_ridge < 0:
            raise ValueError("window_memory and bbse_ridge must be ≥ 0")


def debiased(zs, ft, fitted: FittedPriors) -> np.ndarray:
    """The de-biased model's logits for a balanced target: gla, or zs_debiased without ft."""
    z = np.asarray(zs, dtype=np.float32)
    if fitted.temperature != 1.0:
        z = z * np.float32(1.0 / fitted.temperature)
    if ft is None:
        return adjust.zs_debiased(z, fitted.pi_p)
    if fitted.ft_temperature != 1.0:
        ft = np.asarray(ft, dtype=np.float32) * np.float32(1.0 / fitted.ft_temperature)
    return adjust.gla(z, ft, fitted.pi_s, fitted.pi_p)


def debiased_method(has_ft: bool) -> str:
    return "gla" if has_ft else "zs_debiased"


# ----------------------------------------------------------------------- target prior


@dataclass
class TargetResult:
    whole: dict[str, shift.TargetEstimate]  # per target estimator: (1, C)
    windows: dict[str, shift.TargetEstimate]  # per target estimator: (W, C), empty without windows
    calibration: shift.Calibration | None


def in_memory(make: Callable[[], Iterable]) -> Callable[[], Iterable]:
    """Keep what ``make()`` yields in a list: the default ``keep`` of ``estimate_targets``."""
    cache = list(make())
    return lambda: iter(cache)


def estimate_targets(fit: tuple, parts: Parts, fitted: FittedPriors, options: AuditOptions,
                     n_windows: int = 0, keep: Keep = in_memory) -> TargetResult:
    """π_t of the eval split (whole, and per window when ``n_windows`` > 0).

    ``fit`` = (zs, ft | None, labels) of the labelled fit split: BCTS for EM and the
    confusion matrix for BBSE are fitted there, on the same de-biased logits. EM computes
    the eval split's calibrated posteriors once, in one pass over ``parts``, and hands them
    to ``keep``, which returns a re-iterable over them for the EM passes (a caller with a
    split larger than memory keeps them on disk; one that cannot may return ``make``).
    """
    zs_f, ft_f, y_f = fit
    g_fit = debiased(zs_f, ft_f, fitted)
    C = g_fit.shape[1]
    whole, per_window, cal = {}, {}, None
    if "em" in options.target_estimators:
        cal = shift.fit_bcts(g_fit, y_f, C)
        posteriors = keep(lambda: ((shift.source_posteriors(cal(debiased(zs, ft, fitted))), t)
                                   for zs, ft, _, t in parts()))

        def reducer(windowed: bool):
            W = n_windows if windowed else 1

            def reduce(log_w):
                total = shift.EMStats.empty(W, C)
                for post, t in posteriors():
                    total = total.merge(shift.em_part(post, log_w, t if windowed else None))
                return total
            return reduce

        whole["em"] = shift.estimate_em(reducer(False), cal.source_prior)
        if n_windows:
            per_window["em"] = shift.estimate_em(reducer(True), cal.source_prior, n_windows,
                                                 memory=options.window_memory)
    if "bbse" in options.target_estimators:
        M = shift.confusion_conditional(g_fit.argmax(axis=1), y_f, C)
        W = max(n_windows, 1)
        counts = np.zeros((W, C))
        for zs, ft, _, t in parts():
            counts += shift.prediction_counts(debiased(zs, ft, fitted), t if n_windows else None, W)
        whole["bbse"] = shift.estimate_bbse(M, counts.sum(axis=0), options.bbse_ridge)
        if n_windows:
            per_window["bbse"] = _causal_bbse(M, counts, options)
    return TargetResult(whole, per_window, cal)


def _causal_bbse(M, counts, options: AuditOptions) -> shift.TargetEstimate:
    """Per-window BBSE; with window_memory κ the counts of window t are those of t plus κ
    rows at the previous window's predicted shares (so it too uses only windows ≤ t)."""
    rows, prev = [], None
    conv = True
    for c in counts:
        cc = c if prev is None or options.window_memory == 0 else c + options.window_memory * prev
        est = shift.estimate_bbse(M, cc, options.bbse_ridge)
        rows.append(est.prior[0])
        conv = conv and est.converged
        prev = cc / max(cc.sum(), 1.0)
    return shift.TargetEstimate(np.vstack(rows), "bbse", 1, conv)


def score_targets(parts: Parts, fitted: FittedPriors, result: TargetResult, n_windows: int = 0):
    """Tallies of gla_tp per target estimator (whole split), and per window of the de-biased
    model and of gla_tp with the tracked prior. Rows with label −1 are skipped."""
    C = fitted.pi_p.shape[0]
    whole = {e: stats.Tally.empty(C) for e in result.whole}
    win: dict[tuple[str, str, int], stats.Tally] = {}
    for zs, ft, y, t in parts():
        y = np.asarray(y)
        keep = y >= 0
        if not keep.any():
            continue
        g = debiased(np.asarray(zs)[keep], None if ft is None else np.asarray(ft)[keep], fitted)
        yk = y[keep]
        for e, est in result.whole.items():
            whole[e] = whole[e].merge(stats.tally(g + np.log(est.prior[0]).astype(g.dtype), yk, C))
        if not n_windows:
            continue
        tk = np.asarray(t)[keep]
        base = debiased_method(ft is not None)
        for w in np.unique(tk):
            sel = tk == w
            key = (base, "", int(w))
            win[key] = win.get(key, stats.Tally.empty(C)).merge(stats.tally(g[sel], yk[sel], C))
            for e, est in result.windows.items():
                key = ("gla_tp", e, int(w))
                lp = np.log(est.prior[w]).astype(g.dtype)
                win[key] = win.get(key, stats.Tally.empty(C)).merge(stats.tally(g[sel] + lp, yk[sel], C))
    return whole, win


def label_shares(whole_tallies: dict, window_tallies: dict, C: int, n_windows: int = 0):
    """(C,) and (W, C) label fractions of the labelled rows, read off the tallies of
    ``score_targets`` (their class supports); NaN where no row is labelled."""
    whole = next(iter(whole_tallies.values()), stats.Tally.empty(C)).support.astype(np.float64)
    per_window = np.zeros((max(n_windows, 1), C))
    if n_windows:
        for (_, e, w), t in window_tallies.items():
            if not e:  # the de-biased model's own tally of window w
                per_window[w] = t.support
    else:
        per_window[0] = whole
    with np.errstate(invalid="ignore", divide="ignore"):
        return whole / whole.sum(), per_window / per_window.sum(axis=1, keepdims=True)


def target_tables(model: str, dataset: str, split: str, class_names: Sequence[str],
                  fitted: FittedPriors, result: TargetResult, whole_tallies: dict,
                  window_tallies: dict, window_names: Sequence[str], shares,
                  groups: str = "released") -> dict[str, pl.DataFrame]:
    """summary/per_class/calibration rows of gla_tp, target_priors and window_accuracy
    (``groups``: the head/medium/tail convention, as in the cell's other rows)."""
    names = [str(c) for c in class_names]
    out: dict[str, list[pl.DataFrame]] = {"summary": [], "per_class": [], "calibration": []}
    for e, t in whole_tallies.items():
        if t.n == 0:  # an unlabelled split: π_t is estimated, gla_tp cannot be scored
            continue
        tabs = build_tables(model, dataset, split, names, fitted, {"gla_tp": t},
                            options=AnalysisOptions(groups=groups))
        for k in out:
            out[k].append(tabs[k].with_columns(pl.lit(e).alias("target_estimator")))
    tables = {k: schema.concat(k, v) for k, v in out.items()}
    share_all, share_win = shares
    rows = []
    for e, est in result.whole.items():
        rows.append(_prior_rows(model, dataset, fitted.primary, e, split, None, -1, names,
                                est, est.prior[0], share_all))
    for e, est in result.windows.items():
        for w, wname in enumerate(window_names):
            rows.append(_prior_rows(model, dataset, fitted.primary, e, split, wname, w, names,
                                    est, est.prior[w], share_win[w]))
    tables["target_priors"] = schema.concat("target_priors", rows)
    acc = []
    for (method, e, w), t in sorted(window_tallies.items(), key=lambda kv: (kv[0][2], kv[0][0], kv[0][1])):
        m = stats.summary_metrics(t)
        acc.append({"model": model, "dataset": dataset, "estimator": fitted.primary, "method": method,
                    "target_estimator": e, "split": split, "window": window_names[w],
                    "window_index": w, "n": m["n"], "accuracy": m["accuracy"],
                    "balanced_accuracy": m["balanced_accuracy"]})
    tables["window_accuracy"] = schema.frame("window_accuracy", acc)
    return tables


def _prior_rows(model, dataset, estimator, target_estimator, split, window, index, names, est,
                prior, share) -> pl.DataFrame:
    C = len(names)
    return schema.frame("target_priors", {
        "model": [model] * C, "dataset": [dataset] * C, "estimator": [estimator] * C,
        "target_estimator": [target_estimator] * C, "split": [split] * C,
        "window": pl.Series([window] * C, dtype=pl.String), "window_index": [index] * C,
        "class_index": np.arange(C, dtype=np.int32), "class_name": names,
        "prior": np.asarray(prior, dtype=np.float64), "label_share": np.asarray(share, dtype=np.float64),
        "iterations": [est.iterations] * C, "converged": [est.converged] * C,
    })  # fmt: skip


# ----------------------------------------------------------------------- label issues


def crossfit_folds(labels, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Fold of each row, stratified by label so that every class stays in every fold's
    complement; −1 for a row whose class has one sample (it cannot be left out)."""
    y = np.asarray(labels)
    fold = np.full(y.size, -1, dtype=np.int64)
    rng = np.random.default_rng(seed)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        if idx.size >= 2:
            fold[rng.permutation(idx)] = np.arange(idx.size) % folds
    return fold


def clean_scores(fit: tuple, fitted: FittedPriors, refit: Refit | None = None, folds: int = 5) -> np.ndarray:
    """Scores (log-probability of the given label) of the clean labelled split.

    When the clean split is the fit split, its own scores are optimistic: π_p and the
    temperatures were fitted on those very rows, so an audited row that is labelled
    correctly would look worse than the reference, and the flags' FDR would exceed α.
    With ``refit`` (fit split rows → FittedPriors), each row is scored instead with the
    priors fitted on the other folds (K-fold cross-fitting). Those priors come from fewer
    rows than the audit's, which errs on the conservative side.
    """
    zs, ft, y = fit
    scores = noise.label_scores(debiased(zs, ft, fitted), y)
    if refit is None:
        return scores
    fold = crossfit_folds(y, folds)
    for k in range(folds):
        out = fold == k
        if out.any():
            fk = refit(zs[~out], None if ft is None else ft[~out], y[~out])
            scores[out] = noise.label_scores(debiased(zs[out], None if ft is None else ft[out], fk), y[out])
    return scores


def audit_split(parts: Parts, fitted: FittedPriors, clean: np.ndarray, alpha: float) -> noise.LabelAudit:
    C = fitted.pi_p.shape[0]

    def scored():
        for zs, ft, y, _ in parts():
            yield debiased(zs, ft, fitted), y

    return noise.audit_labels(scored, clean, C, alpha)


def label_tables(model: str, dataset: str, estimator: str, split: str, class_names: Sequence[str],
                 audit: noise.LabelAudit, sample_ids: Sequence[str], max_pairs: int = 1000) -> dict[str, pl.DataFrame]:
    """label_issues (one row per flagged or CL-issue sample) and class_confusions."""
    r = audit.rows
    n = len(r["index"])
    issues = schema.frame("label_issues", {
        "model": [model] * n, "dataset": [dataset] * n, "estimator": [estimator] * n,
        "split": [split] * n, "sample_id": [str(s) for s in sample_ids],
        "label": r["label"].astype(np.int32), "suggested_label": r["suggested_label"].astype(np.int32),
        "score": r["score"].astype(np.float64), "p_value": r["p_value"].astype(np.float64),
        "flagged": r["flagged"].astype(bool), "cl_issue": r["cl_issue"].astype(bool),
    })  # fmt: skip
    names = [str(c) for c in class_names]
    flagged_pairs = {}
    for a, b in zip(r["label"][r["flagged"].astype(bool)], r["suggested_label"][r["flagged"].astype(bool)], strict=True):
        flagged_pairs[(int(a), int(b))] = flagged_pairs.get((int(a), int(b)), 0) + 1
    pairs = noise.top_confusions(audit.confident_joint, max_pairs)
    conf = schema.frame("class_confusions", {
        "model": [model] * len(pairs), "dataset": [dataset] * len(pairs),
        "estimator": [estimator] * len(pairs), "split": [split] * len(pairs),
        "label": np.array([p[0] for p in pairs], dtype=np.int32),
        "label_name": [names[p[0]] for p in pairs],
        "suggested_label": np.array([p[1] for p in pairs], dtype=np.int32),
        "suggested_name": [names[p[1]] for p in pairs],
        "count": np.array([p[2] for p in pairs], dtype=np.int64),
        "n_flagged": np.array([flagged_pairs.get((p[0], p[1]), 0) for p in pairs], dtype=np.int64),
        "n_tested": [audit.n_tested] * len(pairs),
    })  # fmt: skip
    return {"label_issues": issues, "class_confusions": conf}
