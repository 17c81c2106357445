"""The one error type the extraction stage raises for bad input.

``ExtractError`` is a ``ValueError`` whose message is one line naming the file, column or
option at fault; ``pipeline`` turns it into a ``UserError`` (exit code 2).
"""

from __future__ import annotations

import difflib


class ExtractError(ValueError):
    """Bad extraction input: a missing or corrupt image, a wrong checkpoint, a name mismatch."""


def did_you_mean(word: str, choices) -> str:
    """`` (did you mean 'x'?)`` for the closest known name (difflib), or ``""``."""
    names = [str(c) for c in choices]
    close = difflib.get_close_matches(str(word), names, n=1, cutoff=0.6)
    # a shortened name (threads for threads_per_worker) is not "close" to difflib
    close = close or [n for n in names if len(str(word)) >= 3 and n.startswith(str(word))][:1]
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_name(what: str, word: str, choices) -> str:
    """One line: ``unknown <what> 'x' (did you mean 'y'?); known: a, b, c``."""
    known = [str(c) for c in choices]
    shown = ", ".join(known[:12]) + (", ..." if len(known) > 12 else "")
    return f"unknown {what} {word!r}{did_you_mean(word, known)}; known: {shown}"
