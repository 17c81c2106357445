"""HTML building blocks of the report: cell formatting, tables, inline images, anchors."""

from __future__ import annotations

import html
from typing import Any

import polars as pl
from gla.extract import cellformat as cf

WARN = "⚠"


def fmt(v: Any, kind: str = "pct") -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        if v != v:  # NaN
            return "—"
        if kind == "pct":
            return f"{100 * v:.2f}"
        if kind == "pp":
            return f"{100 * v:+.2f}"
        if kind == "p" and v < 1e-4:
            return "&lt; 0.0001"
        return f"{v:.4f}"
    return html.escape(str(v))


def short(v: Any, keep: int = 12, hashes_from: int = 32) -> str:
    """A hex hash of ``hashes_from`` characters or more cut to its first ``keep`` (enough
    to compare two runs by eye); "—" for none; other values as they are."""
    if v is None or v == "":
        return "—"
    text = str(v)
    is_hash = len(text) >= hashes_from and all(c in "0123456789abcdef" for c in text.lower())
    return text[:keep] if is_hash else text


def table(df: pl.DataFrame, cols: list[tuple[str, str, str]], row_class: Any = None) -> str:
    """cols: (column, header, kind) with kind in pct/pp/num/p/text/int."""
    head = "".join(f'<th class="{"l" if kind == "text" else ""}">{html.escape(h)}</th>' for _, h, kind in cols)
    # In a horizontally scrolling box: a wide matrix scrolls inside it, the page never does.
    out = [f"<div class='tw'><table><thead><tr>{head}</tr></thead><tbody>"]
    for row in df.iter_rows(named=True):
        cells = []
        for c, _, kind in cols:
            v = row.get(c)
            css = "l" if kind == "text" else ""
            if kind == "pp" and isinstance(v, float) and v == v:
                css = "pos" if v > 0 else "neg" if v < 0 else ""
            cells.append(f'<td class="{css}">{fmt(v, kind)}</td>')
        out.append(f'<tr class="{row_class(row) if row_class else ""}">' + "".join(cells) + "</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def interval(lo: str, hi: str, scale: float = 100.0, signed: bool = False) -> pl.Expr:
    """'[lo, hi]' in points from two fraction columns (null when either is null)."""
    f = "{:+.2f}" if signed else "{:.2f}"
    return pl.format("[{}, {}]", *((pl.col(c) * scale).map_elements(f.format, return_dtype=pl.String) for c in (lo, hi)))


def img(b64: str, alt: str) -> str:
    return f'<img src="data:image/png;base64,{b64}" alt="{html.escape(alt)}">'


def anchor(model: str, dataset: str) -> str:
    return "cell-" + cf.safe_name(f"{model}--{dataset}")
