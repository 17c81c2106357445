"""Pretrained weights from the hub: found in the cache, or refused at once when offline.

open_clip fetches the weights of a pretrained tag or an ``hf-hub:org/repo`` model
through huggingface_hub (the Hugging Face cache, ``$HF_HOME``/``$HF_HUB_CACHE``), or
for a few tags without huggingface_hub, from a URL into ``~/.cache/clip``. Two things
make a load with no network slow or noisy, and both are handled here, before open_clip
is called (torch-free: ``gla run`` checks every model before any work starts):

- the files are cached: the load runs in huggingface_hub's offline mode, so no request
  (and no retry against an unreachable host) is made;
- they are not, and ``HF_HUB_OFFLINE`` is set or the hub's host does not answer within
  ``GLA_HUB_PROBE_TIMEOUT`` seconds (default 3): one line says so and how to point
  ``pretrained`` at a local file.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from gla.extract import catalog
from gla.extract.errors import ExtractError

HF_CONFIG_NAME = "open_clip_config.json"
HF_WEIGHTS_NAME = "open_clip_pytorch_model.bin"
HF_SAFE_WEIGHTS_NAME = "open_clip_model.safetensors"
DEFAULT_HF_ENDPOINT = "https://huggingface.co"


def _safe_first(filename: str) -> list[str]:
    """The names open_clip tries for one weights file, safetensors first."""
    if filename == HF_WEIGHTS_NAME:
        return [HF_SAFE_WEIGHTS_NAME, filename]
    if filename.endswith((".bin", ".pth")):
        return [filename[:-4] + ".safetensors", filename]
    return [filename]


def needed_files(arch: str, ref: Any) -> tuple[str, list[list[str]]] | None:
    """``(hub repo id, [[alternatives] per file])`` a load of ``ref`` downloads, or None
    when it downloads nothing from the hub (a file, random init, an unknown tag, which
    open_clip itself refuses at once). ``ref`` is a ``models.PretrainedRef``."""
    if ref.kind == "hub":
        return ref.value, [[HF_CONFIG_NAME], _safe_first(HF_WEIGHTS_NAME)]
    if ref.kind != "tag":
        return None
    cfg = catalog.pretrained_cfg(arch, ref.value)
    if not cfg or "file" in cfg or not cfg.get("hf_hub") or not _has_hf_hub():
        return None
    repo, filename = os.path.split(cfg["hf_hub"])  # as open_clip splits it: "org/repo/" or "org/repo/file"
    return repo, [_safe_first(filename or HF_WEIGHTS_NAME)]


def _has_hf_hub() -> bool:
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:
        return False
    return True


def cached(repo: str, files: list[list[str]]) -> bool:
    """Whether, for every needed file, one of its names is in the Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    return all(
        any(isinstance(try_to_load_from_cache(repo, name), str) for name in names) for names in files
    )


def reachable(url: str, timeout: float) -> bool:
    """Whether a TCP connection to the URL's host opens within ``timeout`` seconds (name
    lookup included: it runs in a thread, since getaddrinfo has no timeout of its own)."""
    u = urlparse(url)
    if not u.hostname:
        return False
    port = u.port or (443 if u.scheme == "https" else 80)
    ok: list[bool] = []

    def probe() -> None:
        with contextlib.suppress(OSError), socket.create_connection((u.hostname, port), timeout=timeout):
            ok.append(True)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    return bool(ok)


def _probe_timeout() -> float:
    try:
        return max(0.1, float(os.environ.get("GLA_HUB_PROBE_TIMEOUT", "3")))
    except ValueError:
        return 3.0


def check_weights(arch: str, ref: Any, what: str) -> bool:
    """Before open_clip loads ``ref``: True when every file is cached (load offline), False
    when a download is needed and possible; raises ExtractError (one line) when the
    weights are not cached and the hub cannot be reached."""
    if ref.kind == "tag" and not _has_hf_hub():
        return _check_url_cache(arch, ref, what)
    need = needed_files(arch, ref)
    if need is None:
        return False
    repo, files = need
    if cached(repo, files):
        return True
    from huggingface_hub import constants

    endpoint = constants.ENDPOINT or DEFAULT_HF_ENDPOINT
    if constants.is_offline_mode():
        why = "HF_HUB_OFFLINE is set"
    elif not reachable(endpoint, _probe_timeout()):
        why = f"{urlparse(endpoint).hostname} is not reachable"
    else:
        return False
    raise ExtractError(
        f"{what} = {ref.text!r}: the weights ({repo}) are not in the Hugging Face cache "
        f"({constants.HF_HUB_CACHE}) and {why}; run once with network to cache them, or set "
        f"pretrained to a local weights file (e.g. pretrained = \"/data/weights/{HF_SAFE_WEIGHTS_NAME}\" with arch = {arch!r})"
    )


def _check_url_cache(arch: str, ref: Any, what: str) -> bool:
    """Tags open_clip downloads from a URL (no huggingface_hub): ~/.cache/clip/<file>."""
    url = catalog.pretrained_cfg(arch, ref.value).get("url", "")
    if not url or (Path.home() / ".cache" / "clip" / os.path.basename(url)).is_file():
        return False
    if reachable(url, _probe_timeout()):
        return False
    raise ExtractError(
        f"{what} = {ref.text!r}: the weights are not cached (~/.cache/clip) and "
        f"{urlparse(url).hostname} is not reachable; set pretrained to a local weights file"
    )


@contextlib.contextmanager
def offline(on: bool) -> Iterator[None]:
    """huggingface_hub's offline mode for the duration (it reads the flag at each call)."""
    if not on or not _has_hf_hub():
        yield
        return
    from huggingface_hub import constants

    old = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old
