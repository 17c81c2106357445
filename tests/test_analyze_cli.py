"""``gla analyze`` end to end on planted-prior worlds, and its refusals."""

from __future__ import annotations

import hashlib
import re
import zlib

import numpy as np
import polars as pl
import pytest
from gla.analyze.synthetic import planted_world, zipf_prior
from gla.extract import cellformat as cf
from gla.pipeline import publication
from gla.pipeline.cell_analysis import StoreAnalysisOptions, analyze_cell
from gla.pipeline.cli import main
from gla.pipeline.results import COLUMNS
from gla.pipeline.store import Store

C = 10
METHODS = {"zs", "zs_debiased", "ft", "ft_la", "ensemble", "gla"}


def _gla(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _snapshot(folder):
    """sha256 of every published file under results/ (runs and LATEST; not the caches)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*")) if p.is_file() and "cells" not in p.relative_to(folder).parts
    }


def _pi_s():
    p = zipf_prior(C, exponent=0.8, seed=5)
    return p


def _import_world(capsys, store, tmp, model, dataset, *, ft=True, seed=0, val=30, test=100):
    pi_p = zipf_prior(C, exponent=1.2, seed=seed)
    for split, n, s in (("val", val, seed + 1), ("test", test, seed + 2)):
        w = planted_world(C, n, pi_p, seed=s, signal=1.2, ft_signal=1.0 if ft else None,
                          pi_s=_pi_s())
        base = tmp / f"{model}-{dataset}-{split}"
        np.save(f"{base}-y.npy", w.labels)
        np.save(f"{base}-zs.npy", w.zs)
        argv = ["import", "--store", store, "--model", model, "--dataset", dataset,
                "--split", split, "--labels", f"{base}-y.npy", "--zs", f"{base}-zs.npy"]
        if ft:
            np.save(f"{base}-ft.npy", w.ft)
            argv += ["--ft", f"{base}-ft.npy"]
        code, _, err = _gla(capsys, *argv)
        assert code == 0, err
    return pi_p


@pytest.fixture
def world(tmp_path, capsys):
    store = tmp_path / "S"
    pi_p = _import_world(capsys, store, tmp_path, "m1", "d")
    _import_world(capsys, store, tmp_path, "m2", "d", ft=False, seed=10)
    counts = np.round(_pi_s() * 5000).astype(np.int64)
    np.save(tmp_path / "counts.npy", counts)
    code, _, err = _gla(capsys, "import", "--store", store, "--dataset", "d",
                        "--train-counts", tmp_path / "counts.npy")
    assert code == 0, err
    return store, pi_p, counts


def test_analyze_writes_documented_tables_with_sane_values(world, capsys):
    store, pi_p, counts = world
    code, out, err = _gla(capsys, "analyze", "--store", store)
    assert code == 0, err
    assert "gla" in out and "m1" in out  # the rich summary table
    tables = {name: publication.read_table(store, name) for name in COLUMNS}
    for name, cols in COLUMNS.items():
        assert set(cols) <= set(tables[name].columns), name
    s = tables["summary"]
    m1 = {r["method"]: r for r in s.filter(pl.col("model") == "m1").iter_rows(named=True)}
    m2 = {r["method"]: r for r in s.filter(pl.col("model") == "m2").iter_rows(named=True)}
    assert set(m1) == METHODS
    assert set(m2) == {"zs", "zs_debiased"}  # no ft logits in m2
    assert all(r["split"] == "test" and r["n"] == 100 * C for r in m1.values())
    # de-biasing helps on a balanced test set, and GLA is the best of all methods
    assert m1["zs_debiased"]["accuracy"] > m1["zs"]["accuracy"] + 0.03
    assert m2["zs_debiased"]["accuracy"] > m2["zs"]["accuracy"] + 0.03
    assert m1["gla"]["accuracy"] >= max(r["accuracy"] for r in m1.values()) - 1e-12
    assert m1["ft_la"]["accuracy"] > m1["ft"]["accuracy"]
    for r in m1.values():
        assert 0 <= r["ece"] <= 1 and r["nll"] > 0
        assert r["balanced_accuracy"] == pytest.approx(r["accuracy"])  # balanced test set
    # the fitted prior is close to the planted one
    pri = tables["priors"].filter((pl.col("model") == "m1") & (pl.col("estimator") == "gla"))
    est = pri.sort("class_index")["prior"].to_numpy()
    assert est.sum() == pytest.approx(1.0)
    assert np.abs(est - pi_p).sum() < 0.15
    # per_class: one row per method × class, supports add up, downstream prior from counts
    pc = tables["per_class"].filter(pl.col("model") == "m1")
    assert pc.height == len(METHODS) * C
    assert pc.group_by("method").agg(pl.col("n").sum())["n"].to_list() == [100 * C] * len(METHODS)
    ds = pc.filter(pl.col("method") == "gla").sort("class_index")["prior_downstream"].to_numpy()
    np.testing.assert_allclose(ds, counts / counts.sum(), rtol=1e-9)
    assert pc["class_name"].to_list()[:2] == ["class_0", "class_1"]


def test_accuracies_match_a_direct_numpy_reference(world, capsys):
    """Independent check of the streamed result: recompute zs and gla accuracy by hand."""
    store, _, counts = world
    assert _gla(capsys, "analyze", "--store", store, "--only", "model=m1")[0] == 0
    s = Store(store)
    d = s.read_split("m1", "d", "test")
    pri = publication.read_table(store, "priors").filter(
        (pl.col("model") == "m1") & (pl.col("estimator") == "gla")).sort("class_index")
    log_pp = np.log(pri["prior"].to_numpy())
    log_ps = np.log(counts / counts.sum())
    summary = publication.read_table(store, "summary")
    acc = dict(zip(summary["method"].to_list(), summary["accuracy"].to_list(), strict=True))
    ref = {
        "zs": d.zs,
        "zs_debiased": d.zs - log_pp,
        "ft": d.ft,
        "ft_la": d.ft - log_ps,
        "ensemble": d.zs + d.ft,
        "gla": d.zs + d.ft - log_ps - log_pp,
    }
    for m, logits in ref.items():
        assert acc[m] == pytest.approx(np.mean(logits.argmax(1) == d.labels), abs=1e-12), m


def test_streaming_batches_and_threads_do_not_change_results(world):
    store, _, _ = world
    a = analyze_cell(store, "m1", "d", StoreAnalysisOptions(batch_rows=7, threads=2))
    b = analyze_cell(str(store), "m1", "d", StoreAnalysisOptions(batch_rows=100_000, threads=1))
    for name in ("summary", "per_class", "priors"):
        x, y = a.tables[name], b.tables[name]
        assert x.columns == y.columns
        for col in x.columns:
            if x[col].dtype.is_float():
                np.testing.assert_allclose(x[col].to_numpy(), y[col].to_numpy(), rtol=1e-6,
                                           atol=1e-9, err_msg=f"{name}.{col}")
            else:
                assert x[col].to_list() == y[col].to_list(), f"{name}.{col}"
    assert a.key == b.key
    assert a.key != analyze_cell(store, "m1", "d", StoreAnalysisOptions(smoothing=1.0)).key


def test_only_replaces_that_cells_rows_and_keeps_others(world, capsys):
    store, _, _ = world
    assert _gla(capsys, "analyze", "--store", store)[0] == 0
    before = publication.read_table(store, "summary")
    code, _, err = _gla(capsys, "analyze", "--store", store, "--only", "model=m1,dataset=d",
                        "--estimator", "eigen", "--estimator", "gla")
    assert code == 0, err
    after = publication.read_table(store, "summary")
    assert after.filter(pl.col("model") == "m2").equals(before.filter(pl.col("model") == "m2"))
    # eigen (now the methods' estimator) is added beside the earlier gla rows, which stay as they were
    m1 = pl.col("model") == "m1"
    assert after.height == before.height + 6
    assert set(after.filter(m1)["estimator"]) == {"eigen", "gla"}
    assert after.filter(m1 & (pl.col("estimator") == "gla")).equals(before.filter(m1))
    pri = publication.read_table(store, "priors")
    assert set(pri.filter(pl.col("model") == "m1")["estimator"]) == {"eigen", "gla"}
    assert set(pri.filter(pl.col("model") == "m2")["estimator"]) == {"gla"}


def test_fit_on_eval_refused_unless_allowed(world, capsys):
    store, _, _ = world
    code, _, err = _gla(capsys, "analyze", "--store", store, "--fit-split", "test")
    assert code == 2 and "--allow-fit-on-eval" in err and len(err.strip().splitlines()) == 1
    assert not (store / "results").exists()
    code, _, err = _gla(capsys, "analyze", "--store", store, "--fit-split", "test",
                        "--allow-fit-on-eval", "--quiet")
    assert code == 0, err


def test_options_pass_through(world, capsys, tmp_path):
    store, _, counts = world
    np.save(tmp_path / "uniform.npy", np.ones(C))
    base = ["analyze", "--store", store, "--only", "model=m1", "--quiet"]
    assert _gla(capsys, *base)[0] == 0
    plain = publication.read_table(store, "summary").sort("method")
    assert _gla(capsys, *base, "--target-prior", tmp_path / "uniform.npy")[0] == 0
    uni = publication.read_table(store, "summary").sort("method")
    # a uniform target prior adds a constant: same predictions
    assert uni["accuracy"].to_list() == plain["accuracy"].to_list()
    tail = np.full(C, 1.0)
    tail[0] = 50.0
    np.save(tmp_path / "skewed.npy", tail)
    assert _gla(capsys, *base, "--target-prior", tmp_path / "skewed.npy")[0] == 0
    sk = publication.read_table(store, "summary").sort("method")
    assert sk["accuracy"].to_list() != plain["accuracy"].to_list()
    for t in ("confidence", "nll"):
        code, _, err = _gla(capsys, *base, "--temperature", t)
        assert code == 0, (t, err)
        # the fitted temperature is recorded, and the zs NLL is scored at that temperature
        temp = publication.read_table(store, "priors")["temperature"].unique()
        assert temp.len() == 1 and temp[0] != 1.0, t
        scaled = publication.read_table(store, "summary").sort("method")
        assert scaled["nll"].to_list() != plain["nll"].to_list(), t
    code, _, err = _gla(capsys, *base, "--smoothing", "3")
    assert code == 0, err
    pc = publication.read_table(store, "per_class")
    ds = pc.filter(pl.col("method") == "gla").sort("class_index")["prior_downstream"].to_numpy()
    np.testing.assert_allclose(ds, (counts + 3) / (counts + 3).sum(), rtol=1e-9)


# --------------------------------------------------------------------------- bad input


def _cell(store, model, split, n_per_class=5, *, c=C, zs=None, ft=True, ft_width=None,
          labels=None, ids=None, names=None):
    rng = np.random.default_rng(zlib.crc32(f"{model}/{split}".encode()))
    y = np.repeat(np.arange(c), n_per_class) if labels is None else np.asarray(labels)
    n = len(y)
    z = rng.standard_normal((n, c)).astype(np.float32) if zs is None else zs
    f = rng.standard_normal((n, ft_width or c)).astype(np.float32) if ft else None
    meta = {"class_names": names or [f"class_{i}" for i in range(c)]}
    table = cf.build_table(ids or [f"{split}-{i}" for i in range(n)], split, y, z, f,
                           metadata=meta)
    cf.write_split(cf.cell_dir(store, model, "d"), split, [table])


def _bad_cells():
    """name -> (builder(store), expected message fragment)."""
    nan = np.zeros((5 * C, C), np.float32)
    nan[13, 4] = np.nan
    inf = np.zeros((5 * C, C), np.float32)
    inf[2, 1] = -np.inf
    y_hi = np.repeat(np.arange(C), 5)
    y_hi[17] = 99
    y_unknown = np.repeat(np.arange(C), 5)
    y_unknown[3] = -1
    y_missing = np.repeat(np.arange(C), 5)
    y_missing[y_missing == 6] = 0

    def both(**test_kw):
        def build(store):
            _cell(store, "bad", "val")
            _cell(store, "bad", "test", **test_kw)
        return build

    def val_only(store, **kw):
        _cell(store, "bad", "val", **kw)
        _cell(store, "bad", "test")

    return {
        "nan zs": (both(zs=nan), "part-test-00000.parquet: column zs has NaN/Inf (row 13, class 4)"),
        "inf val": (lambda s: val_only(s, zs=inf), "part-val-00000.parquet: column zs has NaN/Inf (row 2, class 1)"),
        "ft width": (both(ft_width=C + 2), "part-test-00000.parquet: column ft has width 12 but column zs has width 10"),
        "names width": (both(names=["a", "b"]), "part-test-00000.parquet: metadata lists 2 class names but column zs has width 10"),
        "label range": (both(labels=y_hi), "part-test-00000.parquet: column label 99 at row 17 is out of range [0, 9]"),
        "all unknown": (both(labels=np.full(5 * C, -1)), "part-test-00000.parquet: column label is -1 (unknown) in every row of eval split 'test'"),
        "fit unknown": (lambda s: val_only(s, labels=y_unknown), "part-val-00000.parquet: column label is -1 (unknown) at row 3; split 'val' needs labels"),
        "dup ids": (both(ids=[f"val-{i}" for i in range(5 * C)]), "column sample_id has duplicate id 'val-0'"),
        "empty class": (lambda s: val_only(s, labels=y_missing), "column label has no sample of class 6 ('class_6') in fit split 'val'"),
        "missing split": (lambda s: _cell(s, "bad", "test"), "split 'val' not found (splits present: test)"),
    }


def _part_pattern(fragment: str) -> str:
    """A message fragment naming ``part-<split>-<n>.parquet`` as a regex that accepts the
    part's generation tag (``part-<split>.<gen>-<n>.parquet``)."""
    out = []
    for piece in re.split(r"(part-\w+-\d+\.parquet)", fragment):
        m = re.fullmatch(r"part-(\w+)-(\d+)\.parquet", piece)
        out.append(rf"part-{m[1]}\.[0-9a-f]{{12}}-{m[2]}\.parquet" if m else re.escape(piece))
    return "".join(out)


def test_bad_cells_exit_2_one_line_results_untouched(world, capsys):
    store, _, _ = world
    assert _gla(capsys, "analyze", "--store", store, "--quiet")[0] == 0
    before = _snapshot(store / "results")
    assert {"summary.parquet", "per_class.parquet", "priors.parquet", "calibration.parquet"} <= \
        {k.rsplit("/", 1)[-1] for k in before}
    for name, (build, fragment) in _bad_cells().items():
        bad = cf.cell_dir(store, "bad", "d")
        build(store)
        code, out, err = _gla(capsys, "analyze", "--store", store)
        assert code == 2, (name, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and re.search(_part_pattern(fragment), lines[0]), (name, err)
        assert _snapshot(store / "results") == before, name
        for p in bad.iterdir():
            p.unlink()
        bad.rmdir()


def test_unknown_eval_labels_are_skipped_and_reported(world, capsys):
    store, _, _ = world
    y = np.repeat(np.arange(C), 5)
    y[[3, 20]] = -1
    _cell(store, "part", "val")
    _cell(store, "part", "test", labels=y)
    code, out, err = _gla(capsys, "analyze", "--store", store, "--only", "model=part")
    assert code == 0, err
    assert "2 eval rows with unknown label (-1) were not scored" in out
    s = publication.read_table(store, "summary")
    assert s["n"].to_list() == [5 * C - 2] * s.height


def test_label_free_estimator_fits_on_unlabelled_split(world, capsys):
    store, _, _ = world
    _cell(store, "free", "val", labels=np.full(5 * C, -1))
    _cell(store, "free", "test")
    base = ["analyze", "--store", store, "--only", "model=free", "--quiet"]
    code, _, err = _gla(capsys, *base)
    assert code == 2 and "split 'val' needs labels" in err
    code, _, err = _gla(capsys, *base, "--estimator", "prior-matching")
    assert code == 0, err
    pri = publication.read_table(store, "priors")
    assert set(pri["estimator"]) == {"prior-matching"}


def test_bad_options_exit_2_results_untouched(world, capsys, tmp_path):
    store, _, _ = world
    assert _gla(capsys, "analyze", "--store", store, "--quiet")[0] == 0
    before = _snapshot(store / "results")
    np.save(tmp_path / "short.npy", np.ones(C - 1))
    np.save(tmp_path / "bad_counts.npy", np.ones(3))
    np.save(tmp_path / "text.npy", np.array(["a"] * C))
    cases = [
        (["--estimator", "nope"], "--estimator: unknown 'nope'"),
        (["--temperature", "hot"], "--temperature: expected none, confidence, nll or a number"),
        (["--smoothing", "-1"], "--smoothing: must be >= 0"),
        (["--only", "model=zzz"], "--only matched no cell"),
        (["--only", "banana"], "--only: expected model=NAME,dataset=NAME"),
        (["--target-prior", tmp_path / "short.npy"], "short.npy: target prior has 9 values but the cell has 10 classes"),
        (["--target-prior", tmp_path / "missing.npy"], "missing.npy: file not found"),
        (["--target-prior", tmp_path / "text.npy"], "text.npy: target prior must be numbers"),
        (["--eval-split", "holdout"], "split 'holdout' not found (splits present: test, val)"),
    ]
    for argv, fragment in cases:
        code, _, err = _gla(capsys, "analyze", "--store", store, *argv)
        assert code == 2, (argv, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and fragment in lines[0], (argv, err)
        assert _snapshot(store / "results") == before, argv
    # a class-counts file whose width does not match the cells
    Store(store).write_class_counts("d", np.ones(3, np.int64))
    code, _, err = _gla(capsys, "analyze", "--store", store)
    assert code == 2 and "class_counts.parquet: column count has 3 classes but cell" in err
    assert _snapshot(store / "results") == before
    code, _, err = _gla(capsys, "analyze", "--store", store.parent / "nowhere")
    assert code == 2 and "store folder not found" in err


def test_failure_while_writing_leaves_results_untouched(world, capsys, monkeypatch):
    store, _, _ = world
    assert _gla(capsys, "analyze", "--store", store, "--quiet")[0] == 0
    before = _snapshot(store / "results")
    calls = {"n": 0}
    real = pl.DataFrame.write_parquet

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:  # the third table fails after two were written to temp files
            raise OSError("disk full")
        return real(self, *a, **k)

    monkeypatch.setattr(pl.DataFrame, "write_parquet", flaky)
    with pytest.raises(OSError):
        main(["analyze", "--store", str(store), "--quiet", "--smoothing", "2"])
    assert _snapshot(store / "results") == before  # the unfinished run's files are gone too


def test_eval_split_is_streamed_in_bounded_batches(world, monkeypatch):
    """analyze_cell never hands evaluate more than batch_rows rows, and holds few at once."""
    import threading

    from gla.pipeline import cell_analysis

    store, _, _ = world
    real = cell_analysis.evaluate
    seen, live, peak = [], [0], [0]
    lock = threading.Lock()

    def spy(chunks, fitted, options=None, predictions=None):
        chunks = list(chunks)
        with lock:
            seen.extend(len(c[2]) for c in chunks)
            live[0] += 1
            peak[0] = max(peak[0], live[0])
        try:
            return real(chunks, fitted, options, predictions)
        finally:
            with lock:
                live[0] -= 1

    monkeypatch.setattr(cell_analysis, "evaluate", spy)
    res = analyze_cell(store, "m1", "d", StoreAnalysisOptions(batch_rows=64, threads=2))
    assert max(seen) <= 64 and sum(seen) == 100 * C
    assert peak[0] <= 2
    assert res.summary["n"].to_list() == [100 * C] * 6


def test_options_from_config_mapping():
    o = StoreAnalysisOptions.from_mapping(
        {"estimators": ["eigen", "gla"], "fit_split": "val", "eval_split": "test",
         "temperature": "none", "smoothing": 0.5, "target_prior": "", "allow_fit_on_eval": False,
         "unrelated": 1}
    )
    assert o.estimators == ("eigen", "gla") and o.temperature is None and o.target_prior is None
    assert o.smoothing == 0.5
    assert StoreAnalysisOptions.from_mapping({"temperature": "nll"}).temperature == "nll"
    assert o.fingerprint() == StoreAnalysisOptions.from_mapping({"estimators": ["eigen", "gla"],
                                                          "smoothing": 0.5}).fingerprint()
    assert o.fingerprint() != StoreAnalysisOptions(estimators=("gla", "eigen"), smoothing=0.5).fingerprint()


def test_unreadable_results_table_is_rebuilt_from_the_cell_caches(world, capsys):
    """A damaged file of the latest run is named by readers; the next analysis publishes a
    fresh run from results/cells/*."""
    store, _, _ = world
    assert _gla(capsys, "analyze", "--store", store, "--quiet")[0] == 0
    good = publication.read_table(store, "per_class")
    publication.table_path(store, "per_class").write_bytes(b"not parquet")
    code, _, err = _gla(capsys, "report", "--store", store)
    assert code == 2 and "per_class.parquet" in err and len(err.strip().splitlines()) == 1, err
    code, _, err = _gla(capsys, "analyze", "--store", store, "--quiet")
    assert code == 0, err
    assert publication.read_table(store, "per_class").equals(good)


def test_multi_part_float16_cell_matches_reference(tmp_path):
    """Extraction writes several float16 parts per split: same figures as numpy on the whole."""
    pi_p = zipf_prior(C, seed=3)
    meta = {"class_names": [f"c{i}" for i in range(C)]}
    data = {}
    for split, n, seed, parts in (("val", 20, 1, 2), ("test", 60, 2, 3)):
        w = planted_world(C, n, pi_p, seed=seed, signal=1.2, ft_signal=None)
        zs16 = w.zs.astype(np.float16)
        data[split] = (zs16.astype(np.float32), w.labels)
        ids = [f"{split}-{i}" for i in range(len(w.labels))]
        cuts = np.linspace(0, len(ids), parts + 1).astype(int)
        tables = [cf.build_table(ids[a:b], split, w.labels[a:b], zs16[a:b], metadata=meta,
                                 dtype="float16")
                  for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
        cf.write_split(cf.cell_dir(tmp_path, "m", "d"), split, tables)
    res = analyze_cell(tmp_path, "m", "d", StoreAnalysisOptions(batch_rows=50))
    zs, y = data["test"]
    log_pp = np.log(res.tables["priors"].sort("class_index")["prior"].to_numpy())
    acc = dict(zip(res.summary["method"].to_list(), res.summary["accuracy"].to_list(), strict=True))
    assert set(acc) == {"zs", "zs_debiased"}
    assert acc["zs"] == pytest.approx(np.mean(zs.argmax(1) == y), abs=1e-12)
    assert acc["zs_debiased"] == pytest.approx(np.mean((zs - log_pp).argmax(1) == y), abs=1e-12)
    assert res.tables["per_class"]["class_name"].to_list()[:2] == ["c0", "c1"]


def test_analyze_does_not_trust_latest_file(world, capsys):
    """results/LATEST is for readers without gla: gla itself goes by the commit records."""
    store, _, _ = world
    assert _gla(capsys, "analyze", "--store", store, "--quiet")[0] == 0
    run = publication.latest(store)
    assert (store / "results" / "LATEST").read_text().strip() == run.id
    (store / "results" / "LATEST").write_text("20000101T000000.000Z-000000\n")
    assert _gla(capsys, "analyze", "--store", store, "--quiet")[0] == 0
    assert publication.latest(store).id == run.id  # no change: no new run
    assert publication.read_table(store, "summary").height == 6 + 2


def test_help_lists_every_estimator():
    """--estimator's help names the estimators without importing numpy; it must not go stale."""
    from gla.analyze.priors import ESTIMATORS
    from gla.pipeline.commands.analyze_cmd import DEFAULT_ESTIMATORS

    assert tuple(DEFAULT_ESTIMATORS) == tuple(ESTIMATORS)


def test_zero_training_count_names_the_counts_file_and_option(world, capsys):
    store, _, counts = world
    assert _gla(capsys, "analyze", "--store", store, "--quiet")[0] == 0
    before = _snapshot(store / "results")
    zero = counts.copy()
    zero[4] = 0
    Store(store).write_class_counts("d", zero)
    code, _, err = _gla(capsys, "analyze", "--store", store, "--quiet")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert "class_counts.parquet: column count is 0 for class 4 ('class_4')" in lines[0]
    assert "--smoothing" in lines[0]
    assert _snapshot(store / "results") == before
    code, _, err = _gla(capsys, "analyze", "--store", store, "--quiet", "--smoothing", "1")
    assert code == 0, err


@pytest.mark.parametrize("argv, hint", [
    (["analyze", "--store", "S", "--estimater", "gla"], "did you mean '--estimator'?"),
    (["analyze", "--store=S", "--labelissues"], "did you mean '--label-issues'?"),
    (["analyz", "--store", "S"], "did you mean 'analyze'?"),
    (["analyze", "--store", "S", "--target-estimator", "emm"], "did you mean 'em'?"),
    (["analyze", "--store", "S", "--groups", "released2"], "did you mean 'released'?"),
])
def test_usage_errors_suggest_the_closest_name(capsys, argv, hint):
    code, _, err = _gla(capsys, *argv)
    assert code == 2 and len(err.strip().splitlines()) == 1 and hint in err, err


def test_usage_error_without_a_close_name_has_no_suggestion(capsys):
    code, _, err = _gla(capsys, "analyze", "--store", "S", "--zzzz")
    assert code == 2 and "unrecognized arguments: --zzzz" in err and "did you mean" not in err
