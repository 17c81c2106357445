"""``gla analyze --target-estimator`` / ``--label-issues`` and ``gla import --window`` end to
end on a planted world in a store: shifted deployment windows, planted wrong labels."""

from __future__ import annotations

import hashlib

import numpy as np
import polars as pl
import pytest
from gla.analyze import schema, synthetic
from gla.pipeline import publication
from gla.pipeline.cli import main

C = 8
WINDOWS = ("2024-01", "2024-02", "2024-03")


def _gla(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _save(tmp, name, w, labels=None):
    np.save(tmp / f"{name}-y.npy", w.labels if labels is None else labels)
    np.save(tmp / f"{name}-zs.npy", w.zs)
    np.save(tmp / f"{name}-ft.npy", w.ft)
    return [f"--labels={tmp}/{name}-y.npy", f"--zs={tmp}/{name}-zs.npy", f"--ft={tmp}/{name}-ft.npy"]


@pytest.fixture
def shifted_store(tmp_path, capsys):
    """val: balanced, clean; test: three windows, each from its own label distribution,
    with 5 % of the labels flipped."""
    sig = {"signal": 1.5, "ft_signal": 1.5}
    pi_s = synthetic.zipf_prior(C, 1.0, 3)
    val = synthetic.planted_world(C, 150, seed=0, pi_s=pi_s, **sig)
    targets = [synthetic.zipf_prior(C, 1.5, 10 + i) for i in range(3)]
    parts = [synthetic.shifted_world(val, t, 2000, seed=20 + i, **sig) for i, t in enumerate(targets)]
    zs = np.vstack([p.zs for p in parts])
    ft = np.vstack([p.ft for p in parts])
    y = np.concatenate([p.labels for p in parts])
    test = synthetic.PlantedWorld(zs, ft, y, val.pi_p, val.pi_s)
    noisy, flipped = synthetic.flip_labels(y, 0.05, C, seed=1)
    (tmp_path / "win.txt").write_text("\n".join(np.repeat(WINDOWS, 2000)) + "\n")
    store = tmp_path / "store"
    for split, w, lab, extra in (("val", val, None, []), ("test", test, noisy, [f"--window={tmp_path}/win.txt"])):
        code, _, err = _gla(capsys, "import", "--store", store, "--model", "m", "--dataset", "d",
                            "--split", split, *_save(tmp_path, split, w, lab), *extra)
        assert code == 0, err
    truth = [synthetic.label_counts(t, 2000) / 2000 for t in targets]
    return store, truth, flipped


def test_target_priors_windows_and_label_issues_end_to_end(shifted_store, capsys):
    store, truth, flipped = shifted_store
    code, _, err = _gla(capsys, "analyze", "--store", store, "--target-estimator", "em",
                        "--target-estimator", "bbse", "--label-issues", "--fdr", "0.1", "--quiet")
    assert code == 0, err
    res = publication.latest_dir(store)
    summary = pl.read_parquet(res / "summary.parquet")
    tp = summary.filter(pl.col("method") == "gla_tp")
    assert sorted(tp["target_estimator"].to_list()) == ["bbse", "em"]
    assert (summary.filter(pl.col("method") != "gla_tp")["target_estimator"] == "").all()
    for name in ("summary", "per_class", "target_priors", "window_accuracy", "label_issues",
                 "class_confusions"):
        df = pl.read_parquet(res / f"{name}.parquet")
        assert df.select(schema.keys(name)).is_duplicated().sum() == 0, name
    priors = pl.read_parquet(res / "target_priors.parquet")
    assert dict(priors.schema) == schema.table("target_priors").dtypes
    for w, name in enumerate(("2024-01", "2024-02", "2024-03")):
        est = priors.filter((pl.col("target_estimator") == "em") & (pl.col("window") == name)) \
            .sort("class_index")["prior"].to_numpy()
        assert np.abs(est - truth[w]).sum() < 0.15
    acc = pl.read_parquet(res / "window_accuracy.parquet")
    for w in range(3):
        a = acc.filter(pl.col("window_index") == w)
        gla = a.filter(pl.col("method") == "gla")["accuracy"].item()
        tracked = a.filter((pl.col("method") == "gla_tp") & (pl.col("target_estimator") == "em"))["accuracy"].item()
        assert tracked > gla
    issues = pl.read_parquet(res / "label_issues.parquet")
    flagged = issues.filter(pl.col("flagged"))
    rows = np.array([int(s.rsplit("-", 1)[1]) for s in flagged["sample_id"]])
    precision = flipped[rows].mean()
    recall = flipped[rows].sum() / flipped.sum()
    assert precision > 0.7 and recall > 0.3
    conf = pl.read_parquet(res / "class_confusions.parquet")
    assert conf.height and (conf["label"] != conf["suggested_label"]).all()
    assert conf["count"].is_sorted(descending=True)


def test_import_window_column_and_bad_window_input(shifted_store, tmp_path, capsys):
    store, _, _ = shifted_store
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in store.rglob("*") if p.is_file()}
    (tmp_path / "short.txt").write_text("a\nb\n")
    code, _, err = _gla(capsys, "import", "--store", store, "--model", "m", "--dataset", "d",
                        "--split", "test", f"--labels={tmp_path}/test-y.npy",
                        f"--zs={tmp_path}/test-zs.npy", f"--ft={tmp_path}/test-ft.npy",
                        f"--window={tmp_path}/short.txt")
    assert code == 2 and "short.txt" in err and "windows" in err
    code, _, err = _gla(capsys, "import", "--store", store, "--model", "m", "--dataset", "d",
                        "--split", "test", f"--labels={tmp_path}/test-y.npy",
                        f"--zs={tmp_path}/test-zs.npy", f"--ft={tmp_path}/test-ft.npy",
                        "--window", "week")
    assert code == 2 and "--window week" in err
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in store.rglob("*") if p.is_file()}
    assert after == before
    # a window column of a Parquet input
    z = np.load(tmp_path / "test-zs.npy")
    pl.DataFrame({"zs": z.tolist(), "week": [f"w{i // 3000}" for i in range(len(z))]}).write_parquet(tmp_path / "t.parquet")
    code, _, err = _gla(capsys, "import", "--store", store, "--model", "m2", "--dataset", "d",
                        "--split", "test", f"--labels={tmp_path}/test-y.npy",
                        f"--zs={tmp_path}/t.parquet:zs", "--window", "week")
    assert code == 0, err


def test_fdr_needs_label_issues(shifted_store, capsys):
    store, _, _ = shifted_store
    code, _, err = _gla(capsys, "analyze", "--store", store, "--fdr", "0.2")
    assert code == 2 and "--fdr" in err
    code, _, err = _gla(capsys, "analyze", "--store", store, "--label-issues", "--fdr", "1.5")
    assert code == 2 and "--fdr" in err


def _audit_tables(store) -> dict[str, bytes]:
    res = publication.latest_dir(store)
    return {n: pl.read_parquet(res / f"{n}.parquet").write_ipc(None).getvalue()
            for n in ("target_priors", "window_accuracy", "label_issues", "class_confusions")}


def test_large_split_paths_give_the_same_tables(shifted_store, capsys, monkeypatch):
    """A split over the in-memory budget is streamed from the store, with EM's posteriors in
    an unlinked scratch file; without room for that file they are recomputed every pass.
    All three paths publish the same audit tables, and the scratch file leaves nothing."""
    import tempfile

    from gla.pipeline import cell_audits

    store, _, _ = shifted_store
    argv = ("analyze", "--store", store, "--target-estimator", "em", "--target-estimator", "bbse",
            "--label-issues", "--quiet", "--force")
    assert _gla(capsys, *argv)[0] == 0
    in_memory = _audit_tables(store)
    monkeypatch.setattr(cell_audits, "_CACHE_BYTES", 0)
    scratch = store.parent / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    opened = []
    real = tempfile.TemporaryFile

    def spy(*a, **k):
        opened.append(1)
        return real(*a, **k)

    monkeypatch.setattr(tempfile, "TemporaryFile", spy)
    assert _gla(capsys, *argv)[0] == 0
    assert opened and list(scratch.iterdir()) == []
    assert _audit_tables(store) == in_memory

    class Full:  # a scratch file on a full disk
        def __init__(self, *a, **k):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def tell(self):
            return 0

        def write(self, data):
            raise OSError(28, "No space left on device")

        def close(self):
            pass

    monkeypatch.setattr(tempfile, "TemporaryFile", Full)
    code, _, err = _gla(capsys, *argv)
    assert code == 0 and "no room for the EM scratch file" in err and "No space left" in err
    assert _audit_tables(store) == in_memory


def test_unlabelled_deployment_split_gets_its_label_distribution(tmp_path, capsys):
    """Deployment data has no labels: imported without --labels, it cannot be scored, but
    its π_t is estimated (and reported); without --target-estimator it is refused."""
    val = synthetic.planted_world(C, 100, seed=3)
    target = synthetic.zipf_prior(C, 1.5, 8)
    dep = synthetic.shifted_world(val, target, 4000, seed=4)
    store = tmp_path / "store"
    argv = ["--store", store, "--model", "m", "--dataset", "d"]
    assert _gla(capsys, "import", *argv, "--split", "val", *_save(tmp_path, "val", val))[0] == 0
    np.save(tmp_path / "dep-zs.npy", dep.zs)
    np.save(tmp_path / "dep-ft.npy", dep.ft)
    code, out, err = _gla(capsys, "import", *argv, "--split", "dep", f"--zs={tmp_path}/dep-zs.npy",
                          f"--ft={tmp_path}/dep-ft.npy")
    assert code == 0, err
    from gla.pipeline.store import Store

    assert (Store(store).read_split("m", "d", "dep", columns=("label",)).labels == -1).all()
    code, _, err = _gla(capsys, "analyze", "--store", store, "--eval-split", "dep")
    assert code == 2 and "--target-estimator" in err and len(err.strip().splitlines()) == 1
    assert not (store / "results" / "runs").exists()
    code, out, err = _gla(capsys, "analyze", "--store", store, "--eval-split", "dep",
                          "--target-estimator", "em", "--target-estimator", "bbse")
    assert code == 0, err
    assert "no scored cells" in out and "unlabelled_eval" in out
    res = publication.latest_dir(store)
    assert pl.read_parquet(res / "summary.parquet").height == 0
    warn = pl.read_parquet(res / "warnings.parquet")
    assert "unlabelled_eval" in warn["code"].to_list()
    tp = pl.read_parquet(res / "target_priors.parquet")
    assert tp["label_share"].is_null().all()
    truth = synthetic.label_counts(target, 4000) / 4000
    for e in ("em", "bbse"):
        est = tp.filter(pl.col("target_estimator") == e).sort("class_index")["prior"].to_numpy()
        assert np.abs(est - truth).sum() < 0.1, e
    assert _gla(capsys, "report", "--store", store)[0] == 0
    page = (store / "report" / "index.html").read_text()
    assert "Cells with an unlabelled eval split" in page and "dep split, estimated without its labels" in page
