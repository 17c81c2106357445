"""gla run --gate on the demo's tiny CLIP: planted regressions by changed templates (zs
re-derived from stored image embeddings, no image encoded) and by a swapped fine-tuned
checkpoint both exit 3 naming the cell; an unchanged rerun passes."""

from __future__ import annotations

import polars as pl
import pytest

pytest.importorskip("open_clip")
pytestmark = [pytest.mark.torch, pytest.mark.slow]

from gla.pipeline import demo, publication  # noqa: E402
from gla.pipeline.cli import main  # noqa: E402

A = demo.ASSETS
GATES = []
for m in ("zs", "ft", "gla"):
    GATES += ["--gate", f"{m}.accuracy >= previous - 0.005"]


def _config(tmp_path, templates, ft):
    cfg = tmp_path / "run.toml"
    cfg.write_text(f"""
store = "store"
[compute]
workers = 0
[analysis]
estimators = ["gla"]
[extract]
batch_size = 128
num_workers = 0
[[models]]
name = "tiny-clip"
arch = "gla-tiny-clip"
model_config = "{A / 'gla-tiny-clip.json'}"
pretrained = "{A / 'gla-tiny-clip.safetensors'}"
templates = "{templates}"
finetuned = {{ animals = "{ft}" }}
[[datasets]]
name = "animals"
kind = "animal-mnist"
pool = "test"
limit_per_class = 60
seed = 0
[datasets.splits]
val = {{ per_class = 20 }}
test = {{ rest = true }}
""")
    return cfg


def _run(capsys, cfg, *extra):
    code = main(["run", str(cfg), "--stages", "extract,analyze", "--no-progress", *GATES, *extra])
    _, err = capsys.readouterr()
    return code, err


def _acc(tmp_path, method):
    s = publication.read_table(tmp_path / "store", "summary")
    return s.filter(pl.col("method") == method)["accuracy"][0]


def test_template_change_and_worse_checkpoint_fire_the_gate(tmp_path, capsys):
    good_t, good_ft = A / "templates.txt", A / "ft-animals.safetensors"
    code, err = _run(capsys, _config(tmp_path, good_t, good_ft))
    assert code == 0, err
    assert "1 encoded from images" in err
    zs0, ft0 = _acc(tmp_path, "zs"), _acc(tmp_path, "ft")
    # Unchanged rerun: no work, the gate passes.
    code, err = _run(capsys, _config(tmp_path, good_t, good_ft))
    assert code == 0 and "check(s) passed" in err and "0 encoded from images" in err
    # A template that names another class pulls every prompt towards it (zs 0.75 -> 0.42
    # when tried); no image is encoded again.
    bad = tmp_path / "bad.txt"
    bad.write_text("a photo of a zebra next to a {}.\n")
    code, err = _run(capsys, _config(tmp_path, bad, good_ft))
    assert "0 encoded from images, 1 zs re-derived from stored image embeddings" in err
    zs1 = _acc(tmp_path, "zs")
    assert _acc(tmp_path, "ft") == ft0  # ft untouched by a prompt change
    assert zs1 < zs0 - 0.1, (zs0, zs1)
    assert code == 3 and "gate failed: zs.accuracy" in err and "tiny-clip/animals" in err
    # A fine-tuned checkpoint swapped for one trained on another dataset.
    code, err = _run(capsys, _config(tmp_path, bad, A / "ft-fashion.safetensors"))
    assert code == 3, err
    assert "1 encoded from images" in err
    assert "gate failed: ft.accuracy" in err and "tiny-clip/animals" in err
    assert _acc(tmp_path, "ft") < ft0 - 0.1
    # With the report stage, the report shows the changes the gate judged.
    code, err = _run(capsys, _config(tmp_path, good_t, good_ft), "--stages", "extract,analyze,report")
    page = (tmp_path / "store" / "report" / "index.html").read_text()
    parent = publication.latest(tmp_path / "store").record["parent"]  # the run the gate compared with
    assert "Changes since the previous run" in page and parent in page, err
