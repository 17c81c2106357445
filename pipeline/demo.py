"""The embedded default: its config, and the checks that only a planted world allows.

The demo's tiny CLIP was pretrained on chosen class frequencies (written next to its
checkpoint), so the estimated π_p can be judged against the truth — something the
paper could not check on web data. Everything shown is read from the result tables.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
from gla.analyze.adjust import METHODS
from gla.extract.demo.kshot import build_kshot_heads
from gla.pipeline.config import Config, SplitSpec, load_config

CONFIG = Path(__file__).resolve().parent / "demo.toml"
ASSETS = Path(__file__).resolve().parent.parent / "extract" / "demo" / "assets"


def demo_config(store: str | Path, *, limit_per_class: int | None = None, workers: int | None = None) -> Config:
    """The packaged demo config with the store (and optionally a smaller world) chosen."""
    config = load_config(CONFIG, {"store": str(Path(store).resolve())})
    if workers is not None:
        config.compute.workers = workers
    if limit_per_class is not None:
        for d in config.datasets:
            d.limit_per_class = limit_per_class
            if d.evaluate_with and "test" in d.splits:  # a fixed count may exceed the smaller pool
                d.splits["test"] = SplitSpec(rest=True)
    return config


def true_frequencies(assets: Path = ASSETS) -> pl.DataFrame:
    """dataset, class_name, true_count: the pretraining label frequencies of the tiny CLIP."""
    doc = json.loads((assets / "pretrain_frequencies.json").read_text())
    return pl.DataFrame(
        [
            {"dataset": ds, "class_name": name, "true_count": v["count"]}
            for ds, classes in doc.items()
            for name, v in classes.items()
        ]
    )


def accuracy_table(results: Path) -> pl.DataFrame:
    """method × dataset accuracy on the eval split (rows in the DESIGN's method order)."""
    s = pl.read_parquet(results / "summary.parquet").filter(pl.col("method") != "gla_tp")  # other split
    wide = s.pivot(on="dataset", index="method", values="accuracy", aggregate_function="first")
    return wide.join(_method_order(), on="method", how="left").sort("_o", "method", nulls_last=True).drop("_o")


def prior_agreement(results: Path, truth: pl.DataFrame) -> pl.DataFrame:
    """Spearman correlation of each estimator's π_p with the true pretraining frequency."""
    p = pl.read_parquet(results / "priors.parquet").join(truth, on=["dataset", "class_name"])
    return (
        p.group_by("model", "dataset", "estimator")
        .agg(spearman=pl.corr("prior", "true_count", method="spearman"), classes=pl.len())
        .sort("model", "dataset", "estimator")
    )


def group_gains(results: Path) -> pl.DataFrame:
    """Head / medium / tail accuracy (C//3, C//3 and the rest by estimated π_p) of zs and ft against gla."""
    s = pl.read_parquet(results / "summary.parquet").filter(pl.col("method").is_in(["zs", "ft", "gla"]))
    return s.select("dataset", "method", "acc_head", "acc_medium", "acc_tail").sort("dataset", "method")


def robustness(results: Path) -> pl.DataFrame:
    """Accuracy on each shifted set (source priors) beside the source's, per method."""
    path = results / "robustness.parquet"
    if not path.exists():
        return pl.DataFrame()
    r = pl.read_parquet(path)
    if r.is_empty():
        return r
    wide = r.pivot(on="dataset", index="method", values="accuracy", aggregate_function="first")
    src = r.select("method", "source_dataset", "source_accuracy").unique().pivot(
        on="source_dataset", index="method", values="source_accuracy", aggregate_function="first")
    return src.join(wide, on="method").join(_method_order(), on="method", how="left").sort(
        "_o", "method", nulls_last=True).drop("_o")


def _method_order() -> pl.DataFrame:
    return pl.DataFrame({"method": list(METHODS), "_o": range(len(METHODS))})


def kshot_config(store: str | Path, *, limit_per_class: int | None = None, workers: int | None = None) -> Config:
    """The k-shot sweep of ``gla demo --kshot``: the two downstream datasets, with k-shot
    heads (k = 1, 2, 4, 8, 16) built deterministically into ``<store>/kshot-heads``."""
    config = demo_config(store, limit_per_class=limit_per_class, workers=workers)
    keep = [d for d in config.datasets if not d.evaluate_with]
    heads = build_kshot_heads(Path(config.store) / "kshot-heads")
    for m in config.models:
        m.wiseft_alphas = []
        m.finetuned = {d.name: m.finetuned[d.name] for d in keep if d.name in m.finetuned}
        m.kshot = {d.name: dict(heads[d.name]) for d in keep}
    config.datasets = keep
    return config


def kshot_curves(results: Path) -> pl.DataFrame:
    """dataset, method and accuracy at each shot count (one column per k)."""
    path = results / "kshot.parquet"
    if not path.exists():
        return pl.DataFrame()
    k = pl.read_parquet(path)
    if k.is_empty():
        return k
    wide = k.sort("shots").pivot(on="shots", index=["dataset", "method"], values="accuracy",
                                 aggregate_function="first")
    wide = wide.rename({c: f"k={c}" for c in wide.columns if c not in ("dataset", "method")})
    return wide.join(_method_order(), on="method", how="left").sort("dataset", "_o").drop("_o")
