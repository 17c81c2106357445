"""Writing the report: only when its input changed, redrawing only the changed cells.

The report is rebuilt only when the tables change (``report/.index.html.key.json`` holds
a hash of the tables and of this package's code), so a no-change rerun is instant.
Per-cell figures are cached beside the page, keyed by the cell's rows.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
from collections.abc import Collection
from pathlib import Path

from gla.extract import cellformat as cf
from gla.pipeline import rundiff
from gla.pipeline.errors import UserError
from gla.pipeline.report import diff_section, figures, page
from gla.pipeline.report.tables import CellView, load_tables, tables_digest

REPORT_VERSION = 2
_PACKAGE = Path(__file__).resolve().parent


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """Hash of the report package's source: a code change redraws everything."""
    h = hashlib.sha256()
    for f in sorted(_PACKAGE.glob("*.py")):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def tables_key(store: str | os.PathLike) -> str:
    """Hash of the tables' bytes and this package's code: the report's content key."""
    h = tables_digest(Path(store))
    h.update(f"report={REPORT_VERSION};code={code_digest()}".encode())
    return h.hexdigest()[:24]


def cell_digest(view: CellView) -> str:
    """Hash of the cell's rows in every table and of this package's code."""
    h = hashlib.sha256(f"{REPORT_VERSION}:{code_digest()}".encode())
    for part in (*(view.tables[n] for n in sorted(view.tables)), view.priors):
        if part is None:
            h.update(b"-")
            continue
        h.update(",".join(f"{c}:{t}" for c, t in part.schema.items()).encode())
        h.update(part.hash_rows(seed=0).to_numpy().tobytes())
    return h.hexdigest()[:20]


class FigureCache:
    """Per-cell figures kept beside the report (``.<name>.figures/``), keyed by a hash of
    the cell's rows in every table and of this package: a rerun after one cell changed
    redraws only that cell's figures. ``<cell>-<digest>.json`` lists a cell's figure
    names, ``<cell>-<digest>-<name>.png`` holds each. Unused files are removed after
    each render."""

    def __init__(self, folder: Path | None):
        self.folder = folder
        self.used: set[str] = set()

    @staticmethod
    def draw(view: CellView) -> dict[str, str]:
        return {name: figures.png_b64(fig) for name, fig in figures.cell_figures(view).items()}

    def get(self, view: CellView) -> dict[str, str]:
        if self.folder is None:
            return self.draw(view)
        prefix = f"{page.anchor(view.model, view.dataset)}-{cell_digest(view)}"
        index = self.folder / f"{prefix}.json"
        try:
            names = json.loads(index.read_text())
            got = {n: base64.b64encode((self.folder / f"{prefix}-{n}.png").read_bytes()).decode("ascii") for n in names}
        except (OSError, ValueError):
            got = self.draw(view)
            for n, b64 in got.items():
                cf.atomic_write_bytes(self.folder / f"{prefix}-{n}.png", base64.b64decode(b64))
            cf.atomic_write_bytes(index, json.dumps(list(got)).encode())
        self.used |= {index.name, *(f"{prefix}-{n}.png" for n in got)}
        return got

    def prune(self) -> None:
        if self.folder is not None and self.folder.is_dir():
            for f in [*self.folder.glob("*.png"), *self.folder.glob("*.json")]:
                if f.name not in self.used:
                    f.unlink(missing_ok=True)


def run_before(store: Path) -> tuple[str, dict] | None:
    """(label, tables) of the run before the latest one, or None when the store keeps
    no such run (a single run, or no run history)."""
    try:
        label, tables = rundiff.resolve(store, "previous")
    except UserError:
        return None
    return f"run {label}", tables


def write_report(
    store: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    max_cells: int = page.DEFAULT_MAX_CELLS,
    force: bool = False,
    previous: tuple[str, dict] | None = None,
    diff: bool = True,
    stale: Collection[tuple[str, str]] = (),
) -> tuple[Path, bool]:
    """Write the report (atomically). Returns (path, written); ``written`` is False when
    the tables are unchanged since the report at ``path`` was made. ``previous``:
    (label, tables) of the run to show the changes since; without it (and with
    ``diff``) the run before the latest one, when the store keeps one. ``stale``: the
    cells of the results that the config no longer lists (flagged in the page)."""
    store = Path(store)
    path = Path(out) if out else store / "report" / "index.html"
    # The run before the latest is fixed by the latest run, so "auto" suffices in the key.
    shown = previous[0] if previous else "auto" if diff else ""
    key = f"{tables_key(store)}-{max_cells}" + (f"-diff:{shown}" if shown else "")
    if stale:
        key += "-stale:" + hashlib.sha256(repr(sorted(stale)).encode()).hexdigest()[:12]
    marker = path.parent / f".{path.name}.key.json"
    if not force and path.exists() and marker.exists():
        try:
            if json.loads(marker.read_text()).get("key") == key:
                return path, False
        except ValueError:
            pass
    data = load_tables(store)
    cache = FigureCache(path.parent / f".{path.stem}.figures")
    if previous is None and diff:
        previous = run_before(store)
    sections = ()
    if previous is not None:  # (label, tables) of the run to show the changes since
        d = rundiff.compute(previous[1], rundiff.latest_tables(store))  # predictions too: paired
        sections = (diff_section.render(d, previous[0], "these results"),)
    html = page.render(data, max_cells=max_cells, figures_for=cache.get, extra_sections=sections, stale=stale)
    marker.unlink(missing_ok=True)
    cf.atomic_write_bytes(path, html.encode("utf-8"))  # 0666 & ~umask: for sharing
    cf.atomic_write_bytes(marker, json.dumps({"key": key}).encode())
    cache.prune()
    return path, True

