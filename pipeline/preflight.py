"""Pre-flight checks: every config mistake found in the first seconds, before any model
is loaded or image decoded.

``gla run``, ``gla extract`` and ``gla check`` call :func:`check_config`; ``gla analyze``
calls :func:`check_store_analysis`. Each check raises :class:`UserError` with one line
naming the file, key or option at fault (exit code 2), so nothing is written to the store.

What is checked, cheaply (file headers, folder listings, manifests; no tensor loaded):

- the store is writable (commands that write), every configured path exists;
- model configs are valid JSON; local checkpoints' safetensors headers load and their
  widths match the model config; each fine-tuned head is as wide as its dataset's class
  list and its image encoder has the pretrained one's tensors and shapes;
- each dataset lists: its class names map onto its folders or label names (a list
  matching only some of them is refused, naming the mismatches), every split can be
  filled, sample ids are unique across the cell's splits, manifest and shard paths stay
  inside the dataset root;
- templates parse; estimators are known (the config checks names against
  ``gla.analyze.priors.ESTIMATORS``); the fit split exists, differs from the eval split
  unless allowed and has a sample of every class; train counts cover every class; a
  target prior has one value per class.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gla.analyze.priors import LABEL_FREE
from gla.extract.checkpoint_headers import check_finetuned, check_pretrained
from gla.extract.datasets import Source, build_source
from gla.extract.errors import ExtractError, did_you_mean
from gla.extract.models import is_local_file
from gla.extract.sources import SourceError
from gla.extract.templates import BUILTIN as TEMPLATE_SETS
from gla.extract.templates import load_templates
from gla.pipeline import gate
from gla.pipeline.cell_analysis import cell_class_counts
from gla.pipeline.config import CellFilter, Config, DatasetSpec, ModelSpec, model_dict
from gla.pipeline.distshift import read_shift
from gla.pipeline.errors import UserError
from gla.pipeline.importer import load_target_prior, read_counts

STAGES = ("extract", "analyze", "report")


@dataclass
class CheckReport:
    """What passed: for ``gla check``'s summary line."""

    cells: int = 0
    checks: int = 0
    seconds: float = 0.0
    sources: dict[str, Source] = field(default_factory=dict)

    def line(self, source: str) -> str:
        return (f"{source}: ok ({self.cells} cell(s), {len(self.sources)} dataset(s) listed, "
                f"{self.checks} checks, {self.seconds:.2f} s)")


class _Checks:
    """Runs one check at a time; an extract-side error becomes a UserError naming the config."""

    def __init__(self, config: Config):
        self.config = config
        self.prefix = f"{config.source}: " if config.source else ""
        self.count = 0

    def fail(self, message: str) -> UserError:
        return UserError(f"{self.prefix}{message}")

    def run(self, fn, *args):
        self.count += 1
        try:
            return fn(*args)
        except (ExtractError, SourceError) as e:
            raise self.fail(" ".join(str(e).split())) from None


def check_config(config: Config, *, stages=STAGES, only: Any = None, writing: bool = True) -> CheckReport:
    """Every check of a run's config for the selected cells; raises UserError on the first problem."""
    t0 = time.perf_counter()
    ck = _Checks(config)
    filt = only if isinstance(only, CellFilter) else CellFilter(only)
    cells = config.cells(filt)
    if not cells:
        what = "--only matched no model × dataset pair" if filt else "the config has no model × dataset pair"
        raise ck.fail(what)
    report = CheckReport(cells=len(cells))
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise UserError(f"--stages: unknown stage {bad[0]!r}{did_you_mean(bad[0], STAGES)}; stages: {', '.join(STAGES)}")
    if writing:
        ck.run(check_store_writable, config.store)
    sched = config.compute.scheduler
    if sched and "://" not in sched and not Path(sched).is_file():
        raise ck.fail(f"compute.scheduler: scheduler file {sched} not found (or give tcp://HOST:PORT)")
    extract = "extract" in stages
    analyze = "analyze" in stages
    for d in dict((d.name, d) for _, d in cells).values():
        if extract:  # an analyze-only run may not see the images
            report.sources[d.name] = ck.run(build_source, d.model_dump())
            ck.run(_check_listing, d, report.sources[d.name])
        if d.train_counts:
            ck.run(_check_counts, config, d, report.sources.get(d.name))
        if analyze and d.name in report.sources:
            ck.run(_check_analysis_splits, config, d, report.sources[d.name])
    headers: dict[str, dict] = {}
    for m in dict((m.name, m) for m, _ in cells).values():
        if extract:
            headers[m.name] = ck.run(_check_model, m)
    for m, d in cells:
        if extract:
            templates = model_dict(m, d).get("templates") or "simple"
            if templates not in TEMPLATE_SETS:  # built-in sets are known good (and need open_clip)
                key = f"datasets[{d.name!r}].templates" if d.templates else f"models[{m.name!r}].templates"
                ck.run(_check_templates, key, templates)
            ft = m.finetuned.get(d.name)
            src = report.sources.get(d.name)
            if ft and src is not None:
                cfg = _model_config(m)
                rows = src.identity.get("source_classes") or src.identity.get("classes")
                ck.run(check_finetuned, ft, len(src.class_names), m.arch,
                       f"models[{m.name!r}].finetuned.{d.name}", headers.get(m.name), cfg.get("embed_dim"),
                       rows)
    if analyze:
        ck.run(_check_target_prior, config, report.sources)
        try:  # the [gate] rules parse (gla run would refuse them only after the checks)
            gate.parse(config.gate.rules, config.gate.alpha, where="gate.rules")
        except UserError as e:
            raise ck.fail(str(e)) from None
    report.checks = ck.count
    report.seconds = time.perf_counter() - t0
    return report


# --------------------------------------------------------------------------- store


def check_store_writable(store: str | os.PathLike) -> None:
    """The store (or the folder it will be made in) can be written."""
    p = Path(store)
    if p.exists() and not p.is_dir():
        raise ExtractError(f"store {p} is a file, not a folder")
    probe = p
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ExtractError(f"store {p}: {probe} is read-only (commands that only read, such as "
                           "gla report --out DIR, still work)")


# --------------------------------------------------------------------------- models


def _model_config(m: ModelSpec) -> dict[str, Any]:
    path = m.model_config_file
    if not path:
        return {}
    try:
        cfg = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ExtractError(f"models[{m.name!r}].model_config: file {path} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ExtractError(f"models[{m.name!r}].model_config: {path} is not valid JSON: {e}") from None
    if not isinstance(cfg, dict) or not all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise ExtractError(f"models[{m.name!r}].model_config: {path} needs the keys embed_dim, "
                           "vision_cfg and text_cfg")
    return cfg


def _check_model(m: ModelSpec) -> dict[str, Any]:
    """Model config and the local pretrained checkpoint's header; returns that header."""
    cfg = _model_config(m)
    if m.pretrained and is_local_file(m.pretrained):
        if not Path(m.pretrained).is_file():
            why = "is a folder, not a weights file" if Path(m.pretrained).is_dir() else "not found"
            raise ExtractError(f"models[{m.name!r}].pretrained: checkpoint {m.pretrained} {why}")
        return check_pretrained(m.pretrained, cfg, f"models[{m.name!r}].pretrained")
    return {}


def _check_templates(key: str, spec: str) -> None:
    try:
        load_templates(spec)
    except ExtractError as e:
        raise ExtractError(f"{key}: {e}") from None


# --------------------------------------------------------------------------- datasets


def _check_counts(config: Config, d: DatasetSpec, source: Source | None) -> None:
    """train_counts: readable, one count per class, none zero unless smoothed."""
    key = f"datasets[{d.name!r}].train_counts"
    if not Path(d.train_counts).is_file():
        raise ExtractError(f"{key}: file {d.train_counts} not found")
    c = len(source.class_names) if source is not None else None
    try:
        counts, where = read_counts(d.train_counts, c, f" (dataset {d.name!r} has {c} classes)")
    except UserError as e:
        raise ExtractError(f"{key}: {e}") from None
    if c is not None and len(counts) != c:
        raise ExtractError(f"{key}: {where} has {len(counts)} counts but dataset {d.name!r} has {c} classes")
    zero = np.flatnonzero(counts + config.analysis.smoothing == 0)
    if len(zero):
        k = int(zero[0])
        name = f" ({source.class_names[k]!r})" if source is not None else ""
        raise ExtractError(f"{key}: {where} is 0 for class {k}{name}: the counts must cover every "
                           "class (or set analysis.smoothing > 0)")


def _check_listing(d: DatasetSpec, source: Source) -> None:
    """At least two classes, and every file a manifest names is there (a stat per row)."""
    if len(source.class_names) < 2:
        raise ExtractError(f"datasets[{d.name!r}]: {len(source.class_names)} class(es) "
                           f"{source.class_names}; a zero-shot head needs at least 2")
    if d.kind != "manifest":
        return
    for split in source.splits.values():
        for sid, ref in zip(split.sample_ids, split.refs, strict=True):
            if not os.path.isfile(ref):
                raise ExtractError(f"datasets[{d.name!r}]: manifest {d.root}: the file of sample {sid!r} "
                                   f"(split {split.name!r}) is not there: {ref} not found")


def _check_analysis_splits(config: Config, d: DatasetSpec, source: Source) -> None:
    a = config.analysis
    for key, split in (("fit_split", a.fit_split), ("eval_split", a.eval_split)):
        if split not in source.splits:
            have = list(source.splits)
            raise ExtractError(f"analysis.{key} = {split!r}: dataset {d.name!r} has no such split"
                               f"{did_you_mean(split, have)}; its splits: {', '.join(have) or 'none'}")
    if a.fit_split == a.eval_split and not a.allow_fit_on_eval:
        raise ExtractError(f"analysis.fit_split and analysis.eval_split are both {a.fit_split!r}: fitting "
                           "priors on the eval split leaks; set analysis.allow_fit_on_eval = true to do it anyway")
    if any(e not in LABEL_FREE for e in a.estimators):
        fit = source.splits[a.fit_split]
        present = np.bincount(fit.labels[fit.labels >= 0], minlength=len(source.class_names))
        missing = np.flatnonzero(present == 0)
        if len(missing):
            k = int(missing[0])
            raise ExtractError(f"datasets[{d.name!r}].splits.{a.fit_split}: no image of class "
                               f"{source.class_names[k]!r} in the fit split; every class needs one")


def _check_target_prior(config: Config, sources: dict[str, Source]) -> None:
    """The distribution files of [analysis] (target_prior, fit_label_distribution) load
    and have one value per class of every dataset."""
    a = config.analysis
    fit_file = "" if a.fit_label_distribution in ("uniform", "counts") else a.fit_label_distribution
    for key, path, what in (("target_prior", a.target_prior, "target prior"),
                            ("fit_label_distribution", fit_file, "fit label distribution")):
        if not path:
            continue
        try:
            prior, where = load_target_prior(path, what=what)
        except UserError as e:
            raise ExtractError(f"analysis.{key}: {e}") from None
        for name, src in sources.items():
            if len(prior) != len(src.class_names):
                raise ExtractError(f"analysis.{key}: {where} has {len(prior)} values but dataset "
                                   f"{name!r} has {len(src.class_names)} classes")


# --------------------------------------------------------------------------- gla analyze


def check_store_analysis(store: Any, options: Any, cells: list[tuple[str, str]]) -> None:
    """``gla analyze``'s checks before any cell is analysed: the splits exist and differ;
    every split the analysis reads matches its seal (stat, and sha256 where a part was
    touched); the class counts and the target prior are readable and as wide as the cell.
    So a damaged input fails the whole run before any other cell's cache is rewritten."""
    if options.fit_split == options.eval_split and not options.allow_fit_on_eval:
        raise UserError(f"--fit-split and --eval-split are both {options.fit_split!r}: fitting priors "
                        "on the eval split leaks; pass --allow-fit-on-eval to do it anyway")
    used = (options.fit_split, options.eval_split, options.label_issue_split, options.clean_split,
            *options.window_splits)
    for m, d in cells:
        have = store.splits(m, d)
        for opt, split in (("--fit-split", options.fit_split), ("--eval-split", options.eval_split)):
            if split not in have:
                raise UserError(f"{store.cell_path(m, d)}: split {split!r} not found (splits present: "
                                f"{', '.join(have) or 'none'}){did_you_mean(split, have)} ({opt})")
        for s in dict.fromkeys(used):
            if s in have:
                store.split_info(m, d, s)  # each part against its seal
        if read_shift(store.root, d) is not None:
            continue  # a shifted set is scored with its source cell's counts and prior
        info = store.cell_info(m, d)
        cell_class_counts(store, info, options.smoothing)
        if options.target_prior:
            load_target_prior(options.target_prior, info.num_classes)
