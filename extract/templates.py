"""Prompt templates for the zero-shot head: built-in sets or a text file.

A template is a format string with one ``{}`` for the class name.

- ``"simple"``: one template, ``"a photo of a {}."``.
- ``"openai-imagenet"``: OpenAI's 80 ImageNet templates as shipped with open_clip
  (``open_clip.OPENAI_IMAGENET_TEMPLATES``).
- anything else: a path to a UTF-8 text file, one template per line; blank lines and
  lines starting with ``#`` are ignored.
"""

from __future__ import annotations

from pathlib import Path

from gla.extract.cellformat import text_hash
from gla.extract.errors import ExtractError

SIMPLE = ("a photo of a {}.",)


def _open_clip_set(name: str) -> list[str]:
    """A template set from open_clip's ``zero_shot_metadata`` module.

    That module is plain data: it is loaded from open_clip's package folder without
    importing open_clip (and so torch), which keeps a skipped, complete cell cheap.
    """
    import importlib.util

    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ExtractError("the built-in template sets need open_clip (pip install open_clip_torch)")
    path = Path(list(spec.submodule_search_locations)[0]) / "zero_shot_metadata.py"
    mod_spec = importlib.util.spec_from_file_location("_gla_open_clip_zero_shot_metadata", path)
    try:
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)
        seq = getattr(module, name)
    except Exception:  # layout changed: the regular import
        import open_clip

        seq = getattr(open_clip, name)
    return [t("{}") for t in seq]


BUILTIN = {
    "simple": lambda: list(SIMPLE),
    "openai-imagenet": lambda: _open_clip_set("OPENAI_IMAGENET_TEMPLATES"),
}


def load_templates(spec: str) -> list[str]:
    """Templates for a config value: a built-in set's name or a file path."""
    spec = spec or "simple"
    if spec in BUILTIN:
        return BUILTIN[spec]()
    path = Path(spec)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ExtractError(
            f"templates file {path} not found (built-in sets: {', '.join(BUILTIN)})"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ExtractError(f"templates file {path} is not readable text: {e}") from None
    out = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    if not out:
        raise ExtractError(f"templates file {path} holds no templates")
    for i, t in enumerate(out):
        if t.count("{}") != 1:
            raise ExtractError(
                f"templates file {path}: template {i + 1} ({t!r}) needs exactly one '{{}}' for the class name"
            )
    return out


def templates_hash(templates: list[str]) -> str:
    return text_hash(templates)
