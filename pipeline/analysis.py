"""``analyze_store``: the store-wide entry point of ``gla analyze``.

It selects cells, takes the store lock and brings the results up to date through
``pipeline.incremental`` (which runs ``pipeline.cell_analysis.analyze_cell`` per changed
cell). The per-cell worker layer lives in ``pipeline.cell_analysis``; this module only
orchestrates, so the two layers import one way.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from gla.pipeline.cell_analysis import CellResult, StoreAnalysisOptions
from gla.pipeline.config import CellFilter
from gla.pipeline.errors import UserError
from gla.pipeline.incremental import AnalyzeSummary, Log, analyze_cells, load_cache
from gla.pipeline.lock import store_lock
from gla.pipeline.runner import ComputeOptions, Runner
from gla.pipeline.store import Store

Only = str | Sequence[str] | CellFilter | None


def select_cells(store: Store, only: Only = None) -> list[tuple[str, str]]:
    """The store's cells that ``only`` (``--only`` text, a list of them, or a CellFilter) keeps."""
    cells = store.cells()
    if not cells:
        raise UserError(f"{store.logits_dir}: no cells (import or extract logits first)")
    filt = only if isinstance(only, CellFilter) else CellFilter(only)
    chosen = [(m, d) for m, d in cells if filt.keeps(m, d)]
    if not chosen:
        have = ", ".join(f"model={m},dataset={d}" for m, d in cells)
        raise UserError(f"--only matched no cell (cells: {have})")
    return chosen


class AnalyzeResults(list):
    """The CellResults of ``analyze_store`` (a list) plus ``.run``: what the incremental
    run did (analysed, unchanged, removed...)."""

    run: AnalyzeSummary | None = None


def analyze_store(
    store: Store | str | os.PathLike,
    options: StoreAnalysisOptions | None = None,
    only: Only = None,
    *,
    compute: ComputeOptions | None = None,
    runner: Runner | None = None,
    force: bool = False,
    log: Log | None = None,
    load_results: bool = True,
) -> AnalyzeResults:
    """Analyse the selected cells and rebuild the result tables, incrementally.

    Cells whose inputs and options are unchanged since their cached results are not
    recomputed; the others fan out on the runner (``compute``: a Dask LocalCluster, an
    existing cluster, or in-process for little work; see ``pipeline.runner``). The
    combined tables are rebuilt from the per-cell caches (cells not selected keep their
    last results; cells deleted from logits/ drop out). Holds the store lock. If any cell
    fails, raises ``UserError`` naming it and leaves the tables untouched (the other
    cells' new results stay cached). Returns the selected cells' results (read back from
    their caches; ``load_results=False`` skips that and returns an empty list with ``.run``).
    """
    store = store if isinstance(store, Store) else Store(store)
    options = options or StoreAnalysisOptions()
    cells = select_cells(store, only)
    with store_lock(store.root, "gla analyze", read_only_ok=True):  # no change: nothing written
        run = analyze_cells(store, options, cells=cells, runner=runner, compute=compute,
                            force=force, strict=True, log=log)
    if run.failed:
        first = run.failed[0]
        more = f" (and {len(run.failed) - 1} more failed cell(s))" if len(run.failed) > 1 else ""
        msg = first.error if first.user else f"cell {first.key}: {first.error}"
        raise UserError(msg + more)
    out = AnalyzeResults()
    for m, d in cells if load_results else []:
        cache = load_cache(store.root, m, d)
        out.append(CellResult(m, d, cache["tables"], cache["key"], cache["diagnostics"]))
    out.run = run
    return out
