"""What open_clip knows, read without importing torch: architectures and pretrained tags.

``import open_clip`` loads torch (seconds). The catalog needs only open_clip's model-config
folder (one JSON per architecture) and its pretrained-tag registry (``pretrained.py``,
plain dicts), so both are read from the installed package's files; when open_clip is
already imported, its own functions answer.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
import types
from pathlib import Path

_PKG = "_gla_open_clip_files"


@functools.lru_cache(maxsize=4)
def _pretrained_registry(folder: Path) -> dict[str, dict]:
    """open_clip's ``_PRETRAINED`` from ``pretrained.py`` and its two sibling modules, run
    under a stand-in package name so open_clip's ``__init__`` (and torch) is not run.
    ``safetensors.torch`` is hidden for the duration: the registry does not need it."""
    saved = {k: sys.modules.get(k) for k in (_PKG, "safetensors.torch")}
    pkg = types.ModuleType(_PKG)
    pkg.__path__ = [str(folder)]
    sys.modules[_PKG] = pkg
    if "torch" not in sys.modules:
        sys.modules["safetensors.torch"] = None  # type: ignore[assignment]
    try:
        spec = importlib.util.spec_from_file_location(f"{_PKG}.pretrained", folder / "pretrained.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod._PRETRAINED
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
        for k in [k for k in sys.modules if k.startswith(_PKG + ".")]:
            del sys.modules[k]


def _folder() -> Path:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.origin:
        raise ModuleNotFoundError("open_clip", name="open_clip")
    return Path(spec.origin).parent


def pretrained_cfg(arch: str, tag: str) -> dict:
    """open_clip's pretrained config of ``arch`` + ``tag`` ({} when unknown), without torch
    unless open_clip is already imported (tags are normalised as open_clip does)."""
    oc = sys.modules.get("open_clip")
    if oc is not None:
        return oc.get_pretrained_cfg(arch, tag)
    try:
        registry = _pretrained_registry(_folder())
    except ModuleNotFoundError:
        raise
    except Exception:  # noqa: BLE001 - a layout this reader does not know: ask open_clip itself
        import open_clip

        return open_clip.get_pretrained_cfg(arch, tag)
    return registry.get(arch, {}).get(tag.lower().replace("-", "_"), {})


def open_clip_catalog() -> dict[str, list[str]]:
    """``{architecture: [pretrained tags]}``, architectures sorted, tags in open_clip's order.
    Raises ModuleNotFoundError when open_clip is not installed."""
    oc = sys.modules.get("open_clip")
    if oc is not None:
        return {a: oc.list_pretrained_tags_by_model(a) for a in sorted(oc.list_models())}  # same order as below
    folder = _folder()
    try:
        registry = _pretrained_registry(folder)
    except Exception:  # noqa: BLE001 - a layout this reader does not know: ask open_clip itself
        import open_clip

        return open_clip_catalog() if open_clip else {}
    archs = {p.stem for p in (folder / "model_configs").glob("*.json")} | set(registry)
    return {a: list(registry.get(a, {})) for a in sorted(archs)}
