"""The zero-shot head: class names × templates → one normalised text embedding per class.

Prompts of all classes are batched together through the text tower; each class's head
row is the mean of its prompts' normalised embeddings, renormalised (as in CLIP's
ImageNet notebook and open_clip's ``build_zero_shot_classifier``). Zero-shot logits are
``logit_scale.exp() * cos(image, class)`` (``+ logit_bias`` for SigLIP-style models).

Heads are cached under ``<store>/cache/heads/<key>.npy`` where the key hashes the model
identity (with precision), the class names and the templates, so reruns and datasets
with the same classes skip the text tower.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from gla.extract.cellformat import atomic_write_bytes, text_hash
from gla.extract.models import autocast

log = logging.getLogger("extract")

PROMPT_BATCH = 256


def head_key(model_key: str, class_names: list[str], templates: list[str]) -> str:
    raw = f"{model_key}|{text_hash(class_names)}|{text_hash(templates)}"
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def head_cache_path(store: str | os.PathLike, key: str) -> Path:
    return Path(store) / "cache" / "heads" / f"{key}.npy"


def prompts_for(class_names: list[str], templates: list[str]) -> list[str]:
    """Class-major prompt list: all templates of class 0, then class 1, ..."""
    return [t.replace("{}", c) for c in class_names for t in templates]


def _encode_prompts(loaded: Any, prompts: list[str]) -> np.ndarray:
    """Normalised text embeddings (len(prompts), D) float32; the only text-tower call."""
    import torch
    import torch.nn.functional as F

    out = []
    with torch.inference_mode(), autocast(loaded.device, loaded.precision):
        for i in range(0, len(prompts), PROMPT_BATCH):
            tokens = loaded.tokenizer(prompts[i : i + PROMPT_BATCH]).to(loaded.device)
            emb = loaded.model.encode_text(tokens).float()
            out.append(F.normalize(emb, dim=-1).cpu().numpy())
    return np.concatenate(out, axis=0)


def compute_head(loaded: Any, class_names: list[str], templates: list[str]) -> np.ndarray:
    """(C, D) float32 unit rows: mean of each class's normalised prompt embeddings, renormalised."""
    emb = _encode_prompts(loaded, prompts_for(class_names, templates))
    emb = emb.reshape(len(class_names), len(templates), -1).astype(np.float64).mean(axis=1)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return emb.astype(np.float32)


def zeroshot_head(
    loaded: Any, class_names: list[str], templates: list[str], store: str | os.PathLike | None = None
) -> np.ndarray:
    """The head for ``class_names`` × ``templates``, from the store's cache when present."""
    key = head_key(loaded.key, class_names, templates)
    path = head_cache_path(store, key) if store is not None else None
    if path is not None and path.is_file():
        head = np.load(path)
        if head.shape[0] == len(class_names):
            log.info("zero-shot head from cache %s", path.name)
            return head
    head = compute_head(loaded, class_names, templates)
    if path is not None:
        import io

        buf = io.BytesIO()
        np.save(buf, head)
        atomic_write_bytes(path, buf.getvalue())
    return head


def logit_params(model: Any) -> tuple[float, float]:
    """(scale, bias): zs = scale * cosine + bias."""
    scale = float(model.logit_scale.detach().float().exp().reshape(-1)[0])
    bias = getattr(model, "logit_bias", None)
    return scale, (float(bias.detach().float().reshape(-1)[0]) if bias is not None else 0.0)


def zs_from_embeddings(emb: np.ndarray, head: np.ndarray, scale: float, bias: float = 0.0) -> np.ndarray:
    """Zero-shot logits from stored image embeddings (renormalised) on the CPU."""
    x = np.asarray(emb, dtype=np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return (scale * (x @ head.T.astype(np.float32)) + bias).astype(np.float32)
