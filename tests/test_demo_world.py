"""The embedded default: sources, world definition, committed assets, and a reduced run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from gla.extract import sources
from gla.extract.demo import world
from gla.pipeline import demo, publication

ASSETS = demo.ASSETS


# ------------------------------------------------------------------ sources


def test_fashion_mnist_pools():
    x, y, names = sources.load_fashion_mnist("test")
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8
    assert y.shape == (10000,) and set(np.unique(y)) == set(range(10))
    assert np.bincount(y).tolist() == [1000] * 10  # Fashion-MNIST's test set is balanced
    assert names[0] == "t-shirt" and names[9] == "ankle boot" and len(names) == 10
    xt, yt, _ = sources.load_fashion_mnist("train")
    assert xt.shape == (60000, 28, 28) and np.bincount(yt).tolist() == [6000] * 10


def test_fashion_mnist_missing_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("GLA_DATA_DIR", str(tmp_path))
    with pytest.raises(sources.SourceError, match="GLA_DATA_DIR"):
        sources.load_fashion_mnist("test")


def test_animal_pools_are_fixed_disjoint_and_balanced():
    _, y_all, names = sources.load_animal_mnist("all")
    assert names == ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"]
    train = sources.animal_pool_indices(y_all, "train")
    test = sources.animal_pool_indices(y_all, "test")
    assert np.intersect1d(train, test).size == 0
    assert train.size + test.size == y_all.size
    assert np.bincount(y_all[train]).tolist() == [800] * 10
    assert np.bincount(y_all[test]).tolist() == [200] * 10
    # the same on every call (seeded), so eval images never leak into training
    assert np.array_equal(test, sources.animal_pool_indices(y_all, "test"))


def test_numpy_only_unpickler_refuses_code(tmp_path):
    import gzip
    import pickle

    path = tmp_path / "evil.gz"
    with gzip.open(path, "wb") as f:
        pickle.dump(print, f)  # a global that is not a numpy array builder
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        sources._load_numpy_pickle_gz(path)


# ------------------------------------------------------------------ world


def test_pretrain_counts_are_a_100_to_1_long_tail_over_all_classes():
    counts = world.pretrain_counts()
    assert sorted(counts) == sorted(world.CLASSES) and len(counts) == 20
    v = np.array(sorted(counts.values(), reverse=True))
    assert v[0] == world.PRETRAIN_MAX
    assert v[0] / v[-1] == pytest.approx(world.PRETRAIN_RATIO, rel=0.05)
    assert np.all(np.diff(v) <= 0)


def test_finetune_order_differs_from_pretraining():
    truth = world.pretrain_counts()
    for ds, names in world.DATASETS.items():
        ft = world.finetune_counts(ds)
        pre = np.array([truth[c] for c in names])
        assert ft.max() == world.FINETUNE_MAX and len(ft) == len(names)
        assert np.corrcoef(np.argsort(np.argsort(ft)), np.argsort(np.argsort(pre)))[0, 1] < 0.9


def test_draw_indices_respects_counts_and_exclusion():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 10)
    first = world.draw_indices(labels, np.array([5, 2, 1]), rng)
    assert np.bincount(labels[first], minlength=3).tolist() == [5, 2, 1]
    second = world.draw_indices(labels, np.array([5, 8, 9]), rng, exclude=first)
    assert np.intersect1d(first, second).size == 0
    with pytest.raises(ValueError, match="class 0"):
        world.draw_indices(labels, np.array([11, 0, 0]), rng)


def test_caption_templates_have_one_slot():
    assert all(t.count("{}") == 1 for t in world.TEMPLATES)
    committed = (ASSETS / "templates.txt").read_text().split("\n")
    assert [t for t in committed if t] == world.TEMPLATES


# ------------------------------------------------------------------ committed assets


def test_frequency_file_matches_the_world():
    doc = json.loads((ASSETS / "pretrain_frequencies.json").read_text())
    truth = world.pretrain_counts()
    total = sum(truth.values())
    for ds, names in world.DATASETS.items():
        assert list(doc[ds]) == names
        for name in names:
            assert doc[ds][name]["count"] == truth[name]
            assert doc[ds][name]["share"] == pytest.approx(truth[name] / total)
    assert sum(v["share"] for d in doc.values() for v in d.values()) == pytest.approx(1.0)


def test_train_counts_files_match_the_world():
    for ds in world.DATASETS:
        lines = (ASSETS / f"train-counts-{ds}.csv").read_text().split()
        assert lines[0] == "class_index,count"
        counts = [int(line.split(",")[1]) for line in lines[1:]]
        assert counts == world.finetune_counts(ds).tolist()


def test_assets_fit_the_size_budget():
    total = sum(p.stat().st_size for p in ASSETS.iterdir())
    assert total <= 25 * 2**20


def test_finetuned_checkpoints_have_the_documented_format():
    from safetensors import safe_open

    for ds, names in world.DATASETS.items():
        with safe_open(str(ASSETS / f"ft-{ds}.safetensors"), "pt") as f:
            meta = f.metadata()
            keys = set(f.keys())
            w = f.get_tensor("head.weight")
        assert meta == {"format": "gla-ft/1", "arch": "gla-tiny-clip",
                        "num_classes": str(len(names)), "normalize": "true"}
        assert "head.bias" in keys and all(k.startswith(("visual.", "head.")) for k in keys)
        assert tuple(w.shape) == (len(names), 64)


def test_committed_tiny_clip_loads_with_open_clip():
    import open_clip
    import torch

    open_clip.add_model_config(ASSETS / "gla-tiny-clip.json")
    model = open_clip.create_model("gla-tiny-clip", pretrained=str(ASSETS / "gla-tiny-clip.safetensors"))
    tok = open_clip.get_tokenizer("gla-tiny-clip")
    with torch.no_grad():
        img = model.encode_image(torch.zeros(2, 3, 28, 28))
        txt = model.encode_text(tok(["a photo of a bag.", "a drawing of a zebra."]))
    assert img.shape == (2, 64) and txt.shape == (2, 64)
    assert tok(["x"]).shape == (1, 16)  # the real CLIP BPE, truncated to the model's context


# ------------------------------------------------------------------ reduced demo end to end


def test_reduced_demo_end_to_end(tmp_path, capsys):
    import polars as pl
    from gla.pipeline.cli import main

    store = tmp_path / "store"
    rc = main(["demo", "--store", str(store), "--workers", "0", "--limit-per-class", "30", "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "Accuracy on the balanced test split" in out and "Spearman" in out
    summary = publication.read_table(store, "summary")
    shifted = {"fashion-blur", "animals-noise", "fashion-tops-noise"}
    assert set(summary["dataset"]) == {"fashion", "animals"} | shifted
    assert set(summary["method"]) == {"zs", "zs_debiased", "ft", "ft_la", "ensemble", "gla", "wiseft@0.5",
                                      "gla_tp"}
    # the planted audits: π_t tracked over three deploy windows, label issues in the audit split
    tp = publication.read_table(store, "target_priors")
    assert set(tp["dataset"]) == {"fashion", "animals"}
    assert set(tp["window"].drop_nulls()) == {"deploy-1", "deploy-2", "deploy-3"}
    assert "Planted wrong labels" in out and "Label shift" in out
    summary = summary.filter(pl.col("method") != "gla_tp")  # scored on the deploy windows
    n = dict(summary.select("dataset", "n").unique().iter_rows())
    assert n == {"fashion": 100, "animals": 100, "fashion-blur": 100, "animals-noise": 100,
                 "fashion-tops-noise": 40}  # 30 per class − 20 for val; the tops are 4 classes
    rob = publication.read_table(store, "robustness")
    assert set(rob["dataset"]) == shifted and set(rob["source_dataset"]) == {"fashion", "animals"}
    assert (store / "report" / "index.html").stat().st_size > 10_000
    agreement = demo.prior_agreement(publication.latest_dir(store), demo.true_frequencies())
    assert agreement["spearman"].is_finite().all()
    # a second run does no work: the same tables, nothing recomputed
    before = publication.run_ids(store)
    assert main(["demo", "--store", str(store), "--workers", "0", "--limit-per-class", "30",
                 "--no-progress"]) == 0
    assert publication.run_ids(store) == before  # no new run


def test_full_demo_shows_what_gla_is_for(tmp_path):
    """The committed world, run in full: the claims the README makes about it."""
    import polars as pl
    from gla.pipeline.matrix_run import run_config

    config = demo.demo_config(tmp_path / "store", workers=0)
    assert run_config(config, progress=False, quiet=True).ok
    results = publication.latest_dir(tmp_path / "store")
    acc = {(r["dataset"], r["method"]): r["accuracy"]
           for r in pl.read_parquet(results / "summary.parquet").iter_rows(named=True)}
    for ds in ("fashion", "animals"):
        assert acc[ds, "zs_debiased"] > acc[ds, "zs"]
        for baseline in ("zs", "ft", "ensemble", "wiseft@0.5"):  # the paper: gla beats WiSE-FT
            assert acc[ds, "gla"] > acc[ds, baseline], (ds, baseline)
    agreement = demo.prior_agreement(results, demo.true_frequencies()).filter(pl.col("estimator") == "gla")
    assert (agreement["spearman"] >= 0.8).all(), agreement
    groups = demo.group_gains(results)
    for ds in ("fashion", "animals"):
        g = groups.filter(pl.col("dataset") == ds)
        zs = g.filter(pl.col("method") == "zs").row(0, named=True)
        gla = g.filter(pl.col("method") == "gla").row(0, named=True)
        gains = {k: gla[k] - zs[k] for k in ("acc_head", "acc_medium", "acc_tail")}
        assert max(gains, key=gains.get) == "acc_tail", (ds, gains)
