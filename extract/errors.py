"""The one error type the extraction stage raises for bad input.

``ExtractError`` is a ``ValueError`` whose message is one line naming the file, column or
option at fault; ``pipeline`` turns it into a ``UserError`` (exit code 2).
"""

from __future__ import annotations


class ExtractError(ValueError):
    """Bad extraction input: a missing or corrupt image, a wrong checkpoint, a name mismatch."""
