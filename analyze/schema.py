"""Every result table: its name, columns (polars dtypes), key columns and meaning.

This is the one place the result schema is spelled out. The per-cell analysis builds its
tables through :func:`frame` (so a column not declared here is an error, and columns come
out in this order with these dtypes), the store writes :func:`empty` tables for names it
has no rows for, and readers such as the report take their required columns from
:func:`required`. Adding a table is one :class:`Table` entry in ``TABLES``; the store and
publication code handle any table listed here.

Keys: rows of every table are unique by its ``keys``; ``model``, ``dataset`` (and
``estimator``, ``method``, ``class_index`` where they apply) join the tables.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import polars as pl

S, I32, I64, U64, F, B = pl.String, pl.Int32, pl.Int64, pl.UInt64, pl.Float64, pl.Boolean

# Metrics that carry a standard error and a 95 % interval in summary: <m>_se, _ci_low, _ci_high.
CI_METRICS = (
    "accuracy", "balanced_accuracy", "acc_head", "acc_medium", "acc_tail",
    "acc_many", "acc_medium_shot", "acc_few",
)  # fmt: skip
CI_SUFFIXES = ("_se", "_ci_low", "_ci_high")
GROUP_COLUMNS = {  # summary column -> group label in per_class (group / count_group)
    "acc_head": "head", "acc_medium": "medium", "acc_tail": "tail",
    "acc_many": "many", "acc_medium_shot": "medium", "acc_few": "few",
}  # fmt: skip


@dataclass(frozen=True)
class Column:
    dtype: pl.DataType
    doc: str


@dataclass(frozen=True)
class Table:
    name: str
    doc: str
    columns: dict[str, Column]
    keys: tuple[str, ...]
    required: tuple[str, ...] = ()  # what readers may rely on (the DESIGN.md contract)
    optional: bool = False  # a store may lack it (readers must cope)
    extras: tuple[str, ...] = field(default=())  # reserved for later additions (documentation)

    @property
    def dtypes(self) -> dict[str, pl.DataType]:
        return {k: c.dtype for k, c in self.columns.items()}


def _cols(*specs: tuple[str, pl.DataType, str]) -> dict[str, Column]:
    return {name: Column(dt, doc) for name, dt, doc in specs}


_CELL = (
    ("model", S, "model name (a folder under logits/)"),
    ("dataset", S, "dataset name (a folder under logits/<model>/)"),
)
_EST = (("estimator", S, "π_p estimator whose prior the methods used (the primary one)"),)
_METHOD = (("method", S, "zs, zs_debiased, ft, ft_la, ensemble, gla (and gla_tp, wiseft@α)"),)
_TARGET = (("target_estimator", S, "π_t estimate gla_tp used (em, bbse); empty for other methods"),)


_WILSON, _CLASS_MEAN = "Wilson", "adjusted Wald for a mean of class accuracies"
_SHOT = "adjusted Wald for the per-class mean; Wilson with --shot-accuracy pooled"


def _with_ci(metric: str, doc: str, how: str = _WILSON) -> tuple:
    return (
        (metric, F, doc),
        (f"{metric}_se", F, f"standard error of {metric} (docs/statistics.md)"),
        (f"{metric}_ci_low", F, f"lower end of the 95 % interval of {metric} ({how})"),
        (f"{metric}_ci_high", F, f"upper end of the 95 % interval of {metric}"),
    )


SUMMARY = Table(
    "summary",
    "one row per model × dataset × estimator × method: metrics on the eval split",
    _cols(
        *_CELL, *_EST, *_METHOD, *_TARGET,
        ("split", S, "eval split the metrics are computed on"),
        ("n", I64, "labelled eval samples scored"),
        *_with_ci("accuracy", "top-1 accuracy (pooled over samples)"),
        *_with_ci("balanced_accuracy", "mean of the per-class accuracies (classes with samples)", _CLASS_MEAN),
        ("top5", F, "top-5 accuracy (label among the 5 highest logits; 1 when C ≤ 5)"),
        ("nll", F, "mean negative log-likelihood of softmax(logits)"),
        ("ece", F, "expected calibration error, top-label, equal-width bins"),
        *_with_ci("acc_head", "head-group accuracy (classes by π_p; see docs/conventions.md)"),
        *_with_ci("acc_medium", "medium-group accuracy (classes by π_p)"),
        *_with_ci("acc_tail", "tail-group accuracy (classes by π_p)"),
        *_with_ci("acc_many", "many-shot accuracy (training count > 100)", _SHOT),
        *_with_ci("acc_medium_shot", "medium-shot accuracy (count 20–100)", _SHOT),
        *_with_ci("acc_few", "few-shot accuracy (count < 20)", _SHOT),
    ),
    keys=("model", "dataset", "estimator", "method", "target_estimator"),
    required=("model", "dataset", "estimator", "method", "split", "n", "accuracy",
              "balanced_accuracy", "nll", "ece", "acc_head", "acc_medium", "acc_tail"),
)  # fmt: skip

PER_CLASS = Table(
    "per_class",
    "one row per model × dataset × estimator × method × class",
    _cols(
        *_CELL, *_EST, *_METHOD, *_TARGET,
        ("class_index", I32, "class index (column of the logits)"),
        ("class_name", S, "class name"),
        ("n", I64, "eval samples of the class"),
        ("accuracy", F, "recall of the class (null without samples)"),
        ("precision", F, "precision of the class (null when never predicted)"),
        ("pred_share", F, "fraction of eval samples predicted as the class"),
        ("prior_pretrain", F, "estimated π_p of the class (primary estimator)"),
        ("prior_downstream", F, "π_s of the class (training counts; uniform without)"),
        ("group", S, "head / medium / tail by π_p"),
        ("count_group", S, "many / medium / few by training count (null without counts)"),
        ("baseline", S, "method this one is compared with per class: ft for ft_la, ensemble, gla "
                        "and wiseft@α, zs for zs_debiased and kshot@k; null for zs, ft (and gla_tp)"),
        ("n_better", I64, "samples of the class method gets right and baseline wrong"),
        ("n_worse", I64, "samples of the class method gets wrong and baseline right"),
        ("delta", F, "accuracy(method) − accuracy(baseline) on the class"),
        ("delta_ci_low", F, "lower end of the paired 95 % interval of delta (Bonett–Price)"),
        ("delta_ci_high", F, "upper end of the paired 95 % interval of delta"),
        ("mcnemar_p", F, "exact McNemar two-sided p-value of the class"),
        ("q_value", F, "Benjamini–Hochberg adjusted p over the cell's classes with samples"),
        ("helps", B, "q_value ≤ 0.05 and delta > 0 (null without a test)"),
        ("hurts", B, "q_value ≤ 0.05 and delta < 0 (null without a test)"),
    ),
    keys=("model", "dataset", "estimator", "method", "class_index", "target_estimator"),
    required=("model", "dataset", "method", "class_index", "class_name", "n", "accuracy",
              "prior_pretrain", "prior_downstream", "group"),
)  # fmt: skip

PRIORS = Table(
    "priors",
    "one row per model × dataset × estimator × class: every requested π_p estimate",
    _cols(
        *_CELL,
        ("estimator", S, "π_p estimator"),
        ("class_index", I32, "class index"),
        ("class_name", S, "class name"),
        ("prior", F, "estimated π_p (sums to 1 over the classes)"),
        ("iterations", I64, "solver iterations"),
        ("objective", F, "mean CE of the fit at the solution"),
        ("converged", B, "the solver met its tolerance"),
        ("temperature", F, "temperature the zs logits were divided by"),
        ("message", S, "solver diagnostics (empty when converged)"),
    ),
    keys=("model", "dataset", "estimator", "class_index"),
    required=("model", "dataset", "estimator", "class_index", "class_name", "prior"),
)  # fmt: skip

CALIBRATION = Table(
    "calibration",
    "reliability-diagram bins per method (for the report)",
    _cols(
        *_CELL, *_EST, *_METHOD, *_TARGET,
        ("split", S, "eval split"),
        ("bin", I32, "bin index"),
        ("bin_lo", F, "lower edge of the confidence bin"),
        ("bin_hi", F, "upper edge of the confidence bin"),
        ("count", I64, "samples whose top-label confidence falls in the bin"),
        ("confidence", F, "mean top-label confidence in the bin (null when empty)"),
        ("accuracy", F, "accuracy in the bin (null when empty)"),
    ),
    keys=("model", "dataset", "estimator", "method", "bin", "target_estimator"),
    required=("model", "dataset", "method", "bin", "count", "confidence", "accuracy"),
    optional=True,
)  # fmt: skip

COMPARISONS = Table(
    "comparisons",
    "every method against every other method of the same cell, on the same samples",
    _cols(
        *_CELL, *_EST, *_METHOD,
        ("baseline", S, "the method compared against"),
        ("n", I64, "paired samples"),
        ("n_better", I64, "samples method gets right and baseline wrong"),
        ("n_worse", I64, "samples method gets wrong and baseline right"),
        ("delta", F, "accuracy(method) − accuracy(baseline)"),
        ("delta_ci_low", F, "lower end of the paired 95 % interval of delta (Bonett–Price)"),
        ("delta_ci_high", F, "upper end of the paired 95 % interval of delta"),
        ("mcnemar_p", F, "exact (binomial) McNemar two-sided p-value"),
    ),
    keys=("model", "dataset", "estimator", "method", "baseline"),
    required=("model", "dataset", "estimator", "method", "baseline", "n", "delta",
              "delta_ci_low", "delta_ci_high", "mcnemar_p"),
    optional=True,
)  # fmt: skip

PROVENANCE = Table(
    "provenance",
    "how each number was made: one row per model × dataset × estimator",
    _cols(
        *_CELL,
        ("estimator", S, "π_p estimator"),
        ("fit_split", S, "split the priors were fitted on (<source>/<split> for a shifted set)"),
        ("n_fit", I64, "rows of the fit split"),
        ("eval_split", S, "split the methods were scored on"),
        ("n_eval", I64, "labelled rows scored"),
        ("temperature", F, "temperature the zs logits were divided by (1 = none)"),
        ("temperature_ft", F, "temperature the ft logits were divided by (1 = none, or temperature_scope zs)"),
        ("conventions", S, "groups, shot_accuracy, temperature_scope and fit_label_distribution in force "
         "(docs/conventions.md)"),
        ("smoothing", F, "additive smoothing of the training counts"),
        ("target_prior_source", S, "balanced, or the target-prior file (with its sha256)"),
        ("options_fingerprint", S, "hash of the analysis options that change results"),
        ("code_version", S, "hash of the analysis code"),
        ("model_arch", S, "open_clip architecture (null for imported logits)"),
        ("model_weights", S, "pretrained tag, checkpoint sha256, or none (random init); null for imported logits"),
        ("finetuned_sha256", S, "fine-tuned checkpoint sha256 (null when none)"),
        ("templates_sha256", S, "hash of the prompt templates (null for imported logits)"),
        ("dataset_fingerprint", S, "hash of the input splits' rows and part checksums and of the training counts"),
        ("created_at", S, "ISO-8601 UTC seal time of the newest input split"),
    ),
    keys=("model", "dataset", "estimator"),
    required=("model", "dataset", "estimator", "fit_split", "n_fit", "eval_split", "n_eval"),
    optional=True,
)  # fmt: skip

WARNINGS = Table(
    "warnings",
    "conditions under which a cell's numbers could mislead",
    _cols(
        *_CELL,
        ("code", S, "uniform_train_prior, train_counts_missing_classes, random_init_weights, "
                    "cosine_logits, not_converged, small_group or unlabelled_eval (analyze/caveats.py)"),
        ("message", S, "one line for a person"),
    ),
    keys=("model", "dataset", "code", "message"),
    required=("model", "dataset", "code", "message"),
    optional=True,
)  # fmt: skip

TARGET_PRIORS = Table(
    "target_priors",
    "π_t of the eval split estimated without its labels (whole split, and per window)",
    _cols(
        *_CELL, *_EST,
        ("target_estimator", S, "em (Saerens EM on BCTS-calibrated probabilities) or bbse"),
        ("split", S, "the split whose label distribution is estimated"),
        ("window", S, "time window (null: the whole split)"),
        ("window_index", I32, "order of the window (−1: the whole split)"),
        ("class_index", I32, "class index"),
        ("class_name", S, "class name"),
        ("prior", F, "estimated π_t (sums to 1 per window)"),
        ("label_share", F, "fraction of the labelled rows with this label (null when unlabelled)"),
        ("iterations", I64, "passes over the split"),
        ("converged", B, "the estimator met its tolerance"),
    ),
    keys=("model", "dataset", "estimator", "target_estimator", "window_index", "class_index"),
    required=("model", "dataset", "target_estimator", "window", "class_index", "class_name", "prior"),
    optional=True,
)  # fmt: skip

WINDOW_ACCURACY = Table(
    "window_accuracy",
    "accuracy per time window of the de-biased model and of gla_tp with the tracked π_t",
    _cols(
        *_CELL, *_EST, *_METHOD, *_TARGET,
        ("split", S, "eval split"),
        ("window", S, "time window"),
        ("window_index", I32, "order of the window"),
        ("n", I64, "labelled rows of the window"),
        ("accuracy", F, "top-1 accuracy in the window"),
        ("balanced_accuracy", F, "mean per-class accuracy in the window"),
    ),
    keys=("model", "dataset", "estimator", "method", "target_estimator", "window_index"),
    required=("model", "dataset", "method", "window", "window_index", "accuracy"),
    optional=True,
)  # fmt: skip

LABEL_ISSUES = Table(
    "label_issues",
    "samples whose given label looks wrong: BH flags at level α and confident-learning issues",
    _cols(
        *_CELL, *_EST,
        ("split", S, "audited split"),
        ("sample_id", S, "sample id"),
        ("label", I32, "given label"),
        ("suggested_label", I32, "argmax of the de-biased probabilities"),
        ("score", F, "log-probability of the given label (de-biased model)"),
        ("p_value", F, "conformal p-value against the clean split's scores"),
        ("flagged", B, "rejected by Benjamini–Hochberg at the --fdr level"),
        ("cl_issue", B, "an off-diagonal of the confident joint (confident learning)"),
    ),
    keys=("model", "dataset", "estimator", "split", "sample_id"),
    required=("model", "dataset", "split", "sample_id", "label", "suggested_label", "score",
              "p_value", "flagged"),
    optional=True,
)  # fmt: skip

CLASS_CONFUSIONS = Table(
    "class_confusions",
    "class pairs most often confused in the labels: the confident joint's off-diagonal",
    _cols(
        *_CELL, *_EST,
        ("split", S, "audited split"),
        ("label", I32, "given label"),
        ("label_name", S, "given class name"),
        ("suggested_label", I32, "likely true label (confident learning)"),
        ("suggested_name", S, "likely true class name"),
        ("count", I64, "samples in the confident joint with this (given, likely true) pair"),
        ("n_flagged", I64, "BH-flagged samples with this (given, suggested) pair"),
        ("n_tested", I64, "labelled samples audited in the split"),
    ),
    keys=("model", "dataset", "estimator", "split", "label", "suggested_label"),
    required=("model", "dataset", "split", "label", "suggested_label", "count"),
    optional=True,
)  # fmt: skip

ROBUSTNESS = Table(
    "robustness",
    "distribution shift: one row per shifted set × method, scored with its source cell's priors",
    _cols(
        *_CELL, *_EST, *_METHOD,
        ("split", S, "eval split of the shifted set"),
        ("n", I64, "labelled samples of the shifted set scored"),
        ("accuracy", F, "top-1 accuracy on the shifted set"),
        ("balanced_accuracy", F, "mean per-class accuracy on the shifted set"),
        ("source_dataset", S, "the dataset whose π_p, π_s and temperature were used"),
        ("source_split", S, "eval split of the source"),
        ("source_n", I64, "labelled samples of the source's eval split"),
        ("source_accuracy", F, "the same method's accuracy on the source's eval split"),
        ("source_balanced_accuracy", F, "the same method's balanced accuracy on the source"),
        ("accuracy_drop", F, "source_accuracy − accuracy"),
        ("classes", I64, "classes of the shifted set"),
        ("source_class_count", I64, "classes of the source"),
    ),
    keys=("model", "dataset", "estimator", "method"),
    required=("model", "dataset", "method", "accuracy", "source_dataset", "source_accuracy"),
    optional=True,
)  # fmt: skip

KSHOT = Table(
    "kshot",
    "k-shot sweep: one row per cell × shot count × method, few-shot GLA (temperatures on)",
    _cols(
        *_CELL, *_EST,
        ("shots", I64, "training images per class of the fine-tuned checkpoint (kshot@shots)"),
        ("method", S, "zs, zs_debiased, ft, ft_la, ensemble, gla (ft = the k-shot model)"),
        ("split", S, "eval split"),
        ("n", I64, "labelled eval samples scored"),
        ("accuracy", F, "top-1 accuracy"),
        ("balanced_accuracy", F, "mean per-class accuracy"),
        ("nll", F, "mean negative log-likelihood of softmax of the tempered, adjusted logits"),
        ("temperature_zs", F, "confidence-matched temperature of the zs logits (fit split)"),
        ("temperature_ft", F, "confidence-matched temperature of the k-shot logits (fit split)"),
    ),
    keys=("model", "dataset", "estimator", "shots", "method"),
    required=("model", "dataset", "shots", "method", "accuracy"),
    optional=True,
)  # fmt: skip

PREDICTIONS = Table(
    "predictions",
    "per eval sample × estimator × method: what it predicted (pairs two runs for gla diff)",
    _cols(
        *_CELL, *_EST, *_METHOD,
        ("sample_hash", U64, "blake2b-64 of the sample id (stable across runs and versions)"),
        ("label", I32, "true class"),
        ("pred", I32, "predicted class (correct when equal to label)"),
    ),
    keys=("model", "dataset", "estimator", "method", "sample_hash"),
    required=("model", "dataset", "estimator", "method", "sample_hash", "label", "pred"),
    optional=True,
)  # fmt: skip

TABLES: dict[str, Table] = {
    t.name: t
    for t in (SUMMARY, PER_CLASS, PRIORS, CALIBRATION, COMPARISONS, PROVENANCE, WARNINGS, PREDICTIONS,
              ROBUSTNESS, KSHOT, TARGET_PRIORS, WINDOW_ACCURACY, LABEL_ISSUES, CLASS_CONFUSIONS)
}
# The tables every published result must contain (DESIGN.md's contract).
CONTRACT = tuple(n for n, t in TABLES.items() if not t.optional)


def table(name: str) -> Table:
    try:
        return TABLES[name]
    except KeyError:
        raise KeyError(f"unknown result table {name!r}; known: {', '.join(TABLES)}") from None


def columns(name: str) -> tuple[str, ...]:
    return tuple(table(name).columns)


def keys(name: str) -> tuple[str, ...]:
    return table(name).keys


def required(name: str) -> tuple[str, ...]:
    return table(name).required


def empty(name: str) -> pl.DataFrame:
    """The table with no rows (its full schema)."""
    return pl.DataFrame(schema=table(name).dtypes)


def conform(name: str, df: pl.DataFrame) -> pl.DataFrame:
    """``df`` in the table's column order and dtypes; undeclared columns are an error,
    missing ones are added as nulls, NaN in float columns becomes null (undefined)."""
    t = table(name)
    extra = [c for c in df.columns if c not in t.columns]
    if extra:
        raise ValueError(f"table {name!r}: column {extra[0]!r} is not in analyze/schema.py")
    out = df.select(
        pl.col(c).cast(dt) if c in df.columns else pl.lit(None, dtype=dt).alias(c)
        for c, dt in t.dtypes.items()
    )
    return out.with_columns(pl.col(pl.Float64).fill_nan(None))


def frame(name: str, data: Mapping | list[dict]) -> pl.DataFrame:
    """Build a table from columns (a mapping) or rows (a list of dicts)."""
    if isinstance(data, list):
        if not data:
            return empty(name)
        df = pl.DataFrame(data, infer_schema_length=None, nan_to_null=True)
    else:
        df = pl.DataFrame(dict(data), nan_to_null=True)
    return conform(name, df)


def concat(name: str, frames: list[pl.DataFrame]) -> pl.DataFrame:
    frames = [f for f in frames if f is not None and f.height]
    return conform(name, pl.concat(frames, how="diagonal_relaxed")) if frames else empty(name)


def check(tables: Mapping[str, pl.DataFrame]) -> None:
    """Every name is a known table and every frame has its schema (a contract test's check)."""
    for name, df in tables.items():
        t = table(name)
        if dict(df.schema) != t.dtypes:
            raise ValueError(f"table {name!r} does not match analyze/schema.py: {dict(df.schema)}")
