"""Deterministic image corruptions: shifted test sets made from a dataset's own images.

A dataset spec's ``corruption`` names one (``invert``, ``blur``, ``noise``), with an
optional ``severity`` (1–5). The corruption wraps the dataset's reader, so it runs in the
data-loader workers on the decoded image and every encoder sees the same corrupted
pixels. Noise is seeded by the image's reference, so a rerun, a resumed run or another
shard gives the same pixels (and the same logits).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
from gla.extract.errors import ExtractError

CORRUPTIONS = ("invert", "blur", "noise")


def _invert(img, severity: int, ref: Any):
    from PIL import ImageOps

    return ImageOps.invert(img)  # contrast inversion; severity does not apply


def _blur(img, severity: int, ref: Any):
    from PIL import ImageFilter

    # radius in pixels relative to a 28-pixel image, scaled to the image's size
    return img.filter(ImageFilter.GaussianBlur(radius=0.5 * severity * max(img.size) / 28))


def _noise(img, severity: int, ref: Any):
    from PIL import Image

    seed = int.from_bytes(hashlib.sha256(repr(ref).encode()).digest()[:8], "little")
    x = np.asarray(img, dtype=np.float32)
    x = x + np.random.default_rng(seed).normal(0.0, 0.08 * severity * 255.0, size=x.shape)
    return Image.fromarray(np.clip(np.rint(x), 0, 255).astype(np.uint8))


_APPLY = {"invert": _invert, "blur": _blur, "noise": _noise}


class CorruptedReader:
    """A reader (ref -> PIL RGB image) that corrupts what ``base`` reads. Picklable."""

    def __init__(self, base: Any, corruption: str, severity: int = 3):
        check_corruption(corruption, severity)
        self.base = base
        self.corruption = corruption
        self.severity = int(severity)

    def __call__(self, ref: Any):
        return _APPLY[self.corruption](self.base(ref).convert("RGB"), self.severity, ref)

    def describe(self, ref: Any) -> str:
        return f"{self.base.describe(ref)} ({self.corruption}@{self.severity})"


def check_corruption(corruption: str, severity: int, where: str = "corruption") -> None:
    if corruption not in CORRUPTIONS:
        raise ExtractError(f"{where} = {corruption!r}: expected one of {', '.join(CORRUPTIONS)}")
    if not 1 <= int(severity) <= 5:
        raise ExtractError(f"{where}: severity {severity} is outside 1..5")
