"""Distribution-shift sets scored with a source cell's priors (pipeline.distshift).

The reference is independent of the restriction the tool does: GLA over the source's
full class space with the other classes masked out (−inf), priors fitted by the public
estimator on the source's fit split.
"""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from gla.analyze.priors import downstream_prior, estimate_pretrain_prior
from gla.extract import cellformat as cf
from gla.pipeline.analysis import analyze_store
from gla.pipeline.cell_analysis import StoreAnalysisOptions as AnalyzeOptions
from gla.pipeline.distshift import write_shift
from gla.pipeline.errors import UserError
from gla.pipeline.store import Store

NAMES = ["ant", "bee", "cat", "dog", "eel", "fox"]
C = len(NAMES)


def _logits(rng, y, bias):
    z = rng.normal(size=(len(y), C)).astype(np.float32) + bias
    z[np.arange(len(y)), y] += 2.0
    return z.astype(np.float32)


def _cell(store, dataset, splits, names, cols=None):
    cell = cf.cell_dir(store, "m", dataset)
    cell.mkdir(parents=True, exist_ok=True)
    for split, (y, zs, ft) in splits.items():
        ids = [f"{dataset}-{split}-{i}" for i in range(len(y))]
        t = cf.build_table(ids, split, y, zs if cols is None else zs[:, cols],
                           ft if cols is None else ft[:, cols], metadata={"class_names": names})
        cf.write_split(cell, split, [t])


@pytest.fixture()
def world(tmp_path):
    rng = np.random.default_rng(3)
    zb = np.log(np.array([0.4, 0.25, 0.15, 0.1, 0.06, 0.04]))  # zs bias (π_p)
    fb = np.log(np.array([0.05, 0.1, 0.1, 0.2, 0.25, 0.3]))  # ft bias (π_s)
    store = tmp_path / "s"
    src = {}
    for split, n in (("val", 20 * C), ("test", 600)):
        y = np.arange(n) % C
        src[split] = (y, _logits(rng, y, zb), _logits(rng, y, fb))
    _cell(store, "src", src, NAMES)
    counts = np.array([20, 40, 40, 80, 100, 120])
    Store(store).write_class_counts("src", counts, NAMES)
    # the shifted set: noisier logits, classes {fox, bee, dog} in its own order
    keep = [5, 1, 3]
    y_full = np.asarray(keep)[np.arange(300) % 3]
    zs_full = _logits(rng, y_full, zb) + rng.normal(scale=1.5, size=(300, C)).astype(np.float32)
    ft_full = _logits(rng, y_full, fb) + rng.normal(scale=1.5, size=(300, C)).astype(np.float32)
    y_own = np.arange(300) % 3
    _cell(store, "shf", {"test": (y_own, zs_full, ft_full)}, [NAMES[k] for k in keep], cols=keep)
    write_shift(store, {"name": "shf", "evaluate_with": "src"})
    return store, src, counts, keep, (y_full, zs_full, ft_full)


def _masked_gla_accuracy(src, counts, keep, full):
    """GLA in the source's full class space, classes outside ``keep`` masked out."""
    y_val, zs_val, _ = src["val"]
    pi_p = estimate_pretrain_prior(zs_val, y_val, "gla").prior
    pi_s = downstream_prior(counts, C)
    y, zs, ft = full
    g = zs + ft - np.log(pi_s) - np.log(pi_p)
    mask = np.full(C, -np.inf)
    mask[keep] = 0.0
    return float((np.argmax(g + mask, 1) == y).mean()), float((np.argmax(zs + mask, 1) == y).mean())


def test_shifted_subset_scored_with_source_priors(world):
    store, src, counts, keep, full = world
    analyze_store(store, AnalyzeOptions())
    res = store / "results"
    rob = pl.read_parquet(res / "robustness.parquet")
    row = {r["method"]: r for r in rob.iter_rows(named=True)}
    ref_gla, ref_zs = _masked_gla_accuracy(src, counts, keep, full)
    assert row["gla"]["accuracy"] == pytest.approx(ref_gla, abs=1e-12)
    assert row["zs"]["accuracy"] == pytest.approx(ref_zs, abs=1e-12)
    assert row["gla"]["n"] == 300 and row["gla"]["classes"] == 3 and row["gla"]["source_class_count"] == C
    # the source's numbers beside it are the source cell's own summary rows
    summary = pl.read_parquet(res / "summary.parquet")
    src_acc = dict(summary.filter(pl.col("dataset") == "src").select("method", "accuracy").iter_rows())
    for m, r in row.items():
        assert r["source_dataset"] == "src" and r["source_accuracy"] == pytest.approx(src_acc[m])
        assert r["accuracy_drop"] == pytest.approx(src_acc[m] - r["accuracy"])
    # priors of the shifted cell: the source's, restricted and renormalised
    priors = pl.read_parquet(res / "priors.parquet")
    p_src = priors.filter((pl.col("dataset") == "src") & (pl.col("estimator") == "gla")).sort("class_index")
    p_shf = priors.filter((pl.col("dataset") == "shf") & (pl.col("estimator") == "gla")).sort("class_index")
    expect = p_src["prior"].to_numpy()[keep]
    np.testing.assert_allclose(p_shf["prior"].to_numpy(), expect / expect.sum(), rtol=1e-12)
    assert p_shf["class_name"].to_list() == ["fox", "bee", "dog"]


def test_mapping_by_index_equals_mapping_by_name(world, tmp_path):
    store, src, counts, keep, full = world
    analyze_store(store, AnalyzeOptions())
    by_name = pl.read_parquet(store / "results" / "robustness.parquet").sort("method")
    # rename the shifted classes so that names no longer match: indices must do it
    cell = cf.cell_dir(store, "m", "shf")
    t = Store(store).read_split("m", "shf", "test", columns=("label", "zs", "ft", "sample_id"))
    table = cf.build_table(t.sample_ids.to_pylist(), "test", t.labels, t.zs, t.ft,
                           metadata={"class_names": ["x", "y", "z"]})
    cf.write_split(cell, "test", [table])
    with pytest.raises(UserError, match=r"evaluate_with.json: class 'x' is not a class of source 'src'"):
        analyze_store(store, AnalyzeOptions())
    write_shift(store, {"name": "shf", "evaluate_with": "src", "source_classes": keep})
    analyze_store(store, AnalyzeOptions())
    by_index = pl.read_parquet(store / "results" / "robustness.parquet").sort("method")
    assert by_index["accuracy"].to_list() == by_name["accuracy"].to_list()
    write_shift(store, {"name": "shf", "evaluate_with": "src", "source_classes": [5, 1, 9]})
    with pytest.raises(UserError, match="source_classes must be distinct indices in 0..5"):
        analyze_store(store, AnalyzeOptions())


def test_changed_source_reanalyses_the_shifted_set(world):
    store, src, counts, keep, full = world
    analyze_store(store, AnalyzeOptions())
    before = pl.read_parquet(store / "results" / "robustness.parquet")
    # new source counts: π_s changes, so the shifted set's gla must change
    Store(store).write_class_counts("src", counts[::-1].copy(), NAMES)
    run = analyze_store(store, AnalyzeOptions(), load_results=False).run
    assert run is not None
    after = pl.read_parquet(store / "results" / "robustness.parquet")
    assert before.filter(pl.col("method") == "gla")["source_accuracy"].item() != \
        after.filter(pl.col("method") == "gla")["source_accuracy"].item()
    shf_gla = after.filter(pl.col("method") == "gla")["accuracy"].item()
    ref, _ = _masked_gla_accuracy(src, counts[::-1].copy(), keep, full)
    assert shf_gla == pytest.approx(ref, abs=1e-12)


def test_bad_declarations_are_refused_and_results_stay(world):
    store, *_ = world
    analyze_store(store, AnalyzeOptions())
    before = {p.name: p.read_bytes() for p in (store / "results").rglob("*.parquet")}
    path = store / "datasets" / "shf" / "evaluate_with.json"
    path.write_text(json.dumps({"source": "nowhere"}))
    with pytest.raises(UserError, match="source cell m/nowhere is not in the store"):
        analyze_store(store, AnalyzeOptions())
    path.write_text("{not json")
    with pytest.raises(UserError, match="evaluate_with.json: unreadable shift declaration"):
        analyze_store(store, AnalyzeOptions())
    assert {p.name: p.read_bytes() for p in (store / "results").rglob("*.parquet")} == before


def test_config_validates_evaluate_with(tmp_path):
    from gla.pipeline.config import load_config

    base = 'store = "s"\n[[models]]\nname = "m"\narch = "a"\npretrained = "none"\nfinetuned = { a = "ft.pt" }\n'
    cfg = tmp_path / "c.toml"
    cfg.write_text(base + '[[datasets]]\nname = "a"\nkind = "imagefolder"\n'
                   '[[datasets]]\nname = "b"\nkind = "imagefolder"\nevaluate_with = "a"\n')
    conf = load_config(cfg)
    assert conf.models[0].finetuned["b"] == conf.models[0].finetuned["a"]  # the source's fine-tuned model
    cfg.write_text(base + '[[datasets]]\nname = "a"\nkind = "imagefolder"\nevaluate_with = "zz"\n')
    with pytest.raises(UserError, match="evaluate_with names no other dataset"):
        load_config(cfg)
    cfg.write_text(base + '[[datasets]]\nname = "a"\nkind = "imagefolder"\ncorruption = "melt"\n')
    with pytest.raises(UserError, match="corruption"):
        load_config(cfg)
