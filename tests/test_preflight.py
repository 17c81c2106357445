"""Pre-flight checks: every bad config is refused in one stderr line naming the key or
file, with exit code 2, before any work, and the store's bytes stay as they were."""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("PIL")

from gla.pipeline.cli import main  # noqa: E402

ASSETS = Path(__file__).resolve().parent.parent / "extract" / "demo" / "assets"


def make_folder(root: Path, counts=(6, 5, 7), stem="") -> Path:
    from PIL import Image

    for ci, n in enumerate(counts):
        d = root / f"class{ci}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (4, 4), (ci * 50, i, 0)).save(d / f"{stem}{i:02d}.png")
    return root


def fake_finetuned(path: Path, rows: int, width: int = 64, visual_shape_bug: bool = False) -> Path:
    """A gla-ft/1 checkpoint with the tiny CLIP's visual tensor names and shapes (zeros)."""
    from safetensors.numpy import save_file

    raw = (ASSETS / "gla-tiny-clip.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    tensors = {k: np.zeros(v["shape"], np.float32) for k, v in header.items()
               if k.startswith("visual.")}
    if visual_shape_bug:
        tensors["visual.proj"] = np.zeros((96, 32), np.float32)
    tensors["head.weight"] = np.zeros((rows, width), np.float32)
    tensors["head.bias"] = np.zeros((rows,), np.float32)
    save_file(tensors, str(path), metadata={"format": "gla-ft/1", "arch": "gla-tiny-clip",
                                            "num_classes": str(rows), "normalize": "true"})
    return path


CONFIG = """
store = "store"
[analysis]
estimators = ["gla"]
fit_split = "val"
eval_split = "test"
[[models]]
name = "tiny"
arch = "gla-tiny-clip"
model_config = "{assets}/gla-tiny-clip.json"
pretrained = "{assets}/gla-tiny-clip.safetensors"
[[datasets]]
name = "pets"
kind = "imagefolder"
root = "images"
[datasets.splits]
val = {{ per_class = 2 }}
test = {{ rest = true }}
"""


@pytest.fixture
def world(tmp_path):
    make_folder(tmp_path / "images")
    store = tmp_path / "store"
    (store / "results").mkdir(parents=True)
    (store / "results" / "summary.parquet").write_bytes(b"published results")
    cfg = tmp_path / "run.toml"
    cfg.write_text(CONFIG.format(assets=ASSETS))
    (tmp_path / "t.txt").write_text("a photo of a cat\n")
    (tmp_path / "empty.txt").write_text("# nothing\n")
    return tmp_path


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


def edit(cfg: Path, old: str, new: str) -> None:
    text = cfg.read_text()
    assert old in text, old
    cfg.write_text(text.replace(old, new, 1))


def refused(capsys, world: Path, argv: list[str], *needles: str) -> str:
    """Run the CLI; exit 2, one stderr line holding every needle, the store untouched."""
    before = snapshot(world / "store")
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    assert snapshot(world / "store") == before
    return lines[0]


def test_a_sound_config_passes(world, capsys):
    assert main(["check", str(world / "run.toml")]) == 0
    assert "ok (1 cell(s)" in capsys.readouterr().out


# Each case: (what to replace in the config, with what, needles of the error line).
CASES = {
    "unknown top-level table": ("[analysis]", "[analysys]", ("analysys: unknown key", "did you mean 'analysis'")),
    "unknown dataset key": ('kind = "imagefolder"', 'kind = "imagefolder"\nclas_names = ["a"]',
                            ("datasets['pets'].clas_names", "did you mean 'class_names'")),
    "unknown estimator": ('estimators = ["gla"]', 'estimators = ["glaa"]', ("analysis.estimators", "did you mean 'gla'")),
    "unknown dataset kind": ('kind = "imagefolder"', 'kind = "imagefoldr"',
                             ("datasets['pets'].kind", "did you mean 'imagefolder'")),
    "unknown template set": ('name = "tiny"', 'name = "tiny"\ntemplates = "simpel"',
                             ("models['tiny'].templates", "did you mean 'simple'")),
    "wrong value type": ("[analysis]", "[compute]\nworkers = \"many\"\n[analysis]", ("compute.workers", "expected an integer")),
    "bad literal": ("[analysis]", "[extract]\nprecision = \"fp46\"\n[analysis]", ("extract.precision", "did you mean 'fp16'")),
    "missing model config": ("gla-tiny-clip.json", "nope.json", ("models['tiny'].model_config", "nope.json", "not found")),
    "missing checkpoint": ("gla-tiny-clip.safetensors", "nope.safetensors", ("models['tiny'].pretrained", "not found")),
    "missing dataset root": ('root = "images"', 'root = "nowhere"', ("datasets['pets']", "nowhere", "not a folder")),
    "partial class-name list": ('root = "images"', 'root = "images"\nclass_names = ["class0", "class1", "cat"]',
                                ("datasets['pets']: class_names list does not match", "'cat'", "'class2'")),
    "mapping misses a folder": ('root = "images"', 'root = "images"\nclass_names = { class0 = "a", class1 = "b" }',
                                ("class_names mapping does not match", "'class2'")),
    "repeated class name": ('root = "images"', 'root = "images"\nclass_names = ["class0", "class0", "class1"]',
                            ("'class0' twice",)),
    "missing class-names file": ('root = "images"', 'root = "images"\nclass_names_file = "names.txt"',
                                 ("datasets['pets'].class_names_file", "names.txt", "not found")),
    "per_class cannot be filled": ("per_class = 2", "per_class = 6", ("split 'val' wants per_class = 6", "'class1' has only 5")),
    "count cannot be filled": ("per_class = 2", "count = 99", ("split 'val' wants count = 99",)),
    "fit split missing": ('fit_split = "val"', 'fit_split = "vall"', ("analysis.fit_split = 'vall'", "did you mean 'val'")),
    "fit split is the eval split": ('fit_split = "val"', 'fit_split = "test"', ("both 'test'", "allow_fit_on_eval")),
    "unknown finetuned dataset": ('pretrained = ', 'finetuned = { petz = "ft.safetensors" }\npretrained = ',
                                  ("models['tiny'].finetuned", "did you mean 'pets'")),
    "not TOML": ("[analysis]", "[analysis", ("not valid TOML",)),
    "templates without a slot": ('name = "tiny"', 'name = "tiny"\ntemplates = "t.txt"',
                                 ("models['tiny'].templates", "t.txt", "template 1", "exactly one '{}'")),
    "empty templates file": ('name = "tiny"', 'name = "tiny"\ntemplates = "empty.txt"',
                             ("models['tiny'].templates", "empty.txt", "holds no templates")),
    "dataset templates missing": ('root = "images"', 'root = "images"\ntemplates = "none.txt"',
                                  ("datasets['pets'].templates", "none.txt", "not found")),
    "per_class zero": ("per_class = 2", "per_class = 0", ("datasets['pets'].splits.val.per_class = 0", "must be >= 1")),
    "duplicate model": ("[[datasets]]", '[[models]]\nname = "tiny"\narch = "x"\npretrained = "none"\n[[datasets]]',
                        ("model names must be unique",)),
    "split with two ways": ("per_class = 2", "per_class = 2, rest = true", ("datasets['pets'].splits.val", "exactly one")),
}


ANALYSIS_ONLY = {"fit split missing", "fit split is the eval split"}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("command", ["check", "run", "extract"])
def test_bad_config_is_one_line_exit_2_store_untouched(world, capsys, case, command):
    old, new, needles = CASES[case]
    if command == "extract" and case in ANALYSIS_ONLY:
        pytest.skip("gla extract does not analyse")
    edit(world / "run.toml", old, new)
    refused(capsys, world, [command, str(world / "run.toml")], *needles)


def test_checkpoint_headers(world, capsys):
    cfg = world / "run.toml"
    fake_finetuned(world / "ft3.safetensors", rows=3)
    fake_finetuned(world / "ft10.safetensors", rows=10)
    fake_finetuned(world / "ftbad.safetensors", rows=3, visual_shape_bug=True)
    text = cfg.read_text()
    for name, needles in [
        ("ft10", ("models['tiny'].finetuned.pets", "head for 10 classes, the dataset has 3")),
        ("ftbad", ("does not fit the image encoder", "shape mismatch at proj")),
        ("missing", ("missing.safetensors", "not found")),
    ]:
        cfg.write_text(text.replace('pretrained = ', f'finetuned = {{ pets = "{name}.safetensors" }}\npretrained = ', 1))
        refused(capsys, world, ["check", str(cfg)], *needles)
    cfg.write_text(text.replace('pretrained = ', 'finetuned = { pets = "ft3.safetensors" }\npretrained = ', 1))
    assert main(["check", str(cfg)]) == 0
    # a truncated or non-safetensors pretrained checkpoint
    good = (ASSETS / "gla-tiny-clip.safetensors").read_bytes()
    (world / "cut.safetensors").write_bytes(good[: len(good) // 2])
    (world / "junk.safetensors").write_bytes(b"not a checkpoint at all")
    for name, needle in [("cut", "is truncated"), ("junk", "not a safetensors file")]:
        cfg.write_text(text.replace(f"{ASSETS}/gla-tiny-clip.safetensors", str(world / f"{name}.safetensors")))
        refused(capsys, world, ["check", str(cfg)], "models['tiny'].pretrained", needle)


def test_train_counts_and_target_prior(world, capsys):
    cfg = world / "run.toml"
    text = cfg.read_text()
    (world / "short.csv").write_text("class_index,count\n0,5\n1,3\n")
    (world / "zero.csv").write_text("class_index,count\n0,5\n1,0\n2,4\n")
    (world / "good.csv").write_text("class_index,count\n0,5\n1,2\n2,4\n")
    np.save(world / "prior2.npy", np.array([0.5, 0.5]))
    np.save(world / "short.npy", np.array([4, 5]))
    for line, needles in [
        ('train_counts = "short.csv"', ("datasets['pets'].train_counts", "0 for class 2 ('class2')")),
        ('train_counts = "short.npy"', ("datasets['pets'].train_counts", "2 counts but dataset 'pets' has 3")),
        ('train_counts = "zero.csv"', ("zero.csv", "0 for class 1 ('class1')", "cover every class")),
        ('train_counts = "none.csv"', ("datasets['pets'].train_counts", "none.csv", "not found")),
    ]:
        cfg.write_text(text.replace('root = "images"', f'root = "images"\n{line}'))
        refused(capsys, world, ["check", str(cfg)], *needles)
    cfg.write_text(text.replace('root = "images"', 'root = "images"\ntrain_counts = "good.csv"')
                   .replace('eval_split = "test"', 'eval_split = "test"\ntarget_prior = "prior2.npy"'))
    refused(capsys, world, ["check", str(cfg)], "analysis.target_prior", "2 values but dataset 'pets' has 3")


def test_split_roots_with_the_same_ids_fail_before_work(world, capsys):
    make_folder(world / "other")
    edit(world / "run.toml", 'val = { per_class = 2 }\ntest = { rest = true }',
         'val = { root = "other" }\ntest = { root = "images" }')
    edit(world / "run.toml", 'root = "images"\n', "")
    refused(capsys, world, ["run", str(world / "run.toml")],
            "splits 'val' and 'test' both have the sample id 'class0/00.png'")


def test_manifest_and_shards_stay_inside_the_root(world, capsys, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    make_folder(outside / "imgs", (1, 1, 1))
    data = world / "data"
    make_folder(data, (3, 3, 3))
    cfg = world / "run.toml"
    text = cfg.read_text()

    def manifest(rows: list[str], allow: bool = False) -> None:
        (data / "m.csv").write_text("path,label\n" + "".join(f"{r},class{i % 3}\n" for i, r in enumerate(rows)))
        extra = "\nallow_outside_root = true" if allow else ""
        cfg.write_text(text.replace('kind = "imagefolder"\nroot = "images"',
                                    f'kind = "manifest"\nroot = "data/m.csv"{extra}'))

    inside = [f"class{c}/{i:02d}.png" for i in range(3) for c in range(3)]
    manifest(inside)
    assert main(["check", str(cfg)]) == 0
    manifest(inside + ["../../outside0/imgs/class0/00.png"])
    # ../ row, absolute row, and a symlink inside the root that leads out
    refused(capsys, world, ["check", str(cfg)], "manifest", "row 10", "outside the dataset root",
            "allow_outside_root")
    manifest(inside + [str(outside / "imgs" / "class0" / "00.png")])
    refused(capsys, world, ["check", str(cfg)], "row 10", "outside the dataset root")
    os.symlink(outside / "imgs", data / "link")
    manifest(inside + ["link/class0/00.png"])
    refused(capsys, world, ["run", str(cfg)], "row 10", "outside the dataset root")
    manifest(inside + ["link/class0/00.png"], allow=True)
    assert main(["check", str(cfg)]) == 0

    # webdataset: a shard symlinked from outside the shard folder
    shards = world / "shards"
    shards.mkdir()
    with tarfile.open(outside / "far.tar", "w") as tar:
        for i in range(3):
            for c in range(3):
                src = data / f"class{c}" / f"{i:02d}.png"
                tar.add(src, arcname=f"s{c}{i}.png")
                cls = world / "cls.txt"
                cls.write_text(str(c))
                tar.add(cls, arcname=f"s{c}{i}.cls")
    os.symlink(outside / "far.tar", shards / "a.tar")
    cfg.write_text(text.replace('kind = "imagefolder"\nroot = "images"',
                                'kind = "webdataset"\nroot = "shards/*.tar"\nclass_names = ["x", "y", "z"]')
                   .replace("per_class = 2", "per_class = 1"))
    refused(capsys, world, ["check", str(cfg)], "shard 1", "outside the dataset root")


def test_usage_errors_are_one_line(world, capsys):
    refused(capsys, world, ["run", str(world / "run.toml"), "--bogus"], "gla run: error:", "--bogus")
    refused(capsys, world, ["check"], "gla check: error:", "config")
    refused(capsys, world, ["run", str(world / "run.toml"), "--stages", "extrct"], "did you mean 'extract'")
    refused(capsys, world, ["analyze", "--store", str(world / "store"), "--estimator", "glaa"], "--estimator")


def test_read_only_store_is_refused_by_writing_commands(world, capsys, monkeypatch):
    # Root may write anywhere, so a read-only mount is simulated where the check looks.
    store = world / "store"
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == store and mode & os.W_OK
                        else real(p, mode))
    for command in ("run", "extract", "check"):
        refused(capsys, world, [command, str(world / "run.toml")], f"store {store}", "read-only")


def test_scheduler_file_must_exist(world, capsys):
    edit(world / "run.toml", "[analysis]", '[compute]\nscheduler = "sched.json"\n[analysis]')
    refused(capsys, world, ["run", str(world / "run.toml")], "compute.scheduler", "sched.json", "not found")


@pytest.mark.torch
def test_torch_finetuned_checkpoint_width_checked_without_loading_the_model(tmp_path, capsys):
    pytest.importorskip("open_clip")
    from fixtures_tiny_clip import make_tiny_clip

    tc = make_tiny_clip(tmp_path / "tc")
    make_folder(tmp_path / "two", (2, 2))
    cfg = tmp_path / "run.toml"
    base = (f'store = "store"\n[[models]]\nname = "tiny"\narch = "{tc.arch}"\nmodel_config = "{tc.config}"\n'
            f'pretrained = "{tc.checkpoint}"\nfinetuned = {{ d = "{tc.wise_ft}" }}\n'
            '[[datasets]]\nname = "d"\nkind = "imagefolder"\nroot = "{root}"\n'
            '[datasets.splits]\nval = { per_class = 1 }\ntest = { rest = true }\n')
    cfg.write_text(base.replace("{root}", str(tmp_path / "two")))
    (tmp_path / "store").mkdir()
    refused(capsys, tmp_path, ["check", str(cfg)], "models['tiny'].finetuned.d", "wise.pt",
            "head for 3 classes, the dataset has 2")
    cfg.write_text(base.replace("{root}", str(tc.images)))
    assert main(["check", str(cfg)]) == 0
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    cfg.write_text(base.replace("{root}", str(tc.images)).replace(str(tc.wise_ft), str(tmp_path / "junk.pt")))
    refused(capsys, tmp_path, ["check", str(cfg)], "junk.pt", "is not a torch state dict")


def test_finetuned_head_of_a_class_subset(world, capsys):
    # a dataset covering some of the checkpoint's classes uses those head rows
    cfg = world / "run.toml"
    fake_finetuned(world / "ft3.safetensors", rows=3)
    text = cfg.read_text().replace('pretrained = ', 'finetuned = { pets = "ft3.safetensors" }\npretrained = ', 1)
    cfg.write_text(text.replace('root = "images"', 'root = "images"\nclasses = [0, 2]'))
    assert main(["check", str(cfg)]) == 0, capsys.readouterr().err
    cfg.write_text(text.replace('root = "images"', 'root = "images"\nclasses = [0, 2]\nsource_classes = [0, 5]'))
    refused(capsys, world, ["check", str(cfg)], "class rows [0, 5] outside its 3 classes")
