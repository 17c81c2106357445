"""`gla init`: a commented starter config that `gla check` accepts once its placeholders
are filled."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

pytest.importorskip("PIL")

from gla.pipeline.cli import main  # noqa: E402
from test_preflight import ASSETS, make_folder  # noqa: E402


def test_init_from_folder_then_check(tmp_path, capsys):
    make_folder(tmp_path / "my pets", (6, 5, 7))
    out = tmp_path / "cfg" / "gla.toml"
    assert main(["init", "--from-folder", str(tmp_path / "my pets"), "--out", str(out)]) == 0
    doc = tomllib.loads(out.read_text())
    ds = doc["datasets"][0]
    assert ds["kind"] == "imagefolder" and ds["root"] == "../my pets"
    assert ds["class_names"] == {"class0": "class0", "class1": "class1", "class2": "class2"}
    assert ds["splits"] == {"val": {"per_class": 2}, "test": {"rest": True}}
    assert "# " in out.read_text()  # commented
    capsys.readouterr()
    assert main(["check", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "models['my-model'].arch: fill in the placeholder" in err[0]
    text = out.read_text()
    text = text.replace('"<fill in: an open_clip architecture, e.g. ViT-B-32>"', '"gla-tiny-clip"')
    text = text.replace('"<fill in: a pretrained tag, hf-hub:ORG/NAME or a local checkpoint>"',
                        f'"{ASSETS}/gla-tiny-clip.safetensors"')
    text = text.replace('# model_config = "my-arch.json"', f'model_config = "{ASSETS}/gla-tiny-clip.json"')
    # rename a class through the mapping the file documents
    text = text.replace('"class1" = "class1"', '"class1" = "hamster"')
    out.write_text(text)
    assert main(["check", str(out)]) == 0, capsys.readouterr().err
    assert not (out.parent / "gla-store").exists()  # checking writes nothing
    from gla.extract.datasets import build_source
    from gla.pipeline.config import load_config

    src = build_source(load_config(out).datasets[0].model_dump())
    assert src.class_names == ["class0", "hamster", "class2"]


def test_init_without_folder_and_refusals(tmp_path, capsys):
    out = tmp_path / "gla.toml"
    assert main(["init", "--out", str(out)]) == 0
    assert tomllib.loads(out.read_text())["datasets"][0]["kind"] == "imagefolder"
    before = out.read_bytes()
    capsys.readouterr()
    for argv, needle in [
        (["init", "--out", str(out)], "file exists (pass --force"),
        (["init", "--out", str(tmp_path / "b.toml"), "--from-folder", str(tmp_path / "none")], "not a folder"),
        (["init", "--out", str(tmp_path / "c.toml"), "--from-folder", str(tmp_path)], "no class folders"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
    assert out.read_bytes() == before and not (tmp_path / "b.toml").exists()
    Path(tmp_path / "c.toml").exists() and pytest.fail("wrote a config for an empty folder")
