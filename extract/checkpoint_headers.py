"""Checkpoint checks from file headers only: no tensor is loaded, no torch imported.

A safetensors file starts with an 8-byte little-endian header length and a JSON header
naming every tensor's dtype, shape and byte range (and an optional ``__metadata__``).
That is enough to refuse, in the first second of a run, a checkpoint that is truncated,
made for another architecture, or whose fine-tuned head is not as wide as the class list.
Torch files (``.pt``/``.bin``) have no header: when torch is installed they are opened
memory-mapped (no copy of the weights) for the same checks.
"""

from __future__ import annotations

import importlib.util
import json
import os
import struct
from pathlib import Path
from typing import Any

from gla.extract.errors import ExtractError

MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit
FT_FORMAT = "gla-ft/1"
WISE_PREFIX = "image_encoder.model.visual."


def safetensors_header(path: str | os.PathLike, what: str = "checkpoint") -> dict[str, Any]:
    """``{tensor name: {"dtype", "shape", "data_offsets"}, "__metadata__": {...}}``."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            if n < 2 or n > min(MAX_HEADER_BYTES, size - 8):
                raise ExtractError(f"{what} {path} is not a safetensors file (bad header length)")
            doc = json.loads(f.read(n))
    except FileNotFoundError:
        raise ExtractError(f"{what} {path} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExtractError(f"{what} {path} is not a readable safetensors file: {e}") from None
    if not isinstance(doc, dict):
        raise ExtractError(f"{what} {path} is not a safetensors file (header is not an object)")
    body = size - 8 - n
    for name, t in doc.items():
        if name == "__metadata__":
            continue
        end = (t.get("data_offsets") or [0, body + 1])[1] if isinstance(t, dict) else body + 1
        if end > body:
            raise ExtractError(f"{what} {path} is truncated: tensor {name!r} ends past the file")
    return doc


def shapes(header: dict[str, Any], prefix: str = "") -> dict[str, tuple[int, ...]]:
    """Tensor shapes under ``prefix`` (the prefix removed)."""
    return {k[len(prefix):]: tuple(v["shape"]) for k, v in header.items()
            if k != "__metadata__" and k.startswith(prefix)}


def check_pretrained(path: str | os.PathLike, config: dict[str, Any] | None, where: str) -> dict[str, Any]:
    """A local pretrained checkpoint: header readable; output widths equal the config's
    ``embed_dim`` when a model-config JSON is given. Returns the header ({} for torch files)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        if not path.is_file():
            raise ExtractError(f"{where}: checkpoint {path} not found")
        if path.stat().st_size == 0:
            raise ExtractError(f"{where}: checkpoint {path} is empty")
        return {}
    header = safetensors_header(path, f"{where}: checkpoint")
    found = shapes(header)
    if not found:
        raise ExtractError(f"{where}: checkpoint {path} holds no tensors")
    embed = (config or {}).get("embed_dim")
    for key in ("visual.proj", "text_projection"):
        if embed and key in found and found[key][-1] != int(embed):
            raise ExtractError(f"{where}: checkpoint {path}: {key} has width {found[key][-1]}, the model "
                               f"config's embed_dim is {embed} (a checkpoint of another architecture?)")
    return header


def _ft_layout(found: dict[str, tuple[int, ...]], path: Path, where: str):
    if "head.weight" in found:
        return "gla-ft/1", found["head.weight"], {k[7:]: v for k, v in found.items() if k.startswith("visual.")}
    if "classification_head.weight" in found:
        visual = {k[len(WISE_PREFIX):]: v for k, v in found.items() if k.startswith(WISE_PREFIX)}
        return "wise-ft", found["classification_head.weight"], visual
    raise ExtractError(
        f"{where}: fine-tuned checkpoint {path}: neither the gla-ft/1 layout (visual.*, head.weight) "
        "nor the WiSE-FT layout (image_encoder.model.visual.*, classification_head.weight)"
    )


def torch_file_shapes(path: Path, where: str) -> tuple[dict[str, tuple[int, ...]], dict[str, str]] | None:
    """(shapes, metadata) of a torch state-dict file, memory-mapped; None without torch."""
    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:  # a legacy (non-zip) file cannot be memory-mapped
            if "mmap" not in str(e):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        msg = " ".join(str(e).split())[:200] or type(e).__name__
        raise ExtractError(f"{where}: fine-tuned checkpoint {path} is not a torch state dict (save "
                           f"model.state_dict(), not the pickled module): {msg}") from None
    if not isinstance(obj, dict):
        raise ExtractError(f"{where}: fine-tuned checkpoint {path} does not hold a dict of tensors")
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    if isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    found = {k.removeprefix("module."): tuple(v.shape) for k, v in obj.items() if hasattr(v, "shape")}
    return found, {k: str(v) for k, v in meta.items()}


def check_finetuned(path: str | os.PathLike, num_classes: int, arch: str, where: str,
                    pretrained_header: dict[str, Any] | None = None,
                    embed_dim: int | None = None, rows: list[int] | None = None) -> None:
    """A fine-tuned checkpoint: its head is as wide as the class list, its image encoder
    has the pretrained one's tensors and shapes, its metadata names the same arch.
    ``rows``: a dataset covering a subset of the checkpoint's classes (``classes`` /
    ``source_classes``) uses those head rows, as ``finetuned.load_finetuned`` does."""
    path = Path(path)
    if not path.is_file():
        raise ExtractError(f"{where}: fine-tuned checkpoint {path} not found")
    if path.suffix == ".safetensors":
        header = safetensors_header(path, f"{where}: fine-tuned checkpoint")
        found, meta = shapes(header), header.get("__metadata__") or {}
    else:
        opened = torch_file_shapes(path, where)
        if opened is None:
            return  # checked when loaded
        found, meta = opened
    layout, head, visual = _ft_layout(found, path, where)
    if layout == FT_FORMAT and meta.get("format", FT_FORMAT) != FT_FORMAT:
        raise ExtractError(f"{where}: fine-tuned checkpoint {path}: format {meta['format']!r}, expected {FT_FORMAT!r}")
    if meta.get("arch") and arch and meta["arch"] != arch:
        raise ExtractError(f"{where}: fine-tuned checkpoint {path} was made for arch {meta['arch']!r}, not {arch!r}")
    subset = bool(rows) and len(head) == 2 and head[0] != num_classes and len(rows) == num_classes
    if subset and (max(rows) >= head[0] or min(rows) < 0):
        raise ExtractError(f"{where}: fine-tuned checkpoint {path}: class rows {list(rows)} outside "
                           f"its {head[0]} classes")
    if len(head) != 2 or (head[0] != num_classes and not subset):
        raise ExtractError(f"{where}: fine-tuned checkpoint {path} has a head for {head[0]} classes, "
                           f"the dataset has {num_classes}")
    if embed_dim and head[1] != int(embed_dim):
        raise ExtractError(f"{where}: fine-tuned checkpoint {path}: its head takes {head[1]} features, "
                           f"the image encoder gives {embed_dim}")
    if not visual:
        raise ExtractError(f"{where}: fine-tuned checkpoint {path} holds no image-encoder tensors")
    own = shapes(pretrained_header or {}, "visual.")
    if own:
        missing = sorted(set(own) - set(visual))
        bad = sorted(k for k in set(own) & set(visual) if own[k] != visual[k])
        extra = sorted(set(visual) - set(own))
        if missing or bad or extra:
            what = (f"{len(missing)} missing tensors (e.g. {missing[0]})" if missing
                    else f"shape mismatch at {bad[0]}: {visual[bad[0]]} vs {own[bad[0]]}" if bad
                    else f"{len(extra)} unexpected tensors (e.g. {extra[0]})")
            raise ExtractError(f"{where}: fine-tuned checkpoint {path} does not fit the image encoder "
                               f"of arch {arch!r}: {what}")
