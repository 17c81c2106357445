"""analyze.diff on planted runs: deltas, paired/unpaired tests, BH per class, provenance."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from diff_world import accuracies, draw_cell, groups, run_tables
from gla.analyze import diff, significance

scipy_stats = pytest.importorskip("scipy.stats")
sm_tables = pytest.importorskip("statsmodels.stats.contingency_tables")
sm_multi = pytest.importorskip("statsmodels.stats.multitest")

C = 12


def _same_samples_changed(rng, cell, method, flip):
    """The same samples, with a fraction `flip` of method's predictions re-drawn."""
    out = {**cell, "preds": dict(cell["preds"])}
    p = out["preds"][method].copy()
    sel = rng.random(p.size) < flip
    p[sel] = rng.integers(0, C, size=int(sel.sum()))
    out["preds"][method] = p
    return out


def test_metric_deltas_and_cells():
    rng = np.random.default_rng(0)
    acc = accuracies(rng, C)
    a = draw_cell(rng, 300, C, acc)
    old = run_tables({("m", "d1"): a, ("m", "gone"): a}, C)
    new = run_tables({("m", "d1"): _same_samples_changed(rng, a, "gla", 0.3), ("m", "added"): a}, C)
    d = diff.diff_runs(old, new)
    assert dict(d.cells.select("dataset", "status").iter_rows()) == {"d1": "common", "gone": "removed", "added": "added"}
    row = d.metrics.filter((pl.col("method") == "gla") & (pl.col("metric") == "accuracy")).row(0, named=True)
    o = old["summary"].filter((pl.col("dataset") == "d1") & (pl.col("method") == "gla"))["accuracy"][0]
    n = new["summary"].filter((pl.col("dataset") == "d1") & (pl.col("method") == "gla"))["accuracy"][0]
    assert (row["old"], row["new"]) == (o, n) and row["delta"] == pytest.approx(n - o)
    assert set(d.metrics["metric"]) >= {"accuracy", "balanced_accuracy", "nll", "ece", "acc_tail", "n"}
    # Unchanged methods have zero delta everywhere.
    assert d.metrics.filter(pl.col("method") == "zs")["delta"].abs().max() == 0


def test_paired_tests_match_brute_force_mcnemar():
    rng = np.random.default_rng(1)
    a = draw_cell(rng, 800, C, accuracies(rng, C))
    b = _same_samples_changed(rng, a, "ft", 0.2)
    d = diff.diff_runs(run_tables({("m", "d"): a}, C), run_tables({("m", "d"): b}, C))
    y, g = a["labels"], groups(C)
    for metric, sel in (("accuracy", np.ones(y.size, bool)), ("acc_tail", np.isin(y, np.flatnonzero(g == "tail")))):
        r = d.tests.filter((pl.col("method") == "ft") & (pl.col("metric") == metric)).row(0, named=True)
        ok_o, ok_n = a["preds"]["ft"][sel] == y[sel], b["preds"]["ft"][sel] == y[sel]
        nb, nw = int((ok_n & ~ok_o).sum()), int((ok_o & ~ok_n).sum())
        assert r["paired"] and r["test"] == "mcnemar" and (r["n_better"], r["n_worse"]) == (nb, nw)
        ref = sm_tables.mcnemar([[0, nw], [nb, 0]], exact=True).pvalue
        assert r["p_value"] == pytest.approx(ref, rel=1e-9)
        assert r["delta"] == pytest.approx(ok_n.mean() - ok_o.mean())
        assert r["ci_low"] <= r["delta"] <= r["ci_high"]
    unchanged = d.tests.filter(pl.col("method") == "zs")
    assert unchanged["p_value"].min() == 1.0 and unchanged["n_better"].max() == 0


def test_resampled_split_is_unpaired_fisher():
    rng = np.random.default_rng(2)
    acc = accuracies(rng, C)
    a, b = draw_cell(rng, 500, C, acc, "a"), draw_cell(rng, 600, C, acc, "b")
    d = diff.diff_runs(run_tables({("m", "d"): a}, C), run_tables({("m", "d"): b}, C))
    r = d.tests.filter((pl.col("method") == "gla") & (pl.col("metric") == "accuracy")).row(0, named=True)
    xo, xn = int((a["preds"]["gla"] == a["labels"]).sum()), int((b["preds"]["gla"] == b["labels"]).sum())
    assert not r["paired"] and r["test"] == "fisher" and r["n_better"] is None
    assert (r["n_old"], r["x_old"], r["n_new"], r["x_new"]) == (500, xo, 600, xn)
    ref = scipy_stats.fisher_exact([[xn, 600 - xn], [xo, 500 - xo]]).pvalue
    assert r["p_value"] == pytest.approx(ref, rel=1e-7)


def test_changed_labels_are_not_paired():
    rng = np.random.default_rng(3)
    a = draw_cell(rng, 300, C, accuracies(rng, C))
    b = {**a, "labels": a["labels"].copy()}
    b["labels"][0] = (b["labels"][0] + 1) % C  # one relabelled sample: not the same data
    d = diff.diff_runs(run_tables({("m", "d"): a}, C), run_tables({("m", "d"): b}, C))
    assert not d.tests["paired"].any()


def test_per_class_regressions_bh_against_statsmodels():
    rng = np.random.default_rng(4)
    acc = {m: np.full(C, 0.8) for m in ("zs", "gla")}
    a = draw_cell(rng, 2400, C, acc)
    b = {**a, "preds": dict(a["preds"])}
    p = b["preds"]["gla"].copy()
    y = a["labels"]
    planted = [2, 7, 11]
    sel = np.isin(y, planted) & (rng.random(y.size) < 0.5)
    p[sel] = (y[sel] + 1) % C  # half of the planted classes' samples now wrong
    b["preds"]["gla"] = p
    d = diff.diff_runs(run_tables({("m", "d"): a}, C), run_tables({("m", "d"): b}, C), fdr=0.05)
    g = d.classes.filter(pl.col("method") == "gla").sort("class_index")
    ok_o, ok_n = a["preds"]["gla"] == y, p == y
    ps = []
    for k in range(C):
        s = y == k
        ps.append(sm_tables.mcnemar([[0, int((ok_o & ~ok_n & s).sum())], [int((ok_n & ~ok_o & s).sum()), 0]], exact=True).pvalue)
    np.testing.assert_allclose(g["p_value"].to_numpy(), ps, rtol=1e-9)
    np.testing.assert_allclose(g["q_value"].to_numpy(), sm_multi.multipletests(ps, method="fdr_bh")[1], rtol=1e-9)
    assert g.filter(pl.col("regression"))["class_index"].to_list() == planted
    assert not g["improvement"].any()
    assert not d.classes.filter(pl.col("method") == "zs")["regression"].any()


def test_provenance_changes_name_the_field():
    prov = pl.DataFrame({"model": ["m", "m"], "dataset": ["a", "b"], "estimator": ["gla", "gla"],
                         "templates_sha256": ["t1", "t1"], "finetuned_sha256": ["f1", None],
                         "temperature": [1.0, 1.0]})
    new = prov.with_columns(
        pl.when(pl.col("dataset") == "a").then(pl.lit("t2")).otherwise(pl.col("templates_sha256")).alias("templates_sha256"),
        pl.when(pl.col("dataset") == "b").then(pl.lit("f9")).otherwise(pl.col("finetuned_sha256")).alias("finetuned_sha256"),
    )
    ch = diff.provenance_changes(prov, new)
    assert ch.select("dataset", "field", "old", "new").rows() == [
        ("a", "templates_sha256", "t1", "t2"), ("b", "finetuned_sha256", None, "f9")]
    assert diff.provenance_changes(prov, prov).height == 0


def test_group_counts_sum_to_accuracy_counts():
    rng = np.random.default_rng(5)
    acc = accuracies(rng, C)
    a, b = draw_cell(rng, 400, C, acc, "a"), draw_cell(rng, 400, C, acc, "b")
    t = diff.diff_runs(run_tables({("m", "d"): a}, C), run_tables({("m", "d"): b}, C)).tests
    for m in ("zs", "gla"):
        sub = t.filter(pl.col("method") == m)
        parts = sub.filter(pl.col("metric").is_in(["acc_head", "acc_medium", "acc_tail"]))
        allrow = sub.filter(pl.col("metric") == "accuracy")
        assert parts["x_new"].sum() == allrow["x_new"][0] and parts["n_old"].sum() == allrow["n_old"][0]
    assert significance.fisher_exact(1, 2, 1, 2) == 1.0
