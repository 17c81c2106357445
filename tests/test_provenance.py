"""Provenance rows against the store's own records, read independently of the tool's code.

The expected values are taken from the raw manifests (JSON), the Parquet schema metadata,
``hashlib`` over the checkpoint files, and the analysis options; the tool builds its rows
through ``pipeline.store`` and ``pipeline.provenance``.
"""

from __future__ import annotations

import calendar
import hashlib
import json
import os
import subprocess
import sys
import time

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from fixtures_tiny_clip import tiny_clip_fixture  # noqa: F401
from gla.extract import cellformat as cf
from gla.pipeline import provenance
from gla.pipeline.cell_analysis import StoreAnalysisOptions, analyze_cell
from gla.pipeline.cli import main
from gla.pipeline.distshift import write_shift
from gla.pipeline.synthetic import write_matrix

C = 6


def _manifest(store, model, dataset, split) -> dict:
    cell = store / "logits" / model / dataset
    record = json.loads((cell / "_cell.json").read_text())
    return json.loads((cell / record["splits"][split]).read_text())


def _expected_fingerprint(store, model, splits, counts_dataset) -> str:
    """sha256 over (label, rows, part checksums) of each input split, then the counts file."""
    h = hashlib.sha256()
    for label, dataset, split in splits:
        m = _manifest(store, model, dataset, split)
        h.update(f"{label}:{m['rows']}:{','.join(p['sha256'] for p in m['parts'])}\n".encode())
    counts = store / "datasets" / counts_dataset / "class_counts.parquet"
    if counts.is_file():
        h.update(f"counts:{hashlib.sha256(counts.read_bytes()).hexdigest()}\n".encode())
    return h.hexdigest()[:16]


def _utc_seconds(iso: str) -> int:
    return calendar.timegm(time.strptime(iso, "%Y-%m-%dT%H:%M:%SZ"))


def _gla(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def imported(tmp_path, capsys):
    """A cell brought in with ``gla import``: val 30 rows, test 60 rows (6 of them unlabelled)."""
    rng = np.random.default_rng(1)
    d = tmp_path / "in"
    d.mkdir()
    for split, n in (("val", 30), ("test", 60)):
        y = np.arange(n) % C
        if split == "test":
            y[:6] = -1
        zs = (rng.normal(size=(n, C)) * 3).astype(np.float32)
        np.save(d / f"{split}_y.npy", y)
        np.save(d / f"{split}_zs.npy", zs)
        np.save(d / f"{split}_ft.npy", (zs + rng.normal(size=(n, C))).astype(np.float32))
    store = tmp_path / "s"
    t0 = int(time.time())
    for split in ("val", "test"):
        code, _, err = _gla(capsys, "import", "--store", store, "--model", "m", "--dataset", "d",
                            "--split", split, "--labels", d / f"{split}_y.npy", "--zs", d / f"{split}_zs.npy",
                            "--ft", d / f"{split}_ft.npy")
        assert code == 0, err
    np.save(d / "counts.npy", np.array([5, 9, 13, 21, 30, 40]))
    assert _gla(capsys, "import", "--store", store, "--dataset", "d", "--train-counts", d / "counts.npy")[0] == 0
    return store, d, t0, int(time.time()) + 1


def test_imported_cell_rows_match_manifests_and_options(imported, capsys):
    store, d, t0, t1 = imported
    prior = d / "target.npy"
    np.save(prior, np.linspace(1, 2, C))
    code, _, err = _gla(capsys, "analyze", "--store", store, "--estimator", "gla", "--estimator", "eigen",
                        "--temperature", "confidence", "--smoothing", "0.5", "--target-prior", prior,
                        "--workers", "0", "--quiet")
    assert code == 0, err
    prov = pl.read_parquet(store / "results" / "provenance.parquet").sort("estimator")
    priors = pl.read_parquet(store / "results" / "priors.parquet")
    assert prov["estimator"].to_list() == ["eigen", "gla"]
    options = StoreAnalysisOptions(estimators=("gla", "eigen"), temperature="confidence", smoothing=0.5,
                                   target_prior=str(prior))
    val, test = _manifest(store, "m", "d", "val"), _manifest(store, "m", "d", "test")
    sealed = [val["sealed_at"], test["sealed_at"]]
    for r in prov.iter_rows(named=True):
        temp = priors.filter(pl.col("estimator") == r["estimator"])["temperature"][0]
        assert r["temperature"] == pytest.approx(temp) and r["temperature"] != 1.0
        assert (r["fit_split"], r["n_fit"], r["eval_split"], r["n_eval"]) == ("val", 30, "test", 54)
        assert r["smoothing"] == 0.5
        assert r["target_prior_source"] == f"{prior} (sha256 {hashlib.sha256(prior.read_bytes()).hexdigest()[:16]})"
        assert r["options_fingerprint"] == options.fingerprint()
        assert r["code_version"] == provenance.code_version()
        # imported logits name no model, checkpoint or templates
        assert r["model_arch"] is None and r["model_weights"] is None
        assert r["finetuned_sha256"] is None and r["templates_sha256"] is None
        assert r["dataset_fingerprint"] == _expected_fingerprint(
            store, "m", [("val", "d", "val"), ("test", "d", "test")], "d")
        assert r["created_at"] == max(sealed)
        assert t0 <= _utc_seconds(r["created_at"]) <= t1
    summary = pl.read_parquet(store / "results" / "summary.parquet")
    assert set(summary["n"].to_list()) == {54}  # n_eval is the rows the summary scored


def test_fingerprint_follows_content_and_created_at_follows_reseal(imported, capsys):
    store, d, _, _ = imported
    first = analyze_cell(store, "m", "d").tables["provenance"].row(0, named=True)
    time.sleep(1.1)
    _gla(capsys, "import", "--store", store, "--model", "m", "--dataset", "d", "--split", "test",
         "--labels", d / "test_y.npy", "--zs", d / "test_zs.npy", "--ft", d / "test_ft.npy")
    again = analyze_cell(store, "m", "d").tables["provenance"].row(0, named=True)
    assert again["dataset_fingerprint"] == first["dataset_fingerprint"]  # same bytes re-imported
    assert again["created_at"] > first["created_at"]  # but sealed later
    np.save(d / "test_zs.npy", np.load(d / "test_zs.npy") + 1)
    _gla(capsys, "import", "--store", store, "--model", "m", "--dataset", "d", "--split", "test",
         "--labels", d / "test_y.npy", "--zs", d / "test_zs.npy", "--ft", d / "test_ft.npy")
    changed = analyze_cell(store, "m", "d").tables["provenance"].row(0, named=True)
    assert changed["dataset_fingerprint"] != first["dataset_fingerprint"]


def test_manifest_without_seal_time_uses_newest_part_mtime(imported):
    store, _, _, _ = imported
    cell = store / "logits" / "m" / "d"
    record = json.loads((cell / "_cell.json").read_text())
    newest = 0
    for split in ("val", "test"):
        path = cell / record["splits"][split]
        doc = json.loads(path.read_text())
        doc.pop("sealed_at")
        path.write_text(json.dumps(doc))
        newest = max([newest, *(p["mtime_ns"] for p in doc["parts"])])
    row = analyze_cell(store, "m", "d").tables["provenance"].row(0, named=True)
    assert row["created_at"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(newest / 1e9))


def test_extracted_cell_names_model_checkpoints_and_templates(tiny_clip, tmp_path):
    from gla.extract.run import extract_cell

    tc = tiny_clip
    ds = {"name": "imgs", "kind": "imagefolder", "root": str(tc.images),
          "splits": {"val": {"per_class": 2}, "test": {"rest": True}}}
    spec = tc.model_spec(finetuned={"imgs": str(tc.finetuned)})
    extract_cell(tmp_path / "s", spec, ds, {"batch_size": 4, "num_workers": 0, "shard_rows": 50},
                 progress=False)
    store = tmp_path / "s"
    row = analyze_cell(store, "tiny", "imgs").tables["provenance"].row(0, named=True)
    test = _manifest(store, "tiny", "imgs", "test")
    meta = json.loads(pq.read_schema(store / "logits" / "tiny" / "imgs" / test["parts"][0]["file"])
                      .metadata[b"gla"])
    assert row["model_arch"] == tc.arch
    assert row["model_weights"] == hashlib.sha256(tc.checkpoint.read_bytes()).hexdigest()
    assert row["finetuned_sha256"] == hashlib.sha256(tc.finetuned.read_bytes()).hexdigest()
    assert row["templates_sha256"] == meta["templates_hash"] and row["templates_sha256"]
    assert (row["n_fit"], row["n_eval"]) == (6, 6)
    assert row["created_at"] == max(test["sealed_at"], _manifest(store, "tiny", "imgs", "val")["sealed_at"])


@pytest.mark.parametrize(("identity", "weights"), [
    ({"arch": "ViT-B-32", "pretrained": "openai"}, "openai"),
    ({"arch": "ViT-B-32", "pretrained": "random-init"}, "none"),
    ({"arch": "ViT-B-32", "checkpoint_sha256": "ab" * 32}, "ab" * 32),
    ({"name": "m", "source": "import"}, None),
])
def test_model_weights_from_identity(identity, weights):
    assert provenance.model_identity({"model": identity})["model_weights"] == weights
    assert provenance.is_random_init({"model": identity}) == (weights == "none")


def test_shifted_cell_row_is_fitted_on_its_source(tmp_path):
    rng = np.random.default_rng(0)
    store = tmp_path / "s"
    names = [f"c{i}" for i in range(C)]
    for dataset, splits in (("src", ("val", "test")), ("shf", ("test",))):
        cell = cf.cell_dir(store, "m", dataset)
        cell.mkdir(parents=True)
        for split in splits:
            y = np.arange(60) % C
            zs = (rng.normal(size=(60, C)) * 3).astype(np.float32)
            cf.write_split(cell, split, [cf.build_table([f"{dataset}-{split}-{i}" for i in range(60)], split, y,
                                                        zs, zs + 1, metadata={"class_names": names})])
    write_shift(store, {"name": "shf", "evaluate_with": "src"})
    row = analyze_cell(store, "m", "shf").tables["provenance"].row(0, named=True)
    assert (row["dataset"], row["fit_split"], row["n_fit"], row["n_eval"]) == ("shf", "src/val", 60, 60)
    assert row["dataset_fingerprint"] == _expected_fingerprint(
        store, "m", [("src/val", "src", "val"), ("test", "shf", "test")], "src")
    assert row["created_at"] == max(_manifest(store, "m", "src", "val")["sealed_at"],
                                    _manifest(store, "m", "shf", "test")["sealed_at"])


def test_show_prints_rows_and_json_equals_the_table(imported, capsys):
    store, _, _, _ = imported
    assert _gla(capsys, "analyze", "--store", store, "--workers", "0", "--quiet")[0] == 0
    code, out, _ = _gla(capsys, "show", "provenance", "--store", store, "--json")
    assert code == 0
    table = pl.read_parquet(store / "results" / "provenance.parquet")
    assert json.loads(out) == table.to_dicts()
    code, out, _ = _gla(capsys, "show", "provenance", "--store", store)
    lines = out.splitlines()
    assert lines[0].split() == ["m/d", "estimator", "gla"]
    shown = dict(line.split(maxsplit=1) for line in lines[1:])
    assert shown["dataset_fingerprint"] == table["dataset_fingerprint"][0]
    assert shown["model_weights"] == "—"  # null
    code, out, _ = _gla(capsys, "show", "provenance", "--store", store, "--only", "model=nope")
    assert (code, out.strip()) == (0, "provenance: no rows")
    code, _, err = _gla(capsys, "show", "provenance", "--store", store.parent / "missing")
    assert code == 2 and err.count("\n") == 1 and "missing" in err


def test_output_piped_into_head_ends_without_a_traceback(tmp_path):
    store = tmp_path / "s"
    write_matrix(store, 2, 25, num_classes=5, fit_per_class=4, eval_rows=50)
    assert main(["analyze", "--store", str(store), "--workers", "0", "--quiet",
                 "--estimator", "gla", "--estimator", "eigen", "--estimator", "batch-calibration"]) == 0
    # 150 rows × 17 lines (~100 kB): more than a pipe buffer holds, so the writer meets the closed pipe.
    cmd = (f"{sys.executable} -m gla.pipeline.cli show provenance --store {store} | head -n 3; "
           'echo "rc=${PIPESTATUS[0]}" >&2')
    p = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert p.stdout.splitlines()[0].startswith("model-0/data-0")
    assert len(p.stdout.splitlines()) == 3
    assert p.stderr.strip() == "rc=0", p.stderr
    # Any command: a reader that goes away gives no traceback, and exit 1 (the output was cut).
    cmd = (f"{sys.executable} -m gla.pipeline.cli analyze --store {store} --workers 0 --json | head -n 2; "
           'echo "rc=${PIPESTATUS[0]}" >&2')
    p = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert p.stdout.splitlines() == ["{", f' "store": "{store}",']
    assert "Traceback" not in p.stderr and p.stderr.strip().endswith("rc=1"), p.stderr
