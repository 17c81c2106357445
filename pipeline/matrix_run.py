"""``gla run``: every stage for every cell of a config that needs it, incrementally.

Stages, in order, under the store's lock (one run at a time per store):

1. extract — ``extract.run.extract_cell`` per model × dataset, fanned out over the
   runner (extraction is itself incremental and resumable: complete cells are skipped
   without loading a model). A cell whose config, checkpoints, dataset files and sealed
   manifests are unchanged since its last successful extraction is skipped here without
   even importing torch (``results/.extract/<model>/<dataset>.json``).
2. counts — each dataset's ``train_counts`` file → ``datasets/<dataset>/class_counts.parquet``
   (rewritten only when the source file changed).
3. analyze — ``pipeline.incremental.analyze_cells``: cells whose content key changed are
   analysed on the runner, the combined tables rebuilt from the per-cell caches.
4. report — ``pipeline.report.write_report`` (rebuilt only when the tables changed).

A failing cell is reported with its key and does not stop the others; the run's exit
code is then 1.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gla.extract import cellformat as cf
from gla.extract import records
from gla.extract.datasets import dataset_fingerprint
from gla.extract.errors import ExtractError
from gla.extract.models import check_models, parse_pretrained
from gla.extract.records import IntegrityError
from gla.extract.run import extract_cell
from gla.pipeline import publication
from gla.pipeline.cell_analysis import StoreAnalysisOptions
from gla.pipeline.config import CellFilter, Config, DatasetSpec, ModelSpec, model_dict
from gla.pipeline.distshift import write_shift
from gla.pipeline.errors import UserError
from gla.pipeline.importer import import_counts
from gla.pipeline.incremental import AnalyzeSummary, PublishOptions, analyze_cells
from gla.pipeline.lock import store_lock
from gla.pipeline.prune import cells_not_in_config
from gla.pipeline.report import write_report
from gla.pipeline.runner import CellError, Runner
from gla.pipeline.store import Store

STAGES = ("extract", "analyze", "report")


@dataclass
class RunSummary:
    store: Path
    cells: list[tuple[str, str]] = field(default_factory=list)
    extracted: list[tuple[str, str]] = field(default_factory=list)  # extract ran (wrote or checked)
    extract_skipped: list[tuple[str, str]] = field(default_factory=list)  # fast path: unchanged
    # What each extracted cell's run did: "written" (images encoded), "rezeroed" (zs
    # re-derived from stored image embeddings, no image encoded), "skipped" (found complete).
    extract_status: dict[tuple[str, str], str] = field(default_factory=dict)
    counts_written: list[str] = field(default_factory=list)
    analysis: AnalyzeSummary | None = None
    report: Path | None = None
    report_written: bool = False
    failed: list[CellError] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    publish: PublishOptions | None = None

    @property
    def ok(self) -> bool:
        return not self.failed

    def lines(self) -> list[str]:
        out = [f"store {self.store}: {len(self.cells)} cell(s)"]
        if "extract" in self.seconds:
            did = list(self.extract_status.values())
            out.append(
                f"extract: {did.count('written')} encoded from images, "
                f"{did.count('rezeroed')} zs re-derived from stored image embeddings (no image encoded), "
                f"{did.count('skipped') + len(self.extract_skipped)} unchanged "
                f"({self.seconds['extract']:.2f} s)"
            )
        if self.counts_written:
            out.append(f"class counts written: {', '.join(self.counts_written)}")
        if self.analysis is not None:
            out.append(f"analyze: {self.analysis.line()}")
        if self.report is not None:
            out.append(f"report: {self.report} ({'written' if self.report_written else 'unchanged'})")
        for err in self.failed:
            out.append(f"FAILED {err.key}: {err.error}")
        out.append(f"total {self.seconds.get('total', 0.0):.2f} s")
        return out


# --------------------------------------------------------------------------- extract


def _stat_sig(path: str) -> list[Any]:
    """Size and mtime of a file, or of a folder's entries two levels deep (cheap)."""
    if not path or "://" in path:
        return [path]
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        return [path, "missing"]
    sig: list[Any] = [path, st.st_size, st.st_mtime_ns]
    if p.is_dir():
        for child in sorted(p.iterdir())[:10000]:
            try:
                cs = child.stat()
            except OSError:
                continue
            sig.append((child.name, cs.st_size, cs.st_mtime_ns))
    return sig


def extract_fingerprint(store: Path, model: dict, dataset: dict, options: dict) -> str | None:
    """What a cell's extraction depends on, as seen from outside extract: the specs, the
    stat signature of every file they name, the dataset's fingerprint (every file it
    reads; and $GLA_DATA_DIR for built-in sets), the
    installed extract code and the cell's sealed manifests. None if the cell has no
    sealed split."""
    cell = cf.cell_dir(store, model["name"], dataset["name"])
    try:
        splits = cf.sealed_splits(cell)
        if not splits or _parts_touched(cell, splits):
            return None  # extract_cell checks the parts and rebuilds what no longer matches
    except IntegrityError:
        return None
    weights = parse_pretrained(model.get("pretrained"))  # a tag or hub id is in `model` itself
    files = [weights.value if weights.kind == "file" else "", model.get("model_config", ""), model.get("templates", "")]
    files += [model.get("finetuned", {}).get(dataset["name"], "")]
    files += list((model.get("kshot") or {}).get(dataset["name"], {}).values())
    data_dir = os.environ.get("GLA_DATA_DIR", "")
    manifests = {s: (cf.read_manifest(cell, s) or {}).get("write_id") for s in splits}
    code_sig = records.code_version(Path(__file__).resolve().parent.parent / "extract")
    doc = {
        "model": model, "dataset": dataset, "options": options,
        "files": [_stat_sig(f) for f in files if f],
        # every image, manifest row and shard, recursively (sizes + mtimes): a nested
        # addition or an in-place overwrite is seen here, not only a top-level change
        "dataset_files": dataset_fingerprint(dataset),
        "data_dir": [data_dir, *(_stat_sig(data_dir)[1:] if data_dir else [])],
        "manifests": manifests, "code": code_sig,
        "expected_splits": sorted((dataset.get("splits") or {}).keys()),
    }
    if doc["expected_splits"] and not set(doc["expected_splits"]) <= set(splits):
        return None
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _parts_touched(cell: Path, splits: list[str]) -> bool:
    """The no-change fast path: any part missing, resized or touched since it was sealed."""
    for s in splits:
        mpath = cf.manifest_file(cell, s)
        for e in (cf.read_manifest(cell, s) or {}).get("parts", []):
            if records.stat_changed(cell / str(e.get("file")), e, mpath):
                return True
    return False


def _extract_stamp(store: Path, model: str, dataset: str) -> records.Stamp:
    return records.Stamp(store / "results" / ".extract" / model / f"{dataset}.json")


@dataclass(frozen=True)
class ExtractTask:
    store: str
    model: dict
    dataset: dict
    options: dict

    @property
    def name(self) -> str:
        return f"{self.model['name']}/{self.dataset['name']}"


def run_extract_task(task: ExtractTask) -> dict:
    """One cell's extraction (inside a worker). Extract errors become one-line messages."""
    threads = int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
    if threads > 0:
        import torch

        torch.set_num_threads(threads)
    return extract_cell(task.store, task.model, task.dataset, task.options, progress=False)


def _torch_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("torch", "open_clip"))


# --------------------------------------------------------------------------- counts


def import_train_counts(store: Path, dataset: dict) -> bool:
    """``train_counts`` of a dataset spec → class_counts.parquet (if the source changed)."""
    src = dataset.get("train_counts") or ""
    if not src:
        return False
    path = Path(src)
    if not path.exists():
        raise UserError(f"datasets[{dataset['name']!r}].train_counts: file {src} not found")
    st = Store(store)
    names = list(dataset.get("class_names") or [])
    sig = records.key_of({"src": str(path), "sha": cf.file_sha256(path), "names": cf.text_hash(names)})
    stamp = records.Stamp(store / "datasets" / dataset["name"] / ".train_counts_source.json")
    if st.counts_path(dataset["name"]).exists() and stamp.is_current(sig):
        return False
    classnames = None
    if names:
        classnames = stamp.path.with_name(".class_names.txt")
        cf.atomic_write_bytes(classnames, ("\n".join(names) + "\n").encode())
    stamp.clear()
    import_counts(st, dataset["name"], path, classnames)
    stamp.write(sig)
    return True


# --------------------------------------------------------------------------- run


def stale_cells(config: Config) -> list[tuple[str, str]]:
    """Cells the store holds that the config no longer names (the report flags them;
    ``gla prune`` removes them)."""
    return cells_not_in_config(config.store, [(m.name, d.name) for m, d in config.cells()])


def config_hash(config: Config) -> str:
    """A short hash of the config as loaded (paths resolved; its file name left out)."""
    return records.key_of(config.model_dump(exclude={"source"}))


def publish_options(config: Config, given: PublishOptions | None = None) -> PublishOptions:
    """The run's publication settings: ``given`` (CLI) over the config's [results] table."""
    given = given or PublishOptions()
    res = config.results
    return replace(
        given, kind="run", config_hash=config_hash(config),
        keep_runs=given.keep_runs if given.keep_runs is not None else res.keep_runs,
        keep_days=given.keep_days if given.keep_days is not None else res.keep_days,
        replace_estimators=given.replace_estimators or res.replace_estimators,
    )


def analysis_options(config: Config) -> StoreAnalysisOptions:
    return StoreAnalysisOptions.from_mapping(config.analysis.model_dump())


Pair = tuple[ModelSpec, DatasetSpec]


def run_config(
    config: Config,
    *,
    only: str | list[str] | CellFilter | None = None,
    stages: tuple[str, ...] | list[str] = STAGES,
    force: bool = False,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: bool = True,
    quiet: bool = False,
    runner: Runner | None = None,
    publish: PublishOptions | None = None,
) -> RunSummary:
    """Run ``stages`` for every (selected) cell of ``config`` that needs it.

    The analysis publishes one run (``publish``: gate hook, retention; the config's
    hash and [results] table fill the rest) only when no cell failed at any stage."""
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise UserError(f"--stages: unknown stage {bad[0]!r} (stages: {', '.join(STAGES)})")
    t0 = time.perf_counter()
    store = Path(config.store)
    summary = RunSummary(store=store)
    filt = only if isinstance(only, CellFilter) else CellFilter(only)
    pairs = config.cells(filt)
    if not pairs:
        what = "--only matched no model × dataset pair" if filt else "the config has no model × dataset pair"
        raise UserError(f"{config.source or 'config'}: {what}")
    summary.cells = [(m.name, d.name) for m, d in pairs]

    def log(msg: str) -> None:
        if not quiet:
            print(f"gla: {msg}", file=sys.stderr)

    own = runner is None
    runner = runner or Runner(config.compute, workers=workers, scheduler=scheduler, progress=progress, quiet=quiet)
    stage_fns = {"extract": _stage_extract, "analyze": _stage_analyze, "report": _stage_report}
    summary.publish = publish_options(config, publish)
    try:
        with store_lock(store, "gla run"):
            for stage in STAGES:
                if stage in stages:
                    t = time.perf_counter()
                    stage_fns[stage](config, pairs, store, force, runner, summary, log)
                    summary.seconds[stage] = time.perf_counter() - t
    finally:
        if own:
            runner.close()
    summary.seconds["total"] = time.perf_counter() - t0
    return summary


def _stage_analyze(config: Config, pairs: list[Pair], store: Path, force: bool, runner: Runner,
                   summary: RunSummary, log: Callable[[str], None]) -> None:
    for d in {d.name: d for _, d in pairs}.values():
        if import_train_counts(store, d.model_dump()):
            summary.counts_written.append(d.name)
        write_shift(store, d.model_dump())  # evaluate_with: scored with the source cell's priors
    have = set(Store(store).cells())
    failed_keys = {e.key for e in summary.failed}
    for m, d in summary.cells:
        if (m, d) not in have and f"{m}/{d}" not in failed_keys:
            summary.failed.append(CellError(f"{m}/{d}", "no logits in the store (extract it first)"))
    selected = [c for c in summary.cells if c in have]
    if have:  # selected ⊆ have; none selected: the tables keep the last results
        publish = replace(summary.publish or PublishOptions(), enabled=not summary.failed)
        summary.analysis = analyze_cells(
            store, analysis_options(config), cells=selected, runner=runner, force=force, log=log,
            publish=publish,
        )
        summary.failed += summary.analysis.failed
    if summary.failed:
        log(f"nothing published: {len(summary.failed)} cell(s) failed "
            f"({', '.join(e.key for e in summary.failed[:8])}{' …' if len(summary.failed) > 8 else ''})")


def _stage_report(config: Config, pairs: list[Pair], store: Path, force: bool, runner: Runner,
                  summary: RunSummary, log: Callable[[str], None]) -> None:
    if summary.failed:
        log("report: left as it was (the run failed, nothing was published)")
    elif publication.latest(store) is not None:
        summary.report, summary.report_written = write_report(store, force=force, stale=stale_cells(config))
    else:
        log("report: no results tables yet; skipped")


def _stage_extract(config: Config, pairs: list[Pair], store: Path, force: bool, runner: Runner,
                   summary: RunSummary, log: Callable[[str], None]) -> None:
    opts = config.extract.model_dump()
    tasks = []
    for m, d in pairs:
        md, dd = model_dict(m, d), d.model_dump()
        fp = extract_fingerprint(store, md, dd, opts)
        if not force and fp is not None and _extract_stamp(store, m.name, d.name).is_current(fp):
            summary.extract_skipped.append((m.name, d.name))
            continue
        tasks.append(ExtractTask(str(store), md, dd, opts))
    if not tasks:
        return
    if not _torch_available():
        raise UserError(
            f"extract stage: {len(tasks)} cell(s) need extraction but torch/open_clip are not "
            "installed (pip install 'gla-pipeline[extract]', or run --stages analyze,report)"
        )
    try:  # weights neither cached nor downloadable stop the run here, before any cell
        check_models([t.model for t in tasks])
    except ExtractError as e:
        raise UserError(str(e)) from None
    for task, out in runner.map(run_extract_task, tasks, key=lambda t: t.name, description="extract"):
        cell = (task.model["name"], task.dataset["name"])
        if isinstance(out, CellError):
            summary.failed.append(out)
            continue
        summary.extracted.append(cell)
        summary.extract_status[cell] = str(out.get("status"))
        if out.get("status") in ("written", "skipped", "rezeroed"):
            fp = extract_fingerprint(store, task.model, task.dataset, task.options)
            if fp is not None:
                _extract_stamp(store, *cell).write(fp, status=out.get("status"))
        elif out.get("status") == "partial":
            summary.failed.append(CellError(f"{cell[0]}/{cell[1]}", "extraction incomplete (partial)"))
