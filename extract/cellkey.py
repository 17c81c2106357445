"""The cell key and its generation tag: what identifies a cell's content and names its files.

An extraction from images (``extract.run``) and a re-derivation of zs from stored image
embeddings (``extract.reembed``) both compute them, and must agree for the same inputs:
a later ``gla extract`` then finds a re-derived cell complete.
"""

from __future__ import annotations

from typing import Any

from gla.extract.models import identity_key


def cell_key(components: dict[str, Any]) -> str:
    """The hash of everything the cell's content depends on (``run.cell_components``)."""
    return identity_key(components)


def generation(key: str) -> str:
    """The generation tag of a cell key: the same inputs always write the same names, so
    sharded and resumed runs meet on the same files."""
    return key[:12]
