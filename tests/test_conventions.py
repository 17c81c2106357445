"""The released GLA code's conventions (the defaults) and their named variants.

Each convention is checked against a hand computation or an independent reference
(scipy root finding / minimisation, numpy recomputation of the published numbers);
see docs/conventions.md.
"""

from __future__ import annotations

import hashlib

import numpy as np
import polars as pl
import pytest
from gla.analyze import cell, kshot, stats
from gla.analyze.synthetic import planted_world, zipf_prior
from gla.pipeline import publication
from gla.pipeline.cell_analysis import StoreAnalysisOptions
from gla.pipeline.cli import main
from gla.pipeline.errors import UserError
from gla.pipeline.store import Store
from scipy.optimize import brentq, minimize_scalar
from scipy.special import log_softmax, softmax

# ----------------------------------------------------------------- temperature, by hand


def _hand_world():
    """Two classes, four fit rows, labels 0, 0, 0, 1: every row predicts class 0, so the
    accuracy is 3/4 and the mean max-softmax of (d, 0)/T is sigmoid(d/T). Matching it
    gives T = d / log 3: zs (d = 1) → 1/log 3, ft (d = 2) → 2/log 3."""
    y = np.array([0, 0, 0, 1])
    zs = np.tile(np.array([1.0, 0.0], np.float32), (4, 1))
    ft = np.tile(np.array([2.0, 0.0], np.float32), (4, 1))
    return zs, ft, y


def test_confidence_temperatures_of_zs_and_ft_by_hand():
    zs, ft, y = _hand_world()
    opts = cell.AnalysisOptions(temperature="confidence")
    fitted = cell.fit_priors(zs, y, 2, options=opts, ft_fit=ft)
    assert fitted.temperature == pytest.approx(1 / np.log(3), rel=1e-6)
    assert fitted.ft_temperature == pytest.approx(2 / np.log(3), rel=1e-6)
    zs_only = cell.fit_priors(zs, y, 2, options=cell.AnalysisOptions(temperature="confidence",
                                                                      temperature_scope="zs"), ft_fit=ft)
    assert zs_only.temperature == fitted.temperature and zs_only.ft_temperature == 1.0
    # no temperature asked: nothing is rescaled, whatever the scope
    assert cell.fit_priors(zs, y, 2, ft_fit=ft).ft_temperature == 1.0
    # a fixed number divides both
    assert cell.fit_priors(zs, y, 2, options=cell.AnalysisOptions(temperature=2.5), ft_fit=ft).ft_temperature == 2.5


def _mean_conf(z, t):
    return softmax(z.astype(np.float64) / t, axis=1).max(axis=1).mean()


@pytest.mark.parametrize("seed", range(3))
def test_ft_temperature_matches_scipy_and_reaches_every_method(seed):
    C = 8
    pi = zipf_prior(C, seed=seed)
    fit = planted_world(C, 25, pi, seed=seed + 1, signal=2.0, ft_signal=2.5)
    ev = planted_world(C, 40, pi, seed=seed + 2, signal=2.0, ft_signal=2.5)
    acc_ft = np.mean(fit.ft.argmax(1) == fit.labels)
    acc_zs = np.mean(fit.zs.argmax(1) == fit.labels)
    t_ft = brentq(lambda t: _mean_conf(fit.ft, t) - acc_ft, 1e-3, 1e3, xtol=1e-12)
    t_zs = brentq(lambda t: _mean_conf(fit.zs, t) - acc_zs, 1e-3, 1e3, xtol=1e-12)
    opts = cell.AnalysisOptions(temperature="confidence")
    fitted = cell.fit_priors(fit.zs, fit.labels, C, options=opts, ft_fit=fit.ft)
    assert fitted.ft_temperature == pytest.approx(t_ft, rel=1e-5)
    assert fitted.temperature == pytest.approx(t_zs, rel=1e-5)
    tallies = cell.evaluate([(ev.zs, ev.ft, ev.labels)], fitted, opts)
    z, f = ev.zs.astype(np.float64) / t_zs, ev.ft.astype(np.float64) / t_ft
    lp, ls = np.log(fitted.pi_p), np.log(fitted.pi_s)
    for m, logits in {"ft": f, "ft_la": f - ls, "ensemble": z + f, "gla": z + f - ls - lp}.items():
        got = stats.summary_metrics(tallies[m])
        assert got["accuracy"] == pytest.approx(np.mean(logits.argmax(1) == ev.labels), abs=1e-12), m
        nll = -log_softmax(logits, 1)[np.arange(len(ev.labels)), ev.labels].mean()
        assert got["nll"] == pytest.approx(nll, rel=1e-5), m
    # the nll mode fits ft's own minimum-NLL temperature
    fitted_nll = cell.fit_priors(fit.zs, fit.labels, C, options=cell.AnalysisOptions(temperature="nll"),
                                 ft_fit=fit.ft)
    ref = minimize_scalar(lambda t: -log_softmax(fit.ft.astype(np.float64) / t, 1)[
        np.arange(len(fit.labels)), fit.labels].mean(), bounds=(1e-2, 1e2), method="bounded",
        options={"xatol": 1e-10}).x
    assert fitted_nll.ft_temperature == pytest.approx(ref, rel=1e-4)


def test_kshot_temperature_scope():
    zs, ft, y = _hand_world()
    each = kshot.fit_kshot(zs, y, {4: ft})
    assert each.t_ft[4] == pytest.approx(2 / np.log(3), rel=1e-6)
    assert kshot.fit_kshot(zs, y, {4: ft}, temperature_scope="zs").t_ft == {4: 1.0}
    with pytest.raises(ValueError, match="temperature_scope"):
        kshot.fit_kshot(zs, y, {4: ft}, temperature_scope="ft")


# -------------------------------------------------------- fit label distribution


def test_prior_matching_with_the_fit_label_counts_recovers_the_labelled_estimate():
    """On an imbalanced fit split, prior matching with the split's own label distribution
    solves the same equations as gla (which uses n/N); assuming uniform does not."""
    C = 10
    pi = zipf_prior(C, seed=3)
    counts = np.array([60, 10, 45, 20, 80, 15, 30, 25, 12, 50])
    fit = planted_world(C, counts, pi, seed=4, signal=2.0)
    gla = cell.fit_priors(fit.zs, fit.labels, C).pi_p
    opts = dict(estimators=("prior-matching",))
    by_counts = cell.fit_priors(fit.zs, fit.labels, C, options=cell.AnalysisOptions(
        **opts, fit_label_distribution="counts")).pi_p
    by_array = cell.fit_priors(fit.zs, None, C, options=cell.AnalysisOptions(
        **opts, fit_label_distribution=counts * 3.0)).pi_p  # normalised; no labels needed
    uniform = cell.fit_priors(fit.zs, fit.labels, C, options=cell.AnalysisOptions(**opts)).pi_p
    np.testing.assert_allclose(by_counts, gla, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(by_array, gla, rtol=1e-5, atol=1e-9)
    assert np.abs(uniform - pi).sum() > 2 * np.abs(by_counts - pi).sum()


def test_fit_label_distribution_refusals():
    C = 4
    fit = planted_world(C, 10, np.full(C, 0.25), seed=0)
    pm = ("prior-matching",)
    with pytest.raises(ValueError, match="'counts' needs a labelled fit split"):
        cell.fit_priors(fit.zs, None, C, options=cell.AnalysisOptions(estimators=pm, fit_label_distribution="counts"))
    with pytest.raises(ValueError, match="4 finite values > 0"):
        cell.fit_priors(fit.zs, None, C, options=cell.AnalysisOptions(estimators=pm, fit_label_distribution=np.ones(3)))
    with pytest.raises(ValueError, match="fit_label_distribution: expected uniform, counts"):
        cell.AnalysisOptions(fit_label_distribution="balanced")
    for key in ("groups", "shot_accuracy", "temperature_scope"):
        with pytest.raises(ValueError, match=f"{key}: expected one of"):
            cell.AnalysisOptions(**{key: "nope"})


# ---------------------------------------------------------------- store options


def test_store_options_are_strict_and_fingerprinted(tmp_path):
    base = StoreAnalysisOptions()
    assert (base.groups, base.shot_accuracy, base.temperature_scope, base.fit_label_distribution) == (
        "released", "per-class", "each", "uniform")
    prints = {base.fingerprint()}
    for kw in ({"groups": "array-split"}, {"shot_accuracy": "pooled"}, {"temperature_scope": "zs"},
               {"fit_label_distribution": "counts"}):
        o = StoreAnalysisOptions.from_mapping(kw)
        assert getattr(o, next(iter(kw))) == next(iter(kw.values()))
        prints.add(o.fingerprint())
    assert len(prints) == 5
    f = tmp_path / "p.npy"
    np.save(f, np.ones(3))
    a = StoreAnalysisOptions(fit_label_distribution=str(f)).fingerprint()
    np.save(f, np.arange(1, 4))
    assert StoreAnalysisOptions(fit_label_distribution=str(f)).fingerprint() != a  # content, not name
    for key in ("groups", "shot_accuracy", "temperature_scope"):
        with pytest.raises(UserError, match=f"analysis.{key}: expected one of"):
            StoreAnalysisOptions.from_mapping({key: "bogus"})


def test_config_refuses_unknown_convention_names(tmp_path):
    from gla.pipeline.config import load_config

    cfg = tmp_path / "c.toml"
    cfg.write_text('store = "S"\n[analysis]\ngroups = "thirds"\n')
    with pytest.raises(UserError, match="groups"):
        load_config(cfg)
    cfg.write_text('store = "S"\n[analysis]\nshot_accuracy = "pooled"\ntemperature_scope = "zs"\n')
    a = load_config(cfg).analysis
    assert (a.shot_accuracy, a.temperature_scope) == ("pooled", "zs")
    cfg.write_text('store = "S"\n[analysis]\nestimators = ["gla", "prior-matching"]\n'
                   'fit_label_distribution = "fit.npy"\n')
    a = load_config(cfg).analysis
    assert a.fit_label_distribution == str(tmp_path / "fit.npy")  # relative to the config file
    o = StoreAnalysisOptions.from_mapping(a.model_dump())
    assert o.fit_label_distribution == str(tmp_path / "fit.npy") and o.groups == "released"
    cfg.write_text('store = "S"\n[analysis]\nfit_label_distribution = "counts"\n')  # gla alone: unused
    with pytest.raises(UserError, match="analysis.fit_label_distribution: only the label-free estimators"):
        load_config(cfg)


# ------------------------------------------------------------- gla analyze, end to end

C = 10


def _gla(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def store(tmp_path, capsys):
    """One cell with an imbalanced val (fit) and test split, ft logits and training counts
    spanning the many/medium/few groups."""
    pi_p = zipf_prior(C, exponent=1.2, seed=0)
    n_val = np.array([30, 12, 25, 8, 40, 20, 15, 33, 10, 18])
    n_test = np.array([150, 20, 90, 10, 60, 200, 35, 80, 5, 50])
    s = tmp_path / "S"
    for split, n, seed in (("val", n_val, 1), ("test", n_test, 2)):
        w = planted_world(C, n, pi_p, seed=seed, signal=1.2, ft_signal=1.0)
        files = {}
        for k, v in (("y", w.labels), ("zs", w.zs), ("ft", w.ft)):
            files[k] = tmp_path / f"{split}-{k}.npy"
            np.save(files[k], v)
        code, _, err = _gla(capsys, "import", "--store", s, "--model", "m", "--dataset", "d", "--split", split,
                            "--labels", files["y"], "--zs", files["zs"], "--ft", files["ft"])
        assert code == 0, err
    np.save(tmp_path / "counts.npy", np.array([500, 300, 150, 101, 100, 60, 20, 19, 10, 5]))
    assert _gla(capsys, "import", "--store", s, "--dataset", "d", "--train-counts", tmp_path / "counts.npy")[0] == 0
    return s


def _tables(s):
    return {n: publication.read_table(s, n) for n in ("summary", "per_class", "priors")}


def _groups_check(t, sizes, shot_average):
    pc = t["per_class"].filter(pl.col("method") == "gla").sort("prior_pretrain", descending=True,
                                                               maintain_order=True)
    assert pc["group"].to_list() == ["head"] * sizes[0] + ["medium"] * sizes[1] + ["tail"] * sizes[2]
    row = t["summary"].filter(pl.col("method") == "gla").row(0, named=True)
    for g in ("head", "medium", "tail"):  # pooled over samples, either way
        sub = pc.filter(pl.col("group") == g)
        assert row[f"acc_{g}"] == pytest.approx((sub["accuracy"] * sub["n"]).sum() / sub["n"].sum())
    for g, col in (("many", "acc_many"), ("medium", "acc_medium_shot"), ("few", "acc_few")):
        sub = pc.filter(pl.col("count_group") == g)
        pooled = (sub["accuracy"] * sub["n"]).sum() / sub["n"].sum()
        expect = sub["accuracy"].mean() if shot_average == "per-class" else pooled
        assert row[col] == pytest.approx(expect), col
        if shot_average == "per-class" and g != "medium":
            assert abs(expect - pooled) > 1e-3  # the eval split is imbalanced enough to tell them apart


def test_analyze_defaults_and_named_variants(store, capsys):
    code, out, err = _gla(capsys, "analyze", "--store", store)
    assert code == 0, err
    _groups_check(_tables(store), (3, 3, 4), "per-class")
    code, out, err = _gla(capsys, "analyze", "--store", store, "--groups", "array-split",
                          "--shot-accuracy", "pooled")
    assert code == 0, err
    assert "1 analysed" in out  # new options: a new cache key
    _groups_check(_tables(store), (4, 3, 3), "pooled")


def _direct_gla_accuracy(store, t_zs, t_ft):
    s = Store(store)
    d = s.read_split("m", "d", "test")
    pri = publication.read_table(store, "priors").sort("class_index")["prior"].to_numpy()
    counts = s.read_class_counts("d").counts
    g = d.zs / t_zs + d.ft / t_ft - np.log(counts / counts.sum()) - np.log(pri)
    return float(np.mean(g.argmax(1) == d.labels))


def test_analyze_temperature_scope(store, capsys):
    s = Store(store)
    val = s.read_split("m", "d", "val")
    acc_ft = np.mean(val.ft.argmax(1) == val.labels)
    t_ft = brentq(lambda t: _mean_conf(val.ft, t) - acc_ft, 1e-3, 1e3, xtol=1e-12)
    for argv, own_ft in (([], True), (["--temperature-scope", "zs"], False)):
        code, _, err = _gla(capsys, "analyze", "--store", store, "--temperature", "confidence", "--quiet", *argv)
        assert code == 0, err
        t = _tables(store)
        t_zs = t["priors"]["temperature"][0]
        gla = t["summary"].filter(pl.col("method") == "gla")["accuracy"][0]
        assert gla == pytest.approx(_direct_gla_accuracy(store, t_zs, t_ft if own_ft else 1.0), abs=1e-12)
        prov = publication.read_table(store, "provenance").row(0, named=True)
        assert prov["temperature"] == t_zs
        assert prov["temperature_ft"] == (pytest.approx(t_ft, rel=1e-5) if own_ft else 1.0)
        assert prov["conventions"] == ("groups=released,shot_accuracy=per-class,temperature_scope="
                                       f"{'each' if own_ft else 'zs'},fit_label_distribution=uniform")
    assert _direct_gla_accuracy(store, t_zs, t_ft) != _direct_gla_accuracy(store, t_zs, 1.0)  # a real difference


def test_analyze_fit_label_distribution(store, capsys, tmp_path):
    code, _, err = _gla(capsys, "analyze", "--store", store, "--quiet", "--estimator", "gla")
    assert code == 0, err
    gla = _tables(store)["priors"].sort("class_index")["prior"].to_numpy()
    val = Store(store).read_split("m", "d", "val")
    np.save(tmp_path / "dist.npy", np.bincount(val.labels, minlength=C).astype(float))
    for value in ("counts", tmp_path / "dist.npy"):
        code, _, err = _gla(capsys, "analyze", "--store", store, "--quiet", "--estimator", "prior-matching",
                            "--fit-label-distribution", value)
        assert code == 0, err
        pm = _tables(store)["priors"].sort("class_index")["prior"].to_numpy()
        np.testing.assert_allclose(pm, gla, rtol=1e-5, atol=1e-9)


def test_bad_convention_options_exit_2_results_untouched(store, capsys, tmp_path):
    assert _gla(capsys, "analyze", "--store", store, "--quiet")[0] == 0
    res = store / "results"
    before = {str(p.relative_to(res)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(res.rglob("*"))
              if p.is_file() and "cells" not in p.relative_to(res).parts}
    np.save(tmp_path / "short.npy", np.ones(C - 1))
    cases = [
        (["--groups", "thirds"], "--groups"),
        (["--shot-accuracy", "mean"], "--shot-accuracy"),
        (["--temperature-scope", "ft"], "--temperature-scope"),
        (["--fit-label-distribution", "counts"], "--fit-label-distribution: only the label-free estimators"),
        (["--estimator", "eigen-iterated", "--fit-label-distribution", tmp_path / "missing.npy"],
         "missing.npy: file not found"),
        (["--estimator", "prior-matching", "--fit-label-distribution", tmp_path / "short.npy"],
         "short.npy: fit label distribution has 9 values but the cell has 10 classes"),
    ]
    for argv, fragment in cases:
        code, _, err = _gla(capsys, "analyze", "--store", store, *argv)
        lines = err.strip().splitlines()
        assert code == 2 and fragment in lines[-1], (argv, err)
        after = {str(p.relative_to(res)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(res.rglob("*"))
                 if p.is_file() and "cells" not in p.relative_to(res).parts}
        assert after == before, argv
