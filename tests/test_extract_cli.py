"""``gla extract CONFIG``: cells, --only, --shard / torchrun env, exit 2 on bad input."""

from __future__ import annotations

import pytest

pytest.importorskip("open_clip")
pytestmark = pytest.mark.torch

from fixtures_tiny_clip import make_images, tiny_clip_fixture  # noqa: E402, F401
from gla.extract import cellformat as cf  # noqa: E402
from gla.pipeline.cli import main  # noqa: E402
from gla.pipeline.commands.extract_cmd import parse_shard  # noqa: E402
from gla.pipeline.errors import UserError  # noqa: E402


def write_config(tmp_path, tc, images, templates="simple", extra=""):
    cfg = tmp_path / "run.toml"
    cfg.write_text(f"""
store = "store"
[extract]
batch_size = 4
num_workers = 0
shard_rows = 4
image_embeddings = true
{extra}
[[models]]
name = "tiny"
arch = "{tc.arch}"
model_config = "{tc.config}"
pretrained = "{tc.checkpoint}"
templates = "{templates}"
finetuned = {{ imgs = "{tc.finetuned}" }}
[[datasets]]
name = "imgs"
kind = "imagefolder"
root = "{images}"
[datasets.splits]
val = {{ per_class = 1 }}
test = {{ rest = true }}
[[datasets]]
name = "other"
kind = "imagefolder"
root = "{images}"
""")
    return cfg


def test_cli_extract_only_rerun_and_from_embeddings(tiny_clip, tmp_path, capsys):
    cfg = write_config(tmp_path, tiny_clip, tiny_clip.images)
    assert main(["extract", str(cfg), "--only", "dataset=imgs", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "tiny/imgs: written, 12 images" in out and "other" not in out
    store = tmp_path / "store"
    assert cf.sealed_splits(cf.cell_dir(store, "tiny", "imgs")) == ["test", "val"]
    assert not cf.cell_dir(store, "tiny", "other").exists()
    assert main(["extract", str(cfg), "--no-progress", "-q"]) == 0
    out = capsys.readouterr().out
    assert "tiny/imgs: skipped" in out and "tiny/other: written" in out
    # new templates: zs from the stored embeddings, then a normal run finds the cell complete
    (tmp_path / "t.txt").write_text("a sketch of a {}.\n")
    cfg = write_config(tmp_path, tiny_clip, tiny_clip.images, templates=str(tmp_path / "t.txt"))
    assert main(["extract", str(cfg), "--from-embeddings", "--only", "dataset=imgs"]) == 0
    assert "tiny/imgs: written (12 rows from image embeddings)" in capsys.readouterr().out
    assert main(["extract", str(cfg), "--only", "dataset=imgs", "--no-progress"]) == 0
    assert "tiny/imgs: skipped" in capsys.readouterr().out


def test_cli_bad_image_exits_2_with_one_line(tiny_clip, tmp_path, capsys):
    images = make_images(tmp_path / "imgs", per_class=2)
    (images / "cat" / "001.png").write_bytes(b"garbage")
    cfg = write_config(tmp_path, tiny_clip, images)
    assert main(["extract", str(cfg), "--only", "dataset=imgs", "--no-progress", "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cat/001.png: cannot read image" in err and "tiny/imgs" in err
    assert cf.sealed_splits(cf.cell_dir(tmp_path / "store", "tiny", "imgs")) == []
    cfg = write_config(tmp_path, tiny_clip, images, extra='on_error = "skip"')
    assert main(["extract", str(cfg), "--only", "dataset=imgs", "--no-progress", "-q"]) == 0
    assert "1 unreadable images skipped" in capsys.readouterr().out
    assert main(["extract", str(tmp_path / "nope.toml")]) == 2
    assert main(["extract", str(cfg), "--only", "model=nobody"]) == 2
    assert "no model × dataset cell matches" in capsys.readouterr().err


def test_parse_shard_and_torchrun_env():
    assert parse_shard("1/4", {}) == (1, 4)
    assert parse_shard(None, {}) == (0, 1)
    assert parse_shard(None, {"RANK": "2", "WORLD_SIZE": "3"}) == (2, 3)
    assert parse_shard("0/2", {"RANK": "2", "WORLD_SIZE": "3"}) == (0, 2)
    for bad in ("4/4", "x/2", "1", "-1/2"):
        with pytest.raises(UserError, match="--shard"):
            parse_shard(bad, {})
    with pytest.raises(UserError, match="RANK"):
        parse_shard(None, {"RANK": "5", "WORLD_SIZE": "2"})
