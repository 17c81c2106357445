"""Fine-tuned classifiers: the pretrained arch's image encoder plus a linear head.

Two checkpoint layouts are read:

- ``gla-ft/1`` (ours; safetensors, or a torch file holding the same flat dict):
  tensors ``visual.*`` (= ``model.visual.state_dict()``), ``head.weight`` (C, D) and
  ``head.bias`` (C,); safetensors metadata ``{"format": "gla-ft/1", "arch": <open_clip
  arch>, "num_classes": "C", "normalize": "true"|"false"}``.
  Logits = ``head(normalize(visual(x)))`` (no normalisation when normalize is false).
- WiSE-FT (torch state dict, optionally under ``"state_dict"``):
  ``image_encoder.model.visual.*`` + ``classification_head.weight``/``.bias``; the input
  of the head is the normalised image feature (WiSE-FT's ``ClassificationHead(normalize=True)``).

A checkpoint made for another architecture (arch metadata, or tensors that do not fit
the image encoder) or another class count is refused with an :class:`ExtractError`.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from gla.extract.errors import ExtractError
from gla.extract.models import checkpoint_sha256

FORMAT = "gla-ft/1"
WISE_PREFIX = "image_encoder.model.visual."


def _read(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """(tensors, metadata) from a safetensors or torch file."""
    import torch

    if not path.is_file():
        raise ExtractError(f"fine-tuned checkpoint {path} not found")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        except Exception as e:  # safetensors raises its own error types
            raise ExtractError(f"fine-tuned checkpoint {path} is not a readable safetensors file: {e}") from None
        return tensors, meta
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ExtractError(
            f"fine-tuned checkpoint {path} is not a torch state dict (save model.state_dict(), "
            f"not the pickled module): {msg}"
        ) from None
    if not isinstance(obj, dict):
        raise ExtractError(f"fine-tuned checkpoint {path} does not hold a dict of tensors")
    # {"state_dict": {...}, "metadata": {...}} or a flat dict (optionally with "metadata")
    meta_raw = obj.get("metadata")
    meta = {k: str(v) for k, v in meta_raw.items()} if isinstance(meta_raw, dict) else {}
    if isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    tensors = {k.removeprefix("module."): v for k, v in obj.items() if hasattr(v, "shape")}
    return tensors, meta


def _split_layout(tensors: dict[str, Any], path: Path) -> tuple[str, dict[str, Any], Any, Any]:
    if "head.weight" in tensors:
        visual = {k[len("visual."):]: v for k, v in tensors.items() if k.startswith("visual.")}
        return FORMAT, visual, tensors["head.weight"], tensors.get("head.bias")
    if "classification_head.weight" in tensors:
        visual = {k[len(WISE_PREFIX):]: v for k, v in tensors.items() if k.startswith(WISE_PREFIX)}
        return "wise-ft", visual, tensors["classification_head.weight"], tensors.get(
            "classification_head.bias"
        )
    raise ExtractError(
        f"fine-tuned checkpoint {path}: neither the gla-ft/1 layout (visual.*, head.weight) "
        "nor the WiSE-FT layout (image_encoder.model.visual.*, classification_head.weight)"
    )


def load_finetuned(path: str | os.PathLike, clip_model: Any, arch: str, num_classes: int,
                   rows: list[int] | None = None):
    """Build the fine-tuned classifier (an ``nn.Module``: images -> (N, C) logits).

    ``clip_model`` is the loaded pretrained CLIP: its image encoder is copied as the
    skeleton the checkpoint's ``visual.*`` tensors must fit exactly. ``rows``: a dataset
    that covers a subset of the checkpoint's classes (a shifted test set such as
    ImageNet-R) keeps those head rows, in that order, when the head is wider than it.
    """
    path = Path(path)
    tensors, meta = _read(path)
    layout, visual_sd, weight, bias = _split_layout(tensors, path)
    full = int(weight.shape[0]) if weight.ndim == 2 else -1
    subset = bool(rows) and full != num_classes and len(rows) == num_classes
    if subset:
        if max(rows) >= full or min(rows) < 0:
            raise ExtractError(f"fine-tuned checkpoint {path}: class rows {list(rows)} outside its {full} classes")
        weight = weight[list(rows)]
        bias = None if bias is None else bias.reshape(-1)[list(rows)]
    if layout == FORMAT and meta:
        _check_metadata(meta, path, arch, full if subset else num_classes, num_classes)
    normalize = str(meta.get("normalize", "true")).lower() != "false"
    if weight.ndim != 2 or weight.shape[0] != num_classes:
        raise ExtractError(
            f"fine-tuned checkpoint {path} has a head for {weight.shape[0]} classes, "
            f"the dataset has {num_classes}"
        )
    visual = _fitted_visual(clip_model, visual_sd, path, arch)
    ft = _classifier(visual, weight, bias, normalize, path).eval()
    device = next(clip_model.parameters()).device
    ft.to(device)
    return ft, {**finetuned_identity(path), "layout": layout, "normalize": normalize}


def _check_metadata(meta: dict[str, str], path: Path, arch: str, head_classes: int, num_classes: int) -> None:
    """A gla-ft/1 checkpoint's metadata names its format, arch and class count: all must fit."""
    fmt = meta.get("format", FORMAT)
    if fmt != FORMAT:
        raise ExtractError(f"fine-tuned checkpoint {path}: format {fmt!r}, expected {FORMAT!r}")
    ck_arch = meta.get("arch", "")
    if ck_arch and arch and ck_arch != arch:
        raise ExtractError(
            f"fine-tuned checkpoint {path} was made for arch {ck_arch!r}, not {arch!r}"
        )
    if meta.get("num_classes") and int(meta["num_classes"]) != head_classes:
        raise ExtractError(
            f"fine-tuned checkpoint {path} has {meta['num_classes']} classes, "
            f"the dataset has {num_classes}"
        )


def _fitted_visual(clip_model: Any, visual_sd: dict[str, Any], path: Path, arch: str) -> Any:
    """A float32 copy of the pretrained image encoder holding the checkpoint's tensors,
    which must match its own exactly (names and shapes)."""
    if not visual_sd:
        raise ExtractError(f"fine-tuned checkpoint {path} holds no image-encoder tensors")
    visual = copy.deepcopy(clip_model.visual).float()
    own = visual.state_dict()
    missing = sorted(set(own) - set(visual_sd))
    unexpected = sorted(set(visual_sd) - set(own))
    bad_shape = sorted(k for k in set(own) & set(visual_sd) if tuple(own[k].shape) != tuple(visual_sd[k].shape))
    if missing or unexpected or bad_shape:
        what = (
            f"{len(missing)} missing tensors (e.g. {missing[0]})" if missing
            else f"{len(unexpected)} unexpected tensors (e.g. {unexpected[0]})" if unexpected
            else f"shape mismatch at {bad_shape[0]}: {tuple(visual_sd[bad_shape[0]].shape)} vs {tuple(own[bad_shape[0]].shape)}"
        )
        raise ExtractError(
            f"fine-tuned checkpoint {path} does not fit the image encoder of arch {arch!r}: {what}"
        )
    visual.load_state_dict({k: v.float() for k, v in visual_sd.items()}, strict=True)
    return visual


def _classifier(visual: Any, weight: Any, bias: Any, normalize: bool, path: Path) -> Any:
    """images -> head(normalize(visual(x))) as an ``nn.Module`` (no normalisation when
    ``normalize`` is false)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    head = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        head.weight.copy_(weight.float())
        if bias is not None:
            head.bias.copy_(bias.float().reshape(-1))

    class FineTuned(nn.Module):
        def __init__(self):
            super().__init__()
            self.visual = visual
            self.head = head
            self.normalize = normalize

        def forward(self, x):
            f = self.visual(x)
            if f.shape[-1] != self.head.in_features:
                raise ExtractError(
                    f"fine-tuned checkpoint {path}: head expects {self.head.in_features} features, "
                    f"the image encoder gives {f.shape[-1]}"
                )
            if self.normalize:
                f = F.normalize(f, dim=-1)
            return self.head(f)

    return FineTuned()


def finetuned_identity(path: str | os.PathLike) -> dict[str, Any]:
    """What names a fine-tuned checkpoint (its content), computable without loading it."""
    path = Path(path)
    if not path.is_file():
        raise ExtractError(f"fine-tuned checkpoint {path} not found")
    return {"sha256": checkpoint_sha256(path)}


def wiseft_column(alpha: float) -> str:
    """The cell column (and method name) of WiSE-FT at ``alpha``: ``wiseft@0.5``."""
    return f"wiseft@{float(alpha):g}"


def wiseft_model(ft_model: Any, clip_model: Any, zs_weight: Any, zs_bias: float, alpha: float):
    """WiSE-FT (Wortsman et al. 2022): θ = (1 − α)·θ_zs + α·θ_ft, image tower and head.

    The zero-shot end of the path is the pretrained image tower with the zero-shot head
    as a linear layer (``zs_weight`` = logit_scale × class text embeddings, ``zs_bias``
    the logit bias), so α = 0 gives the zs logits and α = 1 the ft logits. The fine-tuned
    head must start from the zero-shot head (normalised features) for the path to be
    meaningful; a head on unnormalised features is refused.
    """
    import torch

    if not getattr(ft_model, "normalize", True):
        raise ExtractError(
            "wiseft_alphas: the fine-tuned head reads unnormalised features (normalize=false); "
            "WiSE-FT interpolates towards the zero-shot head, which reads normalised ones"
        )
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ExtractError(f"wiseft_alphas: {alpha} is outside [0, 1]")
    wise = copy.deepcopy(ft_model)
    zs_visual = clip_model.visual.state_dict()
    mixed = {}
    for k, v in ft_model.visual.state_dict().items():
        z = zs_visual[k].to(v.device)
        mixed[k] = torch.lerp(z.to(v.dtype), v, alpha) if v.is_floating_point() else v
    wise.visual.load_state_dict(mixed, strict=True)
    with torch.no_grad():
        w0 = torch.as_tensor(zs_weight, dtype=torch.float32, device=wise.head.weight.device)
        wise.head.weight.copy_(torch.lerp(w0, ft_model.head.weight.float(), alpha))
        b_ft = ft_model.head.bias if ft_model.head.bias is not None else torch.zeros_like(w0[:, 0])
        b0 = torch.full_like(b_ft, float(zs_bias))
        if wise.head.bias is None:
            wise.head.bias = torch.nn.Parameter(b0.clone())
        wise.head.bias.copy_(torch.lerp(b0, b_ft.float(), alpha))
    return wise.eval()
