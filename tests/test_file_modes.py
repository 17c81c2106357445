"""Files the tool writes take the user's umask, so a store on a shared filesystem is
readable by the group: 0644 under umask 022, 0664 under umask 002 (never mkstemp's 0600).

Each run is a subprocess with its own umask (the umask is process state), going through
``gla import``, ``gla analyze`` and ``gla report``, plus the logit-cell writers that
extraction uses; then every file and folder under the store is checked on disk.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from fixtures_tiny_clip import tiny_clip_fixture  # noqa: F401

REPO = Path(__file__).resolve().parents[1]

WRITE_EVERYTHING = """
import os, sys
os.umask(int(sys.argv[1], 8))
import numpy as np
from gla.analyze.synthetic import planted_world
from gla.extract import cellformat as cf
from gla.pipeline.cli import main

for split, n, seed in (("val", 40, 1), ("test", 60, 2)):
    w = planted_world(5, n, seed=seed)
    np.save(f"y_{split}.npy", w.labels)
    np.save(f"zs_{split}.npy", w.zs)
    np.save(f"ft_{split}.npy", w.ft)
    assert main(["import", "--store", "S", "--model", "m", "--dataset", "d", "--split", split,
                 "--labels", f"y_{split}.npy", "--zs", f"zs_{split}.npy", "--ft", f"ft_{split}.npy"]) == 0
np.save("counts.npy", np.full(5, 50))
assert main(["import", "--store", "S", "--dataset", "d", "--train-counts", "counts.npy"]) == 0
assert main(["analyze", "--store", "S", "--quiet"]) == 0
assert main(["report", "--store", "S"]) == 0
# The writers extraction uses (parts, manifests, the zero-shot head cache's bytes).
w = planted_world(5, 10, seed=3)
cell = cf.cell_dir("S", "m2", "d")
t = cf.build_table([str(i) for i in range(len(w.labels))], "test", w.labels, w.zs)
cf.write_split(cell, "test", [t])
cf.write_split(cell, "test", [t])  # a rewrite replaces files: the new ones get the umask too
cf.atomic_write_bytes("S/heads/h.npy", b"x")
"""


def _modes_after(tmp_path: Path, umask: int) -> dict[str, int]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(WRITE_EVERYTHING), f"{umask:o}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    store = tmp_path / "S"
    return {str(p.relative_to(store)): stat.S_IMODE(p.lstat().st_mode) for p in store.rglob("*")}


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_every_written_file_takes_the_umask(tmp_path, umask):
    modes = _modes_after(tmp_path, umask)
    store = tmp_path / "S"
    files = {k: v for k, v in modes.items() if (store / k).is_file()}
    dirs = {k: v for k, v in modes.items() if (store / k).is_dir()}
    # The run wrote the whole store: cells, manifests, results, the report.
    assert any(k.endswith("report/index.html") for k in files), sorted(files)
    assert any(k.startswith("results/") for k in files), sorted(files)
    assert any("_split-" in k for k in files), sorted(files)
    assert "heads/h.npy" in files
    want_file, want_dir = 0o666 & ~umask, 0o777 & ~umask
    wrong = {k: oct(v) for k, v in files.items() if v != want_file}
    assert not wrong, f"files not {oct(want_file)}: {json.dumps(wrong, indent=1)}"
    wrong = {k: oct(v) for k, v in dirs.items() if v != want_dir}
    assert not wrong, f"folders not {oct(want_dir)}: {json.dumps(wrong, indent=1)}"
    # No temporary file left behind by the atomic writers.
    assert not [k for k in files if k.endswith(".tmp")]


RUN_ALL_STAGES = """
import os, sys
os.umask(int(sys.argv[1], 8))
from gla.pipeline.cli import main
sys.exit(main(["run", "run.toml", "--no-progress"]))
"""


@pytest.mark.torch
def test_gla_run_with_extraction_takes_the_umask(tmp_path, tiny_clip):  # noqa: F811
    """Extraction's own files too (parts, manifests, zero-shot head cache, markers)."""
    pytest.importorskip("open_clip")
    (tmp_path / "run.toml").write_text(f"""
store = "S"
[compute]
workers = 0
[extract]
batch_size = 4
num_workers = 0
[[models]]
name = "tiny"
arch = "{tiny_clip.arch}"
model_config = "{tiny_clip.config}"
pretrained = "{tiny_clip.checkpoint}"
finetuned = {{ imgs = "{tiny_clip.finetuned}" }}
[[datasets]]
name = "imgs"
kind = "imagefolder"
root = "{tiny_clip.images}"
[datasets.splits]
val = {{ per_class = 2 }}
test = {{ rest = true }}
""")
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(RUN_ALL_STAGES), "022"], cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    store = tmp_path / "S"
    files = {str(p.relative_to(store)): stat.S_IMODE(p.stat().st_mode) for p in store.rglob("*") if p.is_file()}
    assert any(k.startswith("logits/tiny/imgs/part-") for k in files), sorted(files)
    assert any(k.startswith("cache/heads/") for k in files), sorted(files)
    assert any(k.endswith("report/index.html") for k in files), sorted(files)
    wrong = {k: oct(v) for k, v in files.items() if v != 0o644}
    assert not wrong, f"files not 0o644: {json.dumps(wrong, indent=1)}"
