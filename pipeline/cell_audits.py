"""The audits beyond the paper for one cell of a store: π_t estimation and tracking over
windows, and label issues (``gla analyze --target-estimator em|bbse``, ``--label-issues``).

The thin store side of ``gla.analyze.audits``: it reads the fit split whole (small), and
hands the eval split to the estimators as a re-iterable stream of parts. A split whose
logits fit in ``_CACHE_BYTES`` is read once and kept in memory. A larger one is streamed
from the store on each of the few passes (BBSE, scoring, label issues), and EM, which
makes one pass per iteration, keeps the split's calibrated posteriors in an unlinked
scratch file (``_Scratch``): each EM pass then reads them back part by part, and memory
stays bounded by a part.

Windows come from the eval split's optional ``window`` column (``gla import --window``), or
from several splits named in order (``analysis.window_splits``), each a window.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from gla.analyze import audits, schema
from gla.analyze.cell import FittedPriors
from gla.pipeline.errors import UserError
from gla.pipeline.store import CellInfo, SplitInfo, Store

_CACHE_BYTES = 256 << 20
WINDOW_COLUMN = "window"


def wanted(options: Any) -> bool:
    return bool(options.target_estimators) or bool(options.label_issues)


def _window_values(info: SplitInfo) -> list[pa.Array] | None:
    """The window column of each part (None when the split has none)."""
    out = []
    for f in info.files:
        pf = pq.ParquetFile(f)
        if WINDOW_COLUMN not in pf.schema_arrow.names:
            return None
        out.append(pf.read(columns=[WINDOW_COLUMN]).column(0).combine_chunks().cast(pa.string()))
    return out


def _window_order(values: list[str]) -> list[str]:
    """Windows in order: numerically when every key is a number, else as sorted strings
    (ISO dates sort in time order)."""
    try:
        return sorted(values, key=float)
    except ValueError:
        return sorted(values)


class _Stream:
    """Parts of (zs, ft, labels, window codes) over one or more splits, re-iterable."""

    def __init__(self, store: Store, info: CellInfo, splits: list[tuple[str, SplitInfo]],
                 batch_rows: int, window_codes: list[list[np.ndarray]] | None):
        self.store, self.info, self.splits = store, info, splits
        self.batch_rows, self.codes = batch_rows, window_codes
        size = sum(s.rows for _, s in splits) * info.num_classes * 4 * (2 if info.has_ft else 1)
        self.cache = list(self._read()) if size <= _CACHE_BYTES else None

    def _read(self) -> Iterator[tuple]:
        m, d = self.info.model, self.info.dataset
        for si, (split, sinfo) in enumerate(self.splits):
            files = {f: i for i, f in enumerate(sinfo.files)}
            for b in self.store.iter_split(m, d, split, columns=("label", "zs", "ft"),
                                           batch_rows=self.batch_rows, info=sinfo):
                t = None
                if self.codes is not None:
                    t = self.codes[si][files[b.file]][b.row_offset : b.row_offset + len(b)]
                yield b.zs, b.ft, b.labels, t

    def __call__(self) -> Iterator[tuple]:
        return iter(self.cache) if self.cache is not None else self._read()


class _Scratch:
    """``keep`` for EM over a large split: (posteriors, windows) parts written once to an
    unlinked temporary file under $TMPDIR (no name, so nothing is left behind even after
    kill -9), read back part by part on every pass. Without room for it, the posteriors are
    recomputed from the store on every pass instead (slower, same numbers)."""

    def __init__(self, stack: ExitStack):
        self.stack = stack

    def __call__(self, make: Callable[[], Iterable]) -> Callable[[], Iterable]:
        f = self.stack.enter_context(tempfile.TemporaryFile(prefix="gla-em-"))
        layout = []  # (offset, shape, dtype) of each array, two per part
        try:
            for post, t in make():
                for a in (post, t):
                    a = None if a is None else np.ascontiguousarray(a)
                    layout.append(None if a is None else (f.tell(), a.shape, a.dtype))
                    if a is not None:
                        f.write(a.data)
            f.flush()
        except OSError as e:
            f.close()
            print(f"gla: no room for the EM scratch file in {tempfile.gettempdir()} ({e.strerror}); "
                  "recomputing posteriors on every pass (set TMPDIR to a larger disk)", file=sys.stderr)
            return make
        fd = f.fileno()

        def read(entry):
            if entry is None:
                return None
            off, shape, dtype = entry
            n = int(np.prod(shape)) * dtype.itemsize
            return np.frombuffer(os.pread(fd, n, off), dtype=dtype).reshape(shape)

        return lambda: ((read(layout[i]), read(layout[i + 1])) for i in range(0, len(layout), 2))


def _windows(store: Store, info: CellInfo, options: Any, eval_info: SplitInfo):
    """(splits to stream, window codes per split per part, window names) for the eval data."""
    if options.window_splits:
        splits = [(s, store.split_info(info.model, info.dataset, s)) for s in options.window_splits]
        codes = [[np.full(pq.ParquetFile(f).metadata.num_rows, i, np.int64) for f in si.files]
                 for i, (_, si) in enumerate(splits)]
        return splits, codes, list(options.window_splits)
    values = _window_values(eval_info)
    splits = [(options.eval_split, eval_info)]
    if values is None:
        return splits, None, []
    for f, v in zip(eval_info.files, values, strict=True):
        if v.null_count:
            raise UserError(f"{f}: column {WINDOW_COLUMN} is missing (null) at row "
                            f"{int(np.flatnonzero(v.is_null().to_numpy(zero_copy_only=False))[0])}")
    names = _window_order(pc.unique(pa.chunked_array(values)).to_pylist())
    lookup = pa.array(names, pa.string())
    codes = [[pc.index_in(v, value_set=lookup).to_numpy().astype(np.int64) for v in values]]
    return splits, codes, names


def _fit_arrays(store: Store, info: CellInfo, options: Any, fit_info: SplitInfo) -> tuple:
    fit = store.read_split(info.model, info.dataset, options.fit_split,
                           columns=("label", "zs", "ft"), info=fit_info)
    if (fit.labels < 0).any():
        raise UserError(f"{fit_info.files[0]}: column label has unknown (-1) rows; "
                        f"--target-estimator and --label-issues need a labelled split "
                        f"{options.fit_split!r}")
    return fit.zs, fit.ft, fit.labels.astype(np.int64)


def run(store: Store, info: CellInfo, options: Any, fitted: FittedPriors, fit_info: SplitInfo,
        eval_info: SplitInfo, refit: audits.Refit | None = None) -> dict:
    """Extra tables of the audits the options ask for ({} when none). ``refit`` fits the
    cell's priors on some fit-split rows: the label-issue audit cross-fits the scores of
    its clean reference with it when that reference is the fit split."""
    if not wanted(options):
        return {}
    try:
        aopts = audits.AuditOptions(tuple(options.target_estimators), float(options.window_memory),
                                    label_issues=bool(options.label_issues), fdr=float(options.fdr))
    except ValueError as e:
        raise UserError(f"analysis: {e}") from None
    fit = _fit_arrays(store, info, options, fit_info)
    names = list(info.class_names)
    out: dict[str, list] = {}
    if aopts.target_estimators:
        splits, codes, wnames = _windows(store, info, options, eval_info)
        parts = _Stream(store, info, splits, options.batch_rows, codes)
        W = len(wnames)
        with ExitStack() as stack:  # the scratch file, if any, is gone once π_t is estimated
            keep = audits.in_memory if parts.cache is not None else _Scratch(stack)
            res = audits.estimate_targets(fit, parts, fitted, aopts, W, keep=keep)
        whole, win = audits.score_targets(parts, fitted, res, W)
        shares = audits.label_shares(whole, win, info.num_classes, W)
        split_name = "+".join(s for s, _ in splits)
        for k, v in audits.target_tables(info.model, info.dataset, split_name, names, fitted, res,
                                         whole, win, wnames, shares, groups=options.groups).items():
            out.setdefault(k, []).append(v)
    if aopts.label_issues:
        if options.clean_split and options.clean_split != options.fit_split:
            cinfo = store.split_info(info.model, info.dataset, options.clean_split)
            clean_fit = _fit_arrays(store, info, replace(options, fit_split=options.clean_split), cinfo)
            clean = audits.clean_scores(clean_fit, fitted)
        else:
            clean = audits.clean_scores(fit, fitted, refit)
        split = options.label_issue_split or options.eval_split
        sinfo = eval_info if split == options.eval_split else store.split_info(info.model, info.dataset, split)
        parts = _Stream(store, info, [(split, sinfo)], options.batch_rows, None)
        audit = audits.audit_split(parts, fitted, clean, aopts.fdr)
        ids = pa.concat_arrays([a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a for _, a in
                                store.read_sample_ids(info.model, info.dataset, split)])
        sid = ids.take(pa.array(audit.rows["index"].astype(np.int64))).to_pylist()
        for k, v in audits.label_tables(info.model, info.dataset, fitted.primary, split,
                                        names, audit, sid).items():
            out.setdefault(k, []).append(v)
    return {k: schema.concat(k, v) for k, v in out.items()}


def merge(tables: dict, extra: dict) -> dict:
    """The cell's tables with the audit tables added (rows appended to shared tables)."""
    merged = dict(tables)
    for k, v in extra.items():
        merged[k] = schema.concat(k, [merged[k], v]) if k in merged else v
    return merged
