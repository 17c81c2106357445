"""Pretrained open_clip models: load by arch + pretrained (tag, hf-hub id, local file).

``load_model(spec, device="auto", precision="fp32")`` returns a :class:`LoadedModel` with
the model (eval mode), its validation transform, the tokenizer and the model *identity*
(arch + pretrained tag, or the checkpoint's sha256), which keys the zero-shot head cache
and the cell metadata. An architecture outside open_clip's registry comes from a
model-config JSON (``spec["model_config"]``) registered with ``open_clip.add_model_config``.

Precision: weights stay float32; ``bf16``/``fp16`` run under ``torch.autocast`` on CUDA
only. On a CPU the effective precision is ``fp32`` (recorded as such in the identity).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gla.extract import hub
from gla.extract.cellformat import file_sha256
from gla.extract.errors import ExtractError

log = logging.getLogger("extract")

PRECISIONS = ("fp32", "bf16", "fp16")


def resolve_device(device: str = "auto") -> str:
    """"auto" → ``cuda:<LOCAL_RANK>`` when CUDA is there (torchrun sets LOCAL_RANK), else cpu."""
    import torch

    if device and device != "auto":
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ExtractError(f"option extract.device = {device!r}: CUDA is not available here")
        return device
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0') or 0)}"
    return "cpu"


def effective_precision(precision: str, device: str) -> str:
    """The precision actually used: reduced precision needs CUDA (autocast)."""
    if precision not in PRECISIONS:
        raise ExtractError(f"option extract.precision = {precision!r}: expected one of {PRECISIONS}")
    return precision if device.startswith("cuda") else "fp32"


def autocast(device: str, precision: str):
    """Autocast context for reduced precision on CUDA; a no-op otherwise."""
    import torch

    if device.startswith("cuda") and precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


@functools.lru_cache(maxsize=64)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(path)


def checkpoint_sha256(path: str | os.PathLike) -> str:
    """sha256 of a checkpoint file (memoised on path, size and mtime within a process)."""
    st = os.stat(path)
    return _sha256_cached(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


HF_HUB_PREFIX = "hf-hub:"
RANDOM_INIT = "none"  # pretrained = "none": random weights, said explicitly (the config refuses "")


@dataclass(frozen=True)
class PretrainedRef:
    """What a model spec's ``pretrained`` names: nothing (random init), an open_clip
    pretrained tag, a Hugging Face Hub repo (``hf-hub:org/repo``) or a local file."""

    kind: str  # "none" | "tag" | "hub" | "file"
    value: str  # the tag, the hub repo id (no prefix) or the file path

    @property
    def text(self) -> str:
        return HF_HUB_PREFIX + self.value if self.kind == "hub" else self.value


def parse_pretrained(text: str | None, base: str | os.PathLike | None = None) -> PretrainedRef:
    """The one rule for telling a path from a tag (used by the config and by extract).

    ``none`` (or nothing) is a random initialisation. ``hf-hub:`` is a hub repo. A value with a path separator or a file suffix is a file
    (open_clip tags such as ``openai`` or ``laion2b_s34b_b79k`` have neither); so is a
    bare name that exists as a file (relative to ``base`` when given, else the cwd).
    """
    text = (text or "").strip()
    if not text or text.lower() == RANDOM_INIT:
        return PretrainedRef("none", "")
    if text.startswith(HF_HUB_PREFIX):
        return PretrainedRef("hub", text[len(HF_HUB_PREFIX):])
    p = Path(os.path.expanduser(text))
    if "/" in text or os.sep in text or "." in p.name or (Path(base or ".") / p).exists():
        return PretrainedRef("file", str(p))
    return PretrainedRef("tag", text)


def is_local_file(pretrained: str) -> bool:
    return parse_pretrained(pretrained).kind == "file"


def check_models(models: list[dict[str, Any]]) -> None:
    """Before any cell starts, for model specs (``ModelSpec`` dicts), each (arch,
    pretrained) once: weights neither cached nor downloadable raise ExtractError in one
    line (``hub.check_weights``; no torch needed, so the calling process can check)."""
    seen = set()
    for m in models:
        arch, pretrained = m.get("arch") or "", m.get("pretrained") or ""
        if (arch, pretrained) not in seen:
            seen.add((arch, pretrained))
            hub.check_weights(arch, parse_pretrained(pretrained), f"models[{m.get('name')!r}].pretrained")


def register_model_config(arch: str, path: str | os.PathLike) -> dict[str, Any]:
    """Register a model-config JSON under the name ``arch`` with open_clip; returns the config."""
    import open_clip

    path = Path(path)
    try:
        cfg = json.loads(path.read_text())
    except FileNotFoundError:
        raise ExtractError(f"model config {path} not found") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ExtractError(f"model config {path} is not valid JSON: {e}") from None
    if not isinstance(cfg, dict) or not all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise ExtractError(f"model config {path} needs the keys embed_dim, vision_cfg and text_cfg")
    if open_clip.get_model_config(arch) == cfg:
        return cfg  # already registered (a rescan of open_clip's configs costs ~50 ms)
    if path.stem == arch:
        open_clip.add_model_config(path)
    else:
        # open_clip names a config by its file stem: register a copy named after the arch.
        folder = Path(tempfile.mkdtemp(prefix="gla-model-config-"))
        shutil.copyfile(path, folder / f"{arch}.json")
        open_clip.add_model_config(folder / f"{arch}.json")
    return cfg


def model_identity(spec: dict[str, Any]) -> dict[str, Any]:
    """What names the pretrained model's weights: arch + tag, hf-hub id, or file sha256."""
    arch = spec.get("arch") or ""
    ref = parse_pretrained(spec.get("pretrained"))
    ident: dict[str, Any] = {"arch": arch}
    if ref.kind == "file":
        if not Path(ref.value).is_file():
            raise ExtractError(f"models[{spec.get('name')!r}].pretrained: checkpoint {ref.value} not found")
        ident["checkpoint_sha256"] = checkpoint_sha256(ref.value)
    else:
        ident["pretrained"] = ref.text or "random-init"
    cfg_path = spec.get("model_config") or spec.get("model_config_file") or ""
    if cfg_path:
        if not Path(cfg_path).is_file():
            raise ExtractError(f"models[{spec.get('name')!r}].model_config: {cfg_path} not found")
        ident["model_config_sha256"] = checkpoint_sha256(cfg_path)
    return ident


def identity_key(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]


@dataclass
class LoadedModel:
    model: Any  # open_clip CLIP / CustomTextCLIP, eval mode, on `device`
    preprocess: Any  # PIL image -> tensor (the validation transform)
    model_name: str  # what open_clip knows it by (arch or hf-hub id)
    arch: str
    identity: dict[str, Any]
    device: str
    precision: str  # effective precision
    extra: dict[str, Any] = field(default_factory=dict)

    @functools.cached_property
    def tokenizer(self) -> Any:
        """open_clip's tokenizer for the model (loaded on first use: a cached head needs none)."""
        import open_clip

        with hub.offline(self.extra.get("hub_offline", False)):
            return open_clip.get_tokenizer(self.model_name)

    @property
    def key(self) -> str:
        return identity_key({**self.identity, "precision": self.precision})


def load_model(spec: dict[str, Any], device: str = "auto", precision: str = "fp32") -> LoadedModel:
    """Load the pretrained CLIP named by a model spec (``ModelSpec.model_dump()``)."""
    import open_clip

    name = spec.get("name") or spec.get("arch")
    arch = spec.get("arch") or ""
    pretrained = spec.get("pretrained") or ""
    ref = parse_pretrained(pretrained)
    if not arch and ref.kind != "hub":
        raise ExtractError(f"models[{name!r}]: arch is empty")
    cfg_path = spec.get("model_config") or spec.get("model_config_file") or ""
    if cfg_path:
        register_model_config(arch, cfg_path)
    identity = model_identity(spec)
    device = resolve_device(device)
    if effective_precision(precision, device) != precision:
        log.warning("precision %s runs under autocast on CUDA only; using fp32 on %s", precision, device)
    precision = effective_precision(precision, device)
    if ref.kind == "hub":
        model_name, pretrained_arg = ref.text, None
    else:
        model_name, pretrained_arg = arch, (ref.value or None)
        if model_name not in open_clip.list_models():
            raise ExtractError(
                f"models[{name!r}].arch = {arch!r} is not an open_clip architecture; "
                "give model_config = <config JSON> for a custom one"
            )
    # Weights not on disk and no network: say so now, not after open_clip's retries.
    offline = hub.check_weights(arch, ref, f"models[{name!r}].pretrained")
    try:
        with hub.offline(offline):
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=pretrained_arg, device=device
            )
    except Exception as e:  # open_clip raises RuntimeError, safetensors/torch their own types
        msg = " ".join(str(e).split()) or type(e).__name__  # one line
        raise ExtractError(
            f"models[{name!r}]: cannot load {arch!r} with pretrained {pretrained!r}: {msg[:400]}"
        ) from None
    model.eval()
    log.info("loaded %s (%s) on %s, precision %s", arch, identity, device, precision)
    return LoadedModel(model, preprocess, model_name, arch, identity, device, precision,
                       extra={"hub_offline": offline})
