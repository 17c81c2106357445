"""Pretrained references and hub weights, with no network: one parser for path / tag /
hf-hub; cached weights load with no request; missing ones fail at once in one line.

The Hugging Face cache is a folder the tests build (``models--org--repo/snapshots/...``),
and "no network" is either ``HF_HUB_OFFLINE`` or an endpoint on 127.0.0.1 with nothing
listening.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from fixtures_tiny_clip import TINY_CONFIG, make_images, tiny_clip_fixture  # noqa: F401
from gla.extract import hub
from gla.extract.errors import ExtractError
from gla.extract.models import PretrainedRef, load_model, model_identity, parse_pretrained

CLOSED = "http://127.0.0.1:9"  # discard port: nothing listens, the connection is refused


@pytest.mark.parametrize("text, kind, value", [
    ("", "none", ""),
    ("openai", "tag", "openai"),
    ("laion2b_s34b_b79k", "tag", "laion2b_s34b_b79k"),
    ("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "hub", "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"),
    ("/data/w.safetensors", "file", "/data/w.safetensors"),
    ("weights/w", "file", "weights/w"),
    ("w.pt", "file", "w.pt"),
])
def test_parse_pretrained(text, kind, value):
    ref = parse_pretrained(text)
    assert (ref.kind, ref.value) == (kind, value)
    assert ref.text == text


def test_bare_name_that_exists_is_a_file(tmp_path):
    (tmp_path / "openai").write_bytes(b"x")
    assert parse_pretrained("openai", base=tmp_path).kind == "file"
    assert parse_pretrained("openai", base=tmp_path / "elsewhere").kind == "tag"


def test_every_open_clip_tag_parses_as_a_tag():
    open_clip = pytest.importorskip("open_clip")
    tags = {t for _, t in open_clip.list_pretrained()}
    assert len(tags) > 20
    assert [t for t in tags if parse_pretrained(t).kind != "tag"] == []


def test_identity_uses_the_same_rule(tmp_path):
    w = tmp_path / "w.bin"
    w.write_bytes(b"abc")
    assert model_identity({"arch": "A", "pretrained": "openai"})["pretrained"] == "openai"
    assert model_identity({"arch": "", "pretrained": "hf-hub:o/r"})["pretrained"] == "hf-hub:o/r"
    assert "checkpoint_sha256" in model_identity({"arch": "A", "pretrained": str(w)})
    assert model_identity({"arch": "A", "pretrained": ""})["pretrained"] == "random-init"


def fake_hf_cache(cache: Path, repo: str, files: dict[str, bytes]) -> Path:
    """A Hugging Face hub cache entry as huggingface_hub lays it out."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    sha = "0123456789abcdef0123456789abcdef01234567"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(sha)
    snap = folder / "snapshots" / sha
    snap.mkdir(parents=True)
    for name, data in files.items():
        (snap / name).write_bytes(data)
    return snap


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub")
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", CLOSED)
    return cache


def _no_socket(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket, "create_connection", refuse)


def test_offline_and_not_cached_fails_at_once_in_one_line(hf_cache, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    _no_socket(monkeypatch)  # HF_HUB_OFFLINE: not even a probe
    with pytest.raises(ExtractError) as e:
        hub.check_weights("ViT-B-32", parse_pretrained("openai"), "models['b32'].pretrained")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("models['b32'].pretrained = 'openai': the weights (timm/vit_base_patch32_clip_224.openai)")
    assert "not in the Hugging Face cache" in msg and "HF_HUB_OFFLINE is set" in msg
    assert "local weights file" in msg and str(hf_cache) in msg


def test_unreachable_hub_and_not_cached_fails_in_one_line(hf_cache):
    with pytest.raises(ExtractError) as e:
        hub.check_weights("", parse_pretrained("hf-hub:org/missing"), "models['m'].pretrained")
    assert "127.0.0.1 is not reachable" in str(e.value)
    assert "'hf-hub:org/missing'" in str(e.value)


def test_reachable_endpoint_means_download(hf_cache, monkeypatch):
    from huggingface_hub import constants

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    try:
        monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{srv.getsockname()[1]}")
        assert hub.check_weights("", PretrainedRef("hub", "org/missing"), "x") is False
    finally:
        srv.close()


def test_cached_tag_weights_need_no_network(hf_cache, monkeypatch):
    fake_hf_cache(hf_cache, "timm/vit_base_patch32_clip_224.openai", {hub.HF_SAFE_WEIGHTS_NAME: b"w"})
    _no_socket(monkeypatch)
    assert hub.check_weights("ViT-B-32", parse_pretrained("openai"), "x") is True


def test_half_cached_hub_model_is_not_cached(hf_cache):
    """Only the config is cached for a hub model: its weights are still missing."""
    fake_hf_cache(hf_cache, "org/half", {hub.HF_CONFIG_NAME: b"{}"})
    assert not hub.cached("org/half", [[hub.HF_CONFIG_NAME], hub._safe_first(hub.HF_WEIGHTS_NAME)])
    with pytest.raises(ExtractError, match="not reachable"):
        hub.check_weights("", parse_pretrained("hf-hub:org/half"), "x")


@pytest.mark.torch
def test_cached_hf_hub_model_loads_offline(hf_cache, tiny_clip, monkeypatch):  # noqa: F811
    """A whole hf-hub: load (config, weights, tokenizer) from the cache, the endpoint
    unreachable and HF_HUB_OFFLINE unset: the load runs in offline mode."""
    from huggingface_hub import constants


    config = {"model_cfg": TINY_CONFIG, "preprocess_cfg": {}}
    fake_hf_cache(hf_cache, "org/tiny", {
        hub.HF_CONFIG_NAME: json.dumps(config).encode(),
        hub.HF_SAFE_WEIGHTS_NAME: tiny_clip.checkpoint.read_bytes(),
    })
    _no_socket(monkeypatch)
    loaded = load_model({"name": "t", "arch": "", "pretrained": "hf-hub:org/tiny"}, device="cpu")
    assert loaded.identity == {"arch": "", "pretrained": "hf-hub:org/tiny"}
    assert loaded.tokenizer(["a photo of a cat"]).shape[-1] == 77
    assert constants.HF_HUB_OFFLINE is False  # offline mode was only for the load


def test_catalog_without_torch_matches_open_clip():
    """``gla models`` reads open_clip's registry from its files (no torch); the answer
    is the one open_clip itself gives."""
    import subprocess
    import sys

    open_clip = pytest.importorskip("open_clip")
    code = (
        "import json, sys\n"
        "sys.modules['torch'] = sys.modules['torchvision'] = None  # import torch fails\n"
        "from gla.extract.catalog import open_clip_catalog\n"
        "c = open_clip_catalog()\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('torch', 'open_clip') and sys.modules[m]]\n"
        "print(json.dumps({'catalog': c, 'heavy': heavy}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["heavy"] == []
    # (configs other tests registered in this process, gla-*, are not open_clip's own)
    want = {a: open_clip.list_pretrained_tags_by_model(a) for a in open_clip.list_models()
            if not a.startswith("gla-")}
    assert out["catalog"] == want
    assert "openai" in out["catalog"]["ViT-B-32"]


def test_gla_models_command(capsys):
    pytest.importorskip("open_clip")
    from gla.pipeline.cli import main

    assert main(["models", "--arch", "ViT-B-32", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert list(doc) == ["ViT-B-32"] and "laion2b_s34b_b79k" in doc["ViT-B-32"]
    assert main(["models", "--arch", "ViT-B-3*", "--tags-only"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[0] == "ViT-B-32" and "openai," in lines[0]
    assert lines[-1].startswith("# ") and "hf-hub:" in lines[-1]
    assert main(["models", "--arch", "nope*"]) == 2
    assert "no open_clip architecture matches" in capsys.readouterr().err


@pytest.mark.torch
def test_gla_extract_offline_is_one_line_exit_2(tmp_path):
    """The whole command: an uncached tag with HF_HUB_OFFLINE exits 2 with one line and
    writes no cell."""
    import os
    import subprocess
    import sys

    pytest.importorskip("open_clip")
    make_images(tmp_path / "imgs", per_class=2)
    (tmp_path / "c.toml").write_text(
        'store = "S"\n[[models]]\nname = "b32"\narch = "ViT-B-32"\npretrained = "openai"\n'
        '[[datasets]]\nname = "pics"\nkind = "imagefolder"\nroot = "imgs"\n'
        "[datasets.splits]\nval = { per_class = 1 }\ntest = { rest = true }\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "HOME": str(tmp_path)}
    gla = Path(sys.executable).parent / "gla"
    proc = subprocess.run([str(gla), "extract", "c.toml"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "are not in the Hugging Face cache" in lines[0] and "local weights file" in lines[0]
    assert not list((tmp_path / "S").rglob("*.parquet"))


def test_pretrained_cfg_without_torch_matches_open_clip():
    open_clip = pytest.importorskip("open_clip")
    from gla.extract import catalog

    registry = catalog._pretrained_registry(Path(open_clip.__file__).parent)
    for arch, tag in [("ViT-B-32", "openai"), ("ViT-B-32", "laion2b_s34b_b79k"), ("ViT-L-14", "OpenAI")]:
        want = open_clip.get_pretrained_cfg(arch, tag)
        assert registry[arch][tag.lower()] == want and want.get("hf_hub")


def test_gla_run_refuses_uncached_weights_before_any_work(tmp_path):
    """`gla run` checks every model's weights in the calling process (torch-free) before it
    starts a cluster or a cell: one line, exit 2, nothing written."""
    import os
    import subprocess
    import sys

    pytest.importorskip("open_clip")
    make_images(tmp_path / "imgs", per_class=2)
    (tmp_path / "c.toml").write_text(
        'store = "S"\n[compute]\nworkers = 2\n'
        # one split only: fitting on it is allowed, so the pre-flight checks pass
        '[analysis]\nfit_split = "test"\nallow_fit_on_eval = true\n'
        '[[models]]\nname = "b32"\narch = "ViT-B-32"\npretrained = "laion2b_s34b_b79k"\n'
        '[[datasets]]\nname = "pics"\nkind = "imagefolder"\nroot = "imgs"\n'
        "[datasets.splits]\nval = { per_class = 1 }\ntest = { rest = true }\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    gla = Path(sys.executable).parent / "gla"
    proc = subprocess.run([str(gla), "run", "c.toml", "--no-progress"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "local cluster" not in proc.stderr, proc.stderr
    assert lines[0].startswith("gla run: error: models['b32'].pretrained = 'laion2b_s34b_b79k': the weights")
    assert not list((tmp_path / "S").rglob("*.parquet"))
