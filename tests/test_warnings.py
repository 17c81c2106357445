"""Warnings on planted cells: each condition raises its code, and a clean cell gets none."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from fixtures_tiny_clip import tiny_clip_fixture  # noqa: F401
from gla.analyze import caveats
from gla.analyze.cell import AnalysisOptions, build_tables, evaluate, fit_priors
from gla.analyze.synthetic import planted_world, zipf_prior
from gla.extract import cellformat as cf
from gla.pipeline.cell_analysis import StoreAnalysisOptions, analyze_cell
from gla.pipeline.errors import UserError
from gla.pipeline.store import Store

SYNTHETIC_MODEL = {"name": "m", "arch": "synthetic"}


def _cell(store, *, classes=30, fit_per_class=10, eval_per_class=100, counts=None, ft=True,
          zs_scale=1.0, model=SYNTHETIC_MODEL, dataset="d", seed=0):
    """A planted cell: val (balanced) and test splits, optional training counts."""
    pi_p = zipf_prior(classes, seed=seed)
    names = [f"c{i}" for i in range(classes)]
    meta = {"class_names": names, "model": model, "dataset": {"name": dataset}}
    cell = cf.cell_dir(store, "m", dataset)
    cell.mkdir(parents=True, exist_ok=True)
    for k, (split, per) in enumerate((("val", fit_per_class), ("test", eval_per_class))):
        w = planted_world(classes, per, pi_p, seed=seed + k, ft_signal=3.0 if ft else None)
        ids = [f"{split}-{i}" for i in range(len(w.labels))]
        t = cf.build_table(ids, split, w.labels, w.zs * zs_scale, w.ft, metadata=meta)
        cf.write_split(cell, split, [t])
    if counts is not None:
        Store(store).write_class_counts(dataset, np.asarray(counts), names)
    return store


def _codes(store, dataset="d", **options) -> list[str]:
    w = analyze_cell(store, "m", dataset, StoreAnalysisOptions(**options)).tables["warnings"]
    assert w.columns == ["model", "dataset", "code", "message"]
    assert set(w["code"]) <= set(caveats.CODES)
    return sorted(w["code"].to_list())


MANY = np.full(30, 500)  # every class many-shot: one shot group of 30 classes


def test_clean_cell_has_no_warnings(tmp_path):
    assert _codes(_cell(tmp_path, counts=MANY)) == []


def test_missing_counts_with_ft_warn_uniform_train_prior(tmp_path):
    assert _codes(_cell(tmp_path, counts=None)) == ["uniform_train_prior"]
    # without ft no method uses π_s: nothing to warn about
    assert _codes(_cell(tmp_path, counts=None, ft=False, dataset="e"), dataset="e") == []


def test_counts_missing_classes_warn_only_with_smoothing(tmp_path):
    counts = MANY.copy()
    counts[[3, 7, 11, 15, 19]] = 0  # five: their few-shot group is not itself too small
    store = _cell(tmp_path, counts=counts)
    with pytest.raises(UserError, match="count is 0 for class 3"):
        analyze_cell(store, "m", "d")
    w = analyze_cell(store, "m", "d", StoreAnalysisOptions(smoothing=1.0)).tables["warnings"]
    assert w["code"].to_list() == ["train_counts_missing_classes"]
    assert "5 of 30 classes" in w["message"][0] and "('c3', 'c7', 'c11' …)" in w["message"][0]


def test_cosine_range_logits_warn(tmp_path):
    # the planted zs divided by its max |zs|: every value within [-1, 1], as cosines are
    w = planted_world(30, 100, zipf_prior(30), seed=1)
    scale = 1.0 / float(np.abs(w.zs).max()) / 1.01
    assert _codes(_cell(tmp_path, counts=MANY, zs_scale=scale)) == ["cosine_logits"]
    # the same logits times a CLIP-like logit scale of 100: no warning
    assert _codes(_cell(tmp_path, counts=MANY, zs_scale=100 * scale, dataset="e"), dataset="e") == []


def test_random_init_identity_warns(tmp_path):
    model = {"name": "m", "arch": "ViT-B-32", "pretrained": "random-init"}  # what extract records for "none"
    assert _codes(_cell(tmp_path, counts=MANY, model=model)) == ["random_init_weights"]
    tagged = {"name": "m", "arch": "ViT-B-32", "pretrained": "openai"}
    assert _codes(_cell(tmp_path, counts=MANY, model=tagged, dataset="e"), dataset="e") == []


def test_extracted_random_init_model_warns(tiny_clip, tmp_path):
    from gla.extract.run import extract_cell

    tc = tiny_clip
    ds = {"name": "imgs", "kind": "imagefolder", "root": str(tc.images),
          "splits": {"val": {"per_class": 2}, "test": {"rest": True}}}
    extract_cell(tmp_path / "s", tc.model_spec(pretrained="none"), ds,
                 {"batch_size": 4, "num_workers": 0, "shard_rows": 50}, progress=False)
    r = analyze_cell(tmp_path / "s", "tiny", "imgs")
    assert "random_init_weights" in r.tables["warnings"]["code"].to_list()
    assert r.tables["provenance"]["model_weights"][0] == "none"


@pytest.mark.parametrize(("classes", "per_class", "counts", "expect"), [
    # C = 12: every π_p third has 4 classes (< 5)
    (12, 100, np.full(12, 500), ["head", "medium", "tail"]),
    # C = 15 with 6 eval samples per class: 5 classes but 30 samples per third (< 100);
    # the one shot group (15 classes, all many-shot) has 90 samples
    (15, 6, np.full(15, 500), ["head", "medium", "tail", "many-shot"]),
    # C = 30, counts 27 many / 3 few: the few-shot group has 3 classes
    (30, 100, np.r_[np.full(27, 500), np.full(3, 10)], ["few-shot"]),
])
def test_small_groups_warn(tmp_path, classes, per_class, counts, expect):
    store = _cell(tmp_path, classes=classes, eval_per_class=per_class, counts=counts)
    w = analyze_cell(store, "m", "d").tables["warnings"]
    assert set(w["code"]) == {"small_group"}
    named = sorted(m.split(" ")[0] for m in w["message"])
    assert named == sorted(expect)
    pc = analyze_cell(store, "m", "d").tables["per_class"].filter(pl.col("method") == "gla")
    for m in w["message"]:  # the figures quoted are the per_class table's
        g = m.split(" ")[0].removesuffix("-shot")
        col = "count_group" if m.split(" ")[0].endswith("-shot") else "group"
        sub = pc.filter(pl.col(col) == g)
        assert f": {sub.height} class" in m and f", {int(sub['n'].sum())} samples" in m


def test_not_converged_estimator_warns():
    w = planted_world(20, 20, zipf_prior(20), seed=2)
    opts = AnalysisOptions(estimators=("gla", "eigen"), estimator_options={"max_iter": 2})
    fitted = fit_priors(w.zs, w.labels, 20, options=opts)
    assert not fitted.estimates["gla"].converged
    tallies = evaluate([(w.zs, None, w.labels)], fitted, opts)
    tables = build_tables("m", "d", "test", [f"c{i}" for i in range(20)], fitted, tallies)
    out = caveats.cell_warnings("m", "d", class_names=[f"c{i}" for i in range(20)], counts=None,
                                has_ft=False, random_init=False, zs_absmax=10.0,
                                priors=tables["priors"], per_class=tables["per_class"].head(0))
    bad = sorted(e for e, est in fitted.estimates.items() if not est.converged)
    msgs = out.filter(pl.col("code") == "not_converged")["message"].to_list()
    assert sorted(m.split()[1] for m in msgs) == bad
    assert all("after 2 iterations" in m for m in msgs if m.split()[1] == "gla")


def test_warnings_are_published_per_cell(tmp_path):
    from gla.pipeline.analysis import analyze_store

    _cell(tmp_path, counts=MANY)
    _cell(tmp_path, counts=None, dataset="e")
    analyze_store(tmp_path, load_results=False)
    pub = pl.read_parquet(tmp_path / "results" / "warnings.parquet")
    assert pub.select("model", "dataset", "code").rows() == [("m", "e", "uniform_train_prior")]
