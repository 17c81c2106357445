"""The fault suite: kill -9 at many steps of analyze, extract and run; failing runs over
good published results; two writers at once; byte-identical tables across worker counts
and reruns. Every test asserts bytes on disk (sha256 of the published tables and of the
logit cells), not only exit codes.

Kills run the CLI in a subprocess through ``tests/fault_inject.py``, which SIGKILLs it
just before its n-th file-system change (rename, link, unlink, rmdir): the kill points
are chosen from a clean run's count, so they follow the code's steps without naming
them. Extraction is also killed at its named commit points (``GLA_FAULT_KILL``).
Recovery reruns happen in this process (fast: no interpreter start-up).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from gla.extract import records
from gla.pipeline.cli import main
from gla.pipeline.store import Store

REPO = Path(__file__).resolve().parents[1]
INJECT = [sys.executable, str(REPO / "tests" / "fault_inject.py")]
C = 5


# --------------------------------------------------------------------------- helpers


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def published(store: Path) -> dict[str, str]:
    """Table name -> sha256 of what a reader sees as published now: the newest committed
    run's tables (results/runs/<id>.json names them), else results/<table>.parquet."""
    runs = store / "results" / "runs"
    recs = sorted(runs.glob("*.json")) if runs.is_dir() else []
    if recs:
        doc = json.loads(recs[-1].read_text())
        folder = runs / recs[-1].stem
        return {name: sha(folder / rec["file"]) for name, rec in sorted(doc["tables"].items())}
    return {p.stem: sha(p) for p in sorted((store / "results").glob("*.parquet"))}


def comparable(store: Path) -> dict[str, str]:
    """``published`` for two stores whose cells were extracted at different times: the
    provenance table's ``created_at`` (the newest seal time of the input splits) is left
    out of its hash; every other table and column is compared byte for byte."""
    out = published(store)
    prov = store / "results" / "provenance.parquet"
    runs = sorted((store / "results" / "runs").glob("*.json")) if (store / "results" / "runs").is_dir() else []
    if runs:
        rec = json.loads(runs[-1].read_text())["tables"].get("provenance")
        prov = runs[-1].parent / runs[-1].stem / rec["file"] if rec else prov
    if "provenance" in out and prov.is_file():
        frame = pl.read_parquet(prov).drop("created_at")
        out["provenance"] = hashlib.sha256(frame.write_json().encode()).hexdigest()
    return out


def cli(capsys, *argv) -> tuple[int, list[str]]:
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err.strip().splitlines()


def inject(*argv, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    e = {**os.environ, "OMP_NUM_THREADS": "1", "POLARS_MAX_THREADS": "1", **(env or {})}
    return subprocess.run([*INJECT, *map(str, argv)], capture_output=True, text=True, env=e,
                          timeout=timeout, cwd=REPO)


def steps(argv: list, store: Path, tmp: Path) -> int:
    """How many file-system changes a clean run of ``argv`` makes (on a copy of store)."""
    probe = tmp / "probe"
    shutil.copytree(store.parent, probe)
    count = tmp / "count"
    r = inject(*[str(a).replace(str(store.parent), str(probe)) for a in argv],
               env={"GLA_TEST_COUNT": str(count)})
    assert r.returncode == 0, r.stderr
    shutil.rmtree(probe)
    return int(count.read_text())


def kill_points(m: int, n: int = 7) -> list[int]:
    """``n`` steps spread over 1..m, the last three always in (publication is at the end)."""
    spread = {max(1, round(i * m / n)) for i in range(1, n - 2)}
    return sorted(spread | {max(1, m - 3), max(1, m - 2), max(1, m - 1)})


def write_arrays(folder: Path, n: int, seed: int, drop_class: int | None = None) -> dict[str, Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    y = np.concatenate([np.arange(C), rng.integers(0, C, n - C)])
    if drop_class is not None:
        y[y == drop_class] = (drop_class + 1) % C
    np.save(folder / "y.npy", y)
    np.save(folder / "zs.npy", (rng.standard_normal((n, C)) * 2).astype(np.float32))
    np.save(folder / "ft.npy", (rng.standard_normal((n, C)) * 2).astype(np.float32))
    return {"labels": folder / "y.npy", "zs": folder / "zs.npy", "ft": folder / "ft.npy"}


def import_split(capsys, store, model, split, arrays) -> None:
    rc, err = cli(capsys, "import", "--store", store, "--model", model, "--dataset", "d", "--split", split,
                  "--labels", arrays["labels"], "--zs", arrays["zs"], "--ft", arrays["ft"])
    assert rc == 0, err


@pytest.fixture
def world(tmp_path, capsys) -> Path:
    """<tmp>/w/store: two imported cells with train counts, analysed once (published)."""
    store = tmp_path / "w" / "store"
    for i, m in enumerate(("m1", "m2")):
        import_split(capsys, store, m, "val", write_arrays(tmp_path / f"in{i}v", 40, 10 * i))
        import_split(capsys, store, m, "test", write_arrays(tmp_path / f"in{i}t", 150, 10 * i + 1))
    np.save(tmp_path / "counts.npy", np.array([40, 20, 10, 5, 2]))
    assert cli(capsys, "import", "--store", store, "--dataset", "d", "--train-counts", tmp_path / "counts.npy")[0] == 0
    assert cli(capsys, "analyze", "--store", store, "--workers", "0", "--quiet")[0] == 0
    return store


def copy_world(store: Path, dest: Path) -> Path:
    shutil.copytree(store.parent, dest)
    return dest / "store"


# --------------------------------------------------------------------------- kill -9: analyze


@pytest.mark.slow
def test_kill_9_at_every_step_of_analyze_old_or_new_publication_then_rerun_identical(world, tmp_path, capsys):
    new_args = ["--workers", "0", "--quiet", "--smoothing", "1"]
    old = published(world)
    ref = copy_world(world, tmp_path / "ref")
    assert cli(capsys, "analyze", "--store", ref, *new_args)[0] == 0
    new = published(ref)
    assert new != old
    logits = snapshot(world / "logits")
    m = steps(["analyze", "--store", world, *new_args], world, tmp_path)
    mixes = []
    for k in kill_points(m, n=6):
        store = copy_world(world, tmp_path / f"k{k}")
        r = inject("analyze", "--store", store, *new_args, env={"GLA_TEST_KILL_AT": str(k)})
        assert r.returncode == -signal.SIGKILL, (k, r.stderr)
        assert snapshot(store / "logits") == logits, k  # analysis never touches the inputs
        seen = published(store)
        if seen not in (old, new):
            mixes.append(k)
        rc, err = cli(capsys, "analyze", "--store", store, *new_args)  # takes the stale lock over
        assert rc == 0, (k, err)
        assert published(store) == new, k
        assert not (store / ".gla.lock").exists(), k
    assert not mixes, f"readers saw a mix of two publications after a kill at steps {mixes} of {m}"


def _break_one_cell(capsys, world: Path, tmp_path: Path) -> None:
    """m2's fit split loses class 3: that cell's analysis fails (after the pre-flight checks)."""
    import_split(capsys, world, "m2", "val", write_arrays(tmp_path / "bad", 40, 7, drop_class=3))


def test_failing_analysis_over_good_results_changes_no_published_byte(world, tmp_path, capsys):
    """A single failing cell fails gla analyze in one line, and the published tables stay
    as they were, byte for byte."""
    old = published(world)
    _break_one_cell(capsys, world, tmp_path)
    logits = snapshot(world / "logits")
    for argv in (["--workers", "0", "--quiet"], ["--workers", "0", "--quiet", "--force", "--smoothing", "1"]):
        rc, err = cli(capsys, "analyze", "--store", world, *argv)
        assert rc == 2 and len(err) == 1 and "class 3" in err[0], err
        assert published(world) == old
        assert snapshot(world / "logits") == logits


def test_failing_run_over_good_results_changes_no_published_byte(world, tmp_path, capsys):
    old = published(world)
    _break_one_cell(capsys, world, tmp_path)
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'store = "{world}"\n[[models]]\nname = "m1"\narch = "x"\npretrained = "none"\n[[models]]\nname = "m2"\narch = "x"\npretrained = "none"\n'
                   '[[datasets]]\nname = "d"\nkind = "imagefolder"\nroot = "nowhere"\n')
    report = world / "report"
    before_report = snapshot(report) if report.exists() else {}
    rc, err = cli(capsys, "run", cfg, "--stages", "analyze,report", "--workers", "0", "--no-progress")
    assert rc in (1, 2) and any("class 3" in line for line in err), err
    assert published(world) == old
    assert (snapshot(report) if report.exists() else {}) == before_report


# --------------------------------------------------------------------------- concurrency


def test_two_writers_at_once_the_second_refuses_in_one_line_store_consistent(world, tmp_path, capsys):
    ref = copy_world(world, tmp_path / "ref")
    new_args = ["--workers", "0", "--quiet", "--smoothing", "1"]
    assert cli(capsys, "analyze", "--store", ref, *new_args)[0] == 0
    e = {**os.environ, "OMP_NUM_THREADS": "1", "POLARS_MAX_THREADS": "1", "GLA_TEST_SLEEP_AT": "2:3"}
    slow = subprocess.Popen([*INJECT, "analyze", "--store", str(world), *new_args], env=e, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (world / ".gla.lock").exists():  # the slow writer holds the lock
        assert time.time() < deadline and slow.poll() is None, slow.communicate()
        time.sleep(0.05)
    inputs = write_arrays(tmp_path / "new", 30, 5)
    contenders = [
        ["analyze", "--store", world, *new_args],
        ["import", "--store", world, "--model", "m1", "--dataset", "d", "--split", "extra",
         "--labels", inputs["labels"], "--zs", inputs["zs"], "--ft", inputs["ft"]],
    ]
    for argv in contenders:
        rc, err = cli(capsys, *argv)
        assert rc == 2 and len(err) == 1 and "locked" in err[0] and f"pid {slow.pid}" in err[0], err
    _, err = slow.communicate(timeout=120)
    assert slow.returncode == 0, err
    assert published(world) == published(ref)
    assert Store(world).splits("m1", "d") == ["test", "val"]  # the refused import wrote nothing
    # two writers started together: whichever comes second refuses at once
    # in one line, or finds the work done; the store ends as one clean run leaves it
    procs = [subprocess.Popen([*INJECT, "analyze", "--store", str(world), "--workers", "0", "--quiet",
                               "--smoothing", "2"], env={**e, "GLA_TEST_SLEEP_AT": "2:1"}, cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [(p.wait(timeout=120), p.stderr.read().strip().splitlines()) for p in procs]
    assert sorted(rc for rc, _ in outs) in ([0, 0], [0, 2]), outs
    for rc, err in outs:
        if rc == 2:
            assert len(err) == 1 and "locked" in err[0], err
    assert cli(capsys, "analyze", "--store", ref, "--workers", "0", "--quiet", "--smoothing", "2")[0] == 0
    assert published(world) == published(ref)


# --------------------------------------------------------------------------- determinism


@pytest.mark.slow
def test_tables_byte_identical_across_0_1_2_workers_and_reruns(world, tmp_path, capsys):
    args = ["--quiet", "--smoothing", "1", "--estimator", "gla", "--estimator", "eigen"]
    stores = {n: copy_world(world, tmp_path / f"w{n}") for n in (0, 1, 2)}
    assert cli(capsys, "analyze", "--store", stores[0], "--workers", "0", *args)[0] == 0
    for n in (1, 2):  # a Dask LocalCluster of n worker processes
        r = subprocess.run([sys.executable, "-m", "gla.pipeline.cli", "analyze", "--store", str(stores[n]),
                            "--workers", str(n), *args], capture_output=True, text=True, cwd=REPO, timeout=300,
                           env={**os.environ, "OMP_NUM_THREADS": "1", "POLARS_MAX_THREADS": "1"})
        assert r.returncode == 0, r.stderr
    tables = {n: published(s) for n, s in stores.items()}
    assert tables[0] == tables[1] == tables[2]
    assert {"summary", "per_class", "priors"} <= set(tables[0])
    assert cli(capsys, "analyze", "--store", stores[0], "--workers", "0", "--force", *args)[0] == 0
    assert published(stores[0]) == tables[0]  # a forced rerun rewrites the same bytes


# --------------------------------------------------------------------------- kill -9: extract and run


RUN_CONFIG = """\
store = "store"
[compute]
workers = 0
[extract]
batch_size = 4
num_workers = 0
shard_rows = 4
[analysis]
estimators = ["gla"]
[[models]]
name = "tiny"
arch = "{arch}"
model_config = "{config}"
pretrained = "{checkpoint}"
finetuned = {{ imgs = "{finetuned}" }}
[[datasets]]
name = "imgs"
kind = "imagefolder"
root = "images"
[datasets.splits]
val = {{ per_class = 1 }}
test = {{ rest = true }}
"""


def _cell_arrays(store: Path) -> dict[str, tuple]:
    s = Store(store)
    out = {}
    for split in s.splits("tiny", "imgs"):
        a = s.read_split("tiny", "imgs", split, columns=("sample_id", "label", "zs", "ft"))
        out[split] = (tuple(a.sample_ids), a.labels.tolist(), a.zs.tobytes(), a.ft.tobytes())
    return out


def _add_image(world: Path) -> None:
    """A changed dataset: one more cat (the draw of every split changes)."""
    from PIL import Image

    path = world / "images" / "cat" / "new.png"
    Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(path)
    os.utime(path, ns=(1_700_000_000 * 10**9,) * 2)  # the same file in every copy (dataset fingerprint)


@pytest.fixture(scope="module")
def clip_worlds(tmp_path_factory):
    """(old, new): a world whose cell was run once, and a copy run again after its
    dataset changed (the reference every recovery must reach)."""
    pytest.importorskip("open_clip")
    from fixtures_tiny_clip import make_tiny_clip

    base = tmp_path_factory.mktemp("clip-faults")
    tc = make_tiny_clip(base / "tc")
    old = base / "old"
    shutil.copytree(tc.images, old / "images")
    (old / "run.toml").write_text(RUN_CONFIG.format(arch=tc.arch, config=tc.config, checkpoint=tc.checkpoint,
                                                    finetuned=tc.finetuned))
    run = ["run", str(old / "run.toml"), "--no-progress"]
    assert main(run) == 0
    new = base / "new"
    shutil.copytree(old, new)
    _add_image(new)
    assert main(["run", str(new / "run.toml"), "--no-progress"]) == 0
    return old, new


def _changed_copy(old: Path, dest: Path) -> Path:
    shutil.copytree(old, dest)
    _add_image(dest)
    return dest


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.parametrize("point", ["part-written:2", "split-sealed:2", "cell-committed"])
def test_kill_9_during_re_extraction_keeps_the_old_cell_then_rerun_matches(clip_worlds, tmp_path, point):
    """kill -9 while a changed cell is re-extracted: until the new generation is
    committed the old cell is the cell, its files untouched; after, the new one is, whole.
    A rerun then gives exactly the cell a clean run gives."""
    old, new = clip_worlds
    w = _changed_copy(old, tmp_path / "w")
    before, cell_files = _cell_arrays(w / "store"), snapshot(w / "store" / "logits")
    r = subprocess.run([sys.executable, "-m", "gla.pipeline.cli", "extract", str(w / "run.toml"), "--no-progress"],
                       capture_output=True, text=True, cwd=REPO, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1", records.FAULT_ENV: point})
    assert r.returncode == -signal.SIGKILL, r.stderr
    seen = _cell_arrays(w / "store")
    if point == "cell-committed":
        assert seen == _cell_arrays(new / "store")
    else:
        assert seen == before
        now = snapshot(w / "store" / "logits")
        assert {k: now[k] for k in cell_files} == cell_files  # not one old byte changed
    assert published(w / "store") == published(old / "store")  # extraction publishes nothing
    assert main(["extract", str(w / "run.toml"), "--no-progress", "-q"]) == 0
    assert _cell_arrays(w / "store") == _cell_arrays(new / "store")


@pytest.mark.torch
@pytest.mark.slow
def test_kill_9_at_steps_of_gla_run_old_or_new_publication_then_rerun_identical(clip_worlds, tmp_path):
    old, new = clip_worlds
    before, after = published(old / "store"), comparable(new / "store")
    assert before != after
    m = steps(["run", _changed_copy(old, tmp_path / "probe-src") / "run.toml", "--no-progress"],
              tmp_path / "probe-src" / "store", tmp_path)
    mixes = []
    for k in sorted({m // 2, m - 2}):  # mid-extraction, and in the analysis's publication
        w = _changed_copy(old, tmp_path / f"k{k}")
        r = inject("run", w / "run.toml", "--no-progress", env={"GLA_TEST_KILL_AT": str(k)})
        assert r.returncode == -signal.SIGKILL, (k, r.stderr)
        if published(w / "store") != before and comparable(w / "store") != after:
            mixes.append(k)
        assert main(["run", str(w / "run.toml"), "--no-progress"]) == 0
        assert comparable(w / "store") == after, k
        assert _cell_arrays(w / "store") == _cell_arrays(new / "store"), k
    assert not mixes, f"a kill at steps {mixes} of {m} left a mix of two publications"
