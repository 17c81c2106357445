"""The self-contained HTML audit report: ``<store>/report/index.html``.

Every number and plot comes from the store's Parquet tables (``results/*.parquet``). The
page has no scripts and no external URLs: CSS is inline and plots are matplotlib PNGs
(object API, Agg canvas, no global state) inlined as base64 data URIs, so the file can be
mailed, archived or opened offline.

Modules: ``style`` (method names, colours, markers), ``tables`` (reading the tables and
the numbers derived from them), ``figures`` (one function per plot, each returning a
Figure), ``page`` (the HTML) and ``writer`` (rebuild only on change, per-cell figure
cache, atomic write).
"""

from gla.pipeline.report.page import DEFAULT_MAX_CELLS, render
from gla.pipeline.report.style import METHOD_ORDER
from gla.pipeline.report.tables import ReportData, gain_table, load_tables
from gla.pipeline.report.writer import FigureCache, tables_key, write_report

__all__ = [
    "DEFAULT_MAX_CELLS", "METHOD_ORDER", "FigureCache", "ReportData", "gain_table", "load_tables",
    "render", "tables_key", "write_report",
]
