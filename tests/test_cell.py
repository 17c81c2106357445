"""One cell end to end in memory: fit, chunked evaluation, result tables."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from gla.analyze import cell, schema, stats
from gla.analyze.adjust import METHODS, ZS_METHODS
from gla.analyze.synthetic import planted_world, zipf_prior
from scipy.special import log_softmax

C = 12
NAMES = [f"class{i}" for i in range(C)]

PRIOR_COLS = ["model", "dataset", "estimator", "class_index", "class_name", "prior", "iterations",
              "objective", "converged", "temperature"]  # fmt: skip


@pytest.fixture(scope="module")
def world():
    pi = zipf_prior(C, seed=0)
    fit = planted_world(C, 20, pi, seed=1, signal=2.0)
    ev = planted_world(C, 150, pi, seed=2, signal=2.0)
    counts = np.array([500, 300, 150, 101, 100, 60, 20, 19, 10, 5, 2, 1])
    return fit, ev, counts


def tables3(*args, **kw):
    t = cell.build_tables(*args, **kw)
    schema.check(t)
    return t["summary"], t["per_class"], t["priors"]


def chunks(ev, size, with_ft=True):
    for a in range(0, len(ev.labels), size):
        yield ev.zs[a : a + size], (ev.ft[a : a + size] if with_ft else None), ev.labels[a : a + size]


def test_cell_tables(world):
    fit, ev, counts = world
    opts = cell.AnalysisOptions(estimators=("gla", "eigen", "batch-calibration"))
    fitted = cell.fit_priors(fit.zs, fit.labels, C, counts, opts)
    assert fitted.primary == "gla" and fitted.pi_p is fitted.estimates["gla"].prior
    np.testing.assert_allclose(fitted.pi_s, counts / counts.sum())
    tallies = cell.evaluate(chunks(ev, 333), fitted, opts)
    assert tuple(tallies) == METHODS
    one = cell.evaluate(chunks(ev, 10**6), fitted, opts)
    for m in METHODS:  # chunking does not change anything
        np.testing.assert_array_equal(tallies[m].correct, one[m].correct)
        assert tallies[m].nll_sum == pytest.approx(one[m].nll_sum, rel=1e-10)
    summary, per_class, priors = tables3("m1", "d1", "test", NAMES, fitted, tallies, counts)
    assert summary.columns == list(schema.columns("summary")) and summary.height == len(METHODS)
    assert per_class.columns == list(schema.columns("per_class")) and per_class.height == len(METHODS) * C
    assert priors.columns[: len(PRIOR_COLS)] == PRIOR_COLS and priors.height == 3 * C
    assert per_class.schema["class_index"] == pl.Int32 and summary.schema["n"] == pl.Int64
    # summary numbers = stats of the adjusted logits computed directly
    row = summary.filter(pl.col("method") == "zs_debiased").row(0, named=True)
    direct = ev.zs - np.log(fitted.pi_p).astype(np.float32)
    assert row["accuracy"] == pytest.approx(np.mean(direct.argmax(1) == ev.labels))
    assert row["nll"] == pytest.approx(-log_softmax(direct.astype(np.float64), 1)[np.arange(len(ev.labels)), ev.labels].mean(), rel=1e-6)
    assert row["n"] == len(ev.labels) and row["estimator"] == "gla" and row["split"] == "test"
    # head/medium/tail accuracy is pooled over the group's samples; many/medium/few-shot
    # accuracy is the mean of the group's per-class accuracies (the released conventions)
    pc = per_class.filter(pl.col("method") == "zs_debiased")
    for col, key, g in (("acc_head", "group", "head"), ("acc_tail", "group", "tail"),
                        ("acc_many", "count_group", "many"), ("acc_few", "count_group", "few"),
                        ("acc_medium_shot", "count_group", "medium")):  # fmt: skip
        sub = pc.filter(pl.col(key) == g)
        expect = (sub["accuracy"] * sub["n"]).sum() / sub["n"].sum() if key == "group" else sub["accuracy"].mean()
        assert row[col] == pytest.approx(expect), col
    assert pc["group"].to_list() == stats.prior_groups(fitted.pi_p).tolist()
    assert pc["count_group"].to_list() == stats.count_groups(counts).tolist()
    np.testing.assert_allclose(pc["prior_pretrain"].to_numpy(), fitted.pi_p)
    # priors table carries every estimator's diagnostics
    for est, e in fitted.estimates.items():
        sub = priors.filter(pl.col("estimator") == est)
        np.testing.assert_allclose(sub["prior"].to_numpy(), e.prior)
        assert sub["iterations"][0] == e.iterations and sub["converged"][0] == e.converged


def test_zs_only_cell_and_unknown_labels(world):
    fit, ev, _ = world
    fitted = cell.fit_priors(fit.zs, fit.labels, C)
    y = ev.labels.copy()
    y[::10] = -1  # unknown labels are skipped
    tallies = cell.evaluate([(ev.zs, None, y)], fitted)
    assert tuple(tallies) == ZS_METHODS
    assert tallies["zs"].n == int((y >= 0).sum())
    summary, per_class, _ = tables3("m", "d", "test", NAMES, fitted, tallies)
    assert summary.height == 2
    assert summary["acc_many"].null_count() == 2 and per_class["count_group"].null_count() == per_class.height
    np.testing.assert_allclose(per_class["prior_downstream"].to_numpy(), 1 / C)


def test_label_free_fit_and_temperature(world):
    fit, ev, _ = world
    opts = cell.AnalysisOptions(estimators=("prior-matching",))
    fitted = cell.fit_priors(fit.zs, np.full(len(fit.labels), -1), C, options=opts)
    assert fitted.estimates["prior-matching"].converged
    opts_t = cell.AnalysisOptions(temperature=2.0)
    fitted_t = cell.fit_priors(fit.zs, fit.labels, C, options=opts_t)
    tallies = cell.evaluate([(ev.zs, ev.ft, ev.labels)], fitted_t, opts_t)
    z = ev.zs.astype(np.float64) / 2.0
    expect = -log_softmax(z, 1)[np.arange(len(ev.labels)), ev.labels].mean()
    assert stats.summary_metrics(tallies["zs"])["nll"] == pytest.approx(expect, rel=1e-6)


def test_target_prior_reaches_the_methods(world):
    fit, ev, _ = world
    pi_t = zipf_prior(C, seed=9)
    opts = cell.AnalysisOptions(target_prior=pi_t)
    fitted = cell.fit_priors(fit.zs, fit.labels, C, options=opts)
    t = cell.evaluate([(ev.zs, None, ev.labels)], fitted, opts)
    direct = ev.zs - np.log(fitted.pi_p).astype(np.float32) + np.log(pi_t).astype(np.float32)
    assert stats.summary_metrics(t["zs_debiased"])["accuracy"] == pytest.approx(np.mean(direct.argmax(1) == ev.labels))


def test_cell_errors(world):
    fit, ev, _ = world
    fitted = cell.fit_priors(fit.zs, fit.labels, C)
    with pytest.raises(ValueError, match="columns"):
        cell.fit_priors(fit.zs, fit.labels, C + 1)
    with pytest.raises(ValueError, match="unknown estimator"):
        cell.fit_priors(fit.zs, fit.labels, C, options=cell.AnalysisOptions(estimators=("nope",)))
    with pytest.raises(ValueError, match="missing in others"):
        cell.evaluate([(ev.zs, ev.ft, ev.labels), (ev.zs, None, ev.labels)], fitted)
    with pytest.raises(ValueError, match="columns"):
        cell.evaluate([(ev.zs[:, :5], None, ev.labels)], fitted)
    with pytest.raises(ValueError, match="NaN"):
        bad = ev.zs.copy()
        bad[3, 1] = np.nan
        cell.evaluate([(bad, None, ev.labels)], fitted)
    with pytest.raises(ValueError, match="class names"):
        tables3("m", "d", "t", NAMES[:-1], fitted, {})


def test_fit_and_eval_label_edge_cases(world):
    fit, ev, _ = world
    y = fit.labels.copy()
    y[0] = -1
    with pytest.raises(ValueError, match="1 of .* unknown"):
        cell.fit_priors(fit.zs, y, C)
    with pytest.raises(ValueError, match="needs labels"):
        cell.fit_priors(fit.zs, np.full(len(y), -1), C)  # gla needs labels
    fitted = cell.fit_priors(fit.zs, fit.labels, C)
    with pytest.raises(ValueError, match="labels .* shape"):
        cell.evaluate([(ev.zs, None, ev.labels[:-1])], fitted)
    empty = (ev.zs[:0], None, ev.labels[:0])
    t = cell.evaluate([empty, (ev.zs, None, ev.labels), empty], fitted)
    assert t["zs"].n == len(ev.labels)


def test_two_classes_float16_and_a_class_absent_from_eval():
    """C = 2 (no head or medium group), float16 logits, and class 1 never in the eval labels."""
    fit = planted_world(2, 30, np.array([0.8, 0.2]), seed=3, signal=1.5)
    ev = planted_world(2, [40, 0], np.array([0.8, 0.2]), seed=4, signal=1.5)
    zs16, ft16 = ev.zs.astype(np.float16), ev.ft.astype(np.float16)
    fitted = cell.fit_priors(fit.zs.astype(np.float16), fit.labels, 2)
    tallies = cell.evaluate([(zs16, ft16, ev.labels)], fitted)
    summary, per_class, _ = tables3("m", "d", "test", ["a", "b"], fitted, tallies)
    assert summary.height == len(METHODS) and (summary["n"] == 40).all()
    assert stats.prior_groups(fitted.pi_p).tolist() == ["tail", "tail"]  # C//3 = 0: all tail
    assert summary["acc_head"].null_count() == summary["acc_medium"].null_count() == summary.height
    gla = summary.filter(pl.col("method") == "gla").row(0, named=True)
    z = zs16.astype(np.float32) + ft16.astype(np.float32) - np.log(fitted.pi_p).astype(np.float32) \
        - np.log(fitted.pi_s).astype(np.float32)
    acc = float(np.mean(z.argmax(1) == 0))
    # balanced accuracy averages over the classes present: here only class 0
    assert gla["accuracy"] == pytest.approx(acc) and gla["balanced_accuracy"] == pytest.approx(acc)
    pc = per_class.filter(pl.col("method") == "gla").sort("class_index")
    assert pc["n"].to_list() == [40, 0] and pc["accuracy"][1] is None
