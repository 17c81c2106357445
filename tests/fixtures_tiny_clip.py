"""A tiny random-init open_clip model saved as local files, plus generated images.

Import the fixture into a test module (``from fixtures_tiny_clip import tiny_clip_fixture``;
tests then take a ``tiny_clip`` argument). Everything is CPU-only and offline: the
model-config JSON is registered with open_clip, the weights are a safetensors state dict,
and the tokenizer is open_clip's bundled CLIP BPE (vocab 49408, context 77).
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

ARCH = "gla-test-tiny-clip"
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
CLASSES = ["cat", "dog", "red car"]


@dataclass
class TinyClip:
    root: Path
    config: Path  # model-config JSON (file name = arch + ".json")
    checkpoint: Path  # pretrained state dict (safetensors)
    finetuned: Path  # gla-ft/1 checkpoint for CLASSES
    wise_ft: Path  # WiSE-FT layout torch file for CLASSES
    images: Path  # imagefolder root: <class>/<n>.png
    arch: str = ARCH

    def model_spec(self, **kw) -> dict:
        spec = {
            "name": "tiny",
            "arch": self.arch,
            "model_config": str(self.config),
            "pretrained": str(self.checkpoint),
            "templates": "simple",
            "finetuned": {},
        }
        spec.update(kw)
        return spec


def make_images(root: Path, classes=CLASSES, per_class: int = 4, size: int = 40, seed: int = 0) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    for ci, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = rng.integers(0, 256, size=(size, size + ci, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"{i:03d}.png")
    return root


def make_tiny_clip(root: Path) -> TinyClip:
    import open_clip
    import torch
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    config = root / f"{ARCH}.json"
    config.write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    model = open_clip.create_model(ARCH, pretrained=None)
    checkpoint = root / "tiny-clip.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(checkpoint))

    torch.manual_seed(1)
    ft_visual = {k: v + 0.01 * torch.randn_like(v) for k, v in model.visual.state_dict().items()}
    head_w = torch.randn(len(CLASSES), TINY_CONFIG["embed_dim"])
    head_b = torch.randn(len(CLASSES))
    finetuned = root / "ft.safetensors"
    tensors = {f"visual.{k}": v.contiguous() for k, v in ft_visual.items()}
    tensors.update({"head.weight": head_w, "head.bias": head_b})
    save_file(tensors, str(finetuned), metadata={
        "format": "gla-ft/1", "arch": ARCH, "num_classes": str(len(CLASSES)), "normalize": "true"})
    wise = root / "wise.pt"
    wise_sd = {f"image_encoder.model.visual.{k}": v for k, v in ft_visual.items()}
    wise_sd.update({"classification_head.weight": head_w, "classification_head.bias": head_b})
    torch.save(wise_sd, wise)
    images = make_images(root / "images")
    return TinyClip(root, config, checkpoint, finetuned, wise, images)


def make_webdataset(folder: Path, images: Path, classes=CLASSES, per_shard: int = 5) -> str:
    """Tar shards of <key>.png + <key>.cls from an imagefolder; returns the shard glob."""
    folder.mkdir(parents=True, exist_ok=True)
    files = [(ci, p) for ci, c in enumerate(classes) for p in sorted((images / c).glob("*.png"))]
    for s in range(0, len(files), per_shard):
        with tarfile.open(folder / f"shard-{s // per_shard:03d}.tar", "w") as tar:
            for j, (ci, p) in enumerate(files[s : s + per_shard]):
                key = f"{s + j:06d}"
                tar.add(p, arcname=f"{key}.png")
                cls = folder / f".{key}.cls"
                cls.write_text(str(ci))
                tar.add(cls, arcname=f"{key}.cls")
                cls.unlink()
    return str(folder / "shard-*.tar")


@pytest.fixture(scope="session", name="tiny_clip")
def tiny_clip_fixture(tmp_path_factory) -> TinyClip:
    pytest.importorskip("open_clip")
    return make_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))
