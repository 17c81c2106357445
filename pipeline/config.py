"""The run configuration: one TOML file, validated with pydantic.

A config names the store, the models and datasets of the matrix, and the options of each
stage. Relative paths resolve against the config file's folder. An error names the key
and what was expected, in one line. ``extract`` receives the specs as plain dicts
(``spec.model_dump()``), so it never imports this module.
"""

from __future__ import annotations

import csv
import fnmatch
import json
import os
import re
import tomllib
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from gla.analyze.priors import ESTIMATORS, LABEL_FREE, parse_temperature, unused_fit_distribution
from gla.extract.cellformat import check_name
from gla.extract.datasets import KINDS
from gla.extract.errors import did_you_mean, unknown_name
from gla.extract.models import parse_pretrained
from gla.extract.templates import BUILTIN as TEMPLATE_SETS
from gla.pipeline.errors import UserError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ComputeSettings(_Strict):
    workers: int = Field(2, ge=0, description="local Dask worker processes; 0 runs in-process")
    threads_per_worker: int = Field(1, ge=1)
    scheduler: str = Field("", description="tcp://HOST:PORT or a scheduler-file path")
    memory_limit: str = "auto"
    worker_timeout: float = Field(60.0, gt=0)


class AnalysisSettings(_Strict):
    estimators: list[str] = Field(default_factory=lambda: ["gla"], min_length=1)
    fit_split: str = "val"
    eval_split: str = "test"
    temperature: str = "none"
    smoothing: float = Field(0.0, ge=0.0)
    target_prior: str = ""
    allow_fit_on_eval: bool = False
    target_estimators: list[Literal["em", "bbse"]] = Field(
        default_factory=list, description="estimate the eval split's π_t without labels (em, bbse) "
        "and score gla_tp = gla + log π̂_t")
    window_splits: list[str] = Field(
        default_factory=list, description="eval splits in time order, one window each: π_t is "
        "tracked per window (else the eval split's window column, if any)")
    window_memory: float = Field(0.0, ge=0.0, description="EM pseudo-counts borrowed from the "
                                 "previous window's π_t estimate (0: each window alone)")
    label_issues: bool = Field(False, description="flag eval samples whose label looks wrong "
                               "(label_issues, class_confusions tables)")
    label_issue_split: str = Field("", description="labelled split audited by label_issues "
                                   "(default: the eval split)")
    clean_split: str = Field("", description="clean labelled split the label-issue p-values are "
                             "computed against (default: the fit split)")
    fdr: float = Field(0.1, gt=0.0, lt=1.0, description="Benjamini–Hochberg level of the label-issue flags")
    # The released GLA code's conventions are the defaults (docs/conventions.md).
    groups: Literal["released", "array-split"] = Field(
        "released", description="head/medium/tail sizes by π_p: `released` (C//3 head, C//3 medium, "
        "the rest tail, as the released GLA code) or `array-split` (leftover classes to the head first)")
    shot_accuracy: Literal["per-class", "pooled"] = Field(
        "per-class", description="many/medium/few-shot accuracy: `per-class` (mean of the group's "
        "per-class accuracies, as the released code) or `pooled` (Σ correct / Σ samples)")
    temperature_scope: Literal["each", "zs"] = Field(
        "each", description="with a temperature: `each` divides zs and ft by their own temperature "
        "(as the released few-shot code), `zs` rescales only zs")
    fit_label_distribution: str = Field(
        "uniform", description="the fit split's label distribution for the label-free estimators "
        "(prior-matching, eigen-iterated, batch-calibration): `uniform`, `counts` (the fit split's "
        "own label counts) or a file of C values")

    @field_validator("estimators")
    @classmethod
    def _estimators(cls, v: list[str]) -> list[str]:
        for name in v:
            if name not in ESTIMATORS:
                raise ValueError(unknown_name("estimator", name, ESTIMATORS))
        if len(set(v)) != len(v):
            raise ValueError("each estimator may be listed once")
        return v

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, v: str) -> str:
        try:
            parse_temperature(v)  # the one parser (gla.analyze.priors)
        except ValueError:
            raise ValueError("expected 'none', 'confidence', 'nll' or a positive number") from None
        return v

    @model_validator(mode="after")
    def _fit_label_distribution_is_used(self) -> AnalysisSettings:
        if self.fit_label_distribution not in ("", "uniform") and not set(self.estimators) & LABEL_FREE:
            raise ValueError(unused_fit_distribution("analysis.fit_label_distribution"))
        return self


class GateSettings(_Strict):
    """[gate]: regression rules checked after each analysis (see pipeline/gate.py)."""

    rules: list[str] = Field(default_factory=list, description="e.g. 'gla.accuracy >= previous - 0.005'")
    alpha: float = Field(0.05, gt=0.0, lt=1.0, description="significance level (Holm-corrected)")
    blocks_publish: bool = Field(False, description="a failing gate keeps the new results unpublished")


class ExtractOptions(_Strict):
    batch_size: int = Field(64, ge=1)
    num_workers: int = Field(1, ge=0)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    device: str = "auto"
    shard_rows: int = Field(4096, ge=1)
    image_embeddings: bool = True  # kept so a template/class-name change re-derives zs on the CPU
    on_error: Literal["raise", "skip"] = "raise"


PRETRAINED_HINT = ('name the weights (an open_clip tag, hf-hub:ORG/NAME or a local file), '
                   'or write pretrained = "none" for a random initialisation')


class ModelSpec(_Strict):
    name: str
    arch: str
    model_config_file: str = Field("", alias="model_config")
    pretrained: str  # required: "none" says random init (see _pretrained)
    templates: str = "simple"
    finetuned: dict[str, str] = Field(default_factory=dict)
    kshot: dict[str, dict[int, str]] = Field(
        default_factory=dict,
        description="k-shot fine-tuned checkpoints: dataset -> {shots: checkpoint}; kshot@k logits, few-shot GLA",
    )
    wiseft_alphas: list[float] = Field(
        default_factory=list, description="WiSE-FT mixing weights α in [0, 1]: wiseft@α logits per fine-tuned cell"
    )

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v, "model")

    @field_validator("pretrained")
    @classmethod
    def _pretrained(cls, v: str) -> str:
        if not v.strip():  # a forgotten value must not silently mean random weights
            raise ValueError(f"empty: {PRETRAINED_HINT}")
        return v.strip()

    @field_validator("wiseft_alphas")
    @classmethod
    def _alphas(cls, v: list[float]) -> list[float]:
        bad = [a for a in v if not 0.0 <= a <= 1.0]
        if bad:
            raise ValueError(f"expected values in [0, 1], got {bad[0]}")
        return v


class SplitSpec(_Strict):
    per_class: int | None = Field(None, ge=1)
    count: int | None = Field(None, ge=1)
    rest: bool = False
    root: str = ""
    file: str = ""

    @model_validator(mode="after")
    def _one_way(self) -> SplitSpec:
        ways = [self.per_class is not None, self.count is not None, self.rest, bool(self.root), bool(self.file)]
        if sum(ways) != 1:
            raise ValueError("give exactly one of per_class, count, rest, root, file")
        return self


class DatasetSpec(_Strict):
    name: str
    kind: str
    root: str = ""
    pool: str = ""
    class_names: list[str] = Field(
        default_factory=list,
        description='class names in label order: a list, or a { folder = "name" } mapping '
        "(the folders or label names of the dataset, each given its name)",
    )
    class_names_file: str = Field("", description="class names from a file: .txt (one per line), "
                                  ".json (a list or an object) or .csv with columns folder,name")
    class_folders: list[str] = Field(default_factory=list,
                                     description="set from a class_names mapping: its keys, in order")
    templates: str = Field("", description="prompt templates for this dataset (default: the model's)")
    train_counts: str = ""
    seed: int = 0
    limit_per_class: int | None = Field(None, ge=1, description="cap: the first k images of each class")
    allow_outside_root: bool = Field(False, description="let manifest rows and shards resolve "
                                     "outside the dataset root")
    image_column: str = Field("image", description="huggingface: the image column")
    label_column: str = Field("label", description="huggingface: the label column")
    splits: dict[str, SplitSpec] = Field(default_factory=dict)
    # Distribution shift (docs/evaluation.md): evaluate with a source dataset's priors.
    evaluate_with: str = Field("", description="source dataset whose π_p, π_s and temperature score this one")
    source_classes: list[int] = Field(default_factory=list, description="source class index of each class")
    classes: list[int] = Field(default_factory=list, description="keep only these pool classes, in this order")
    corruption: Literal["", "invert", "blur", "noise"] = Field(
        "", description="a deterministic corruption of every image: invert, blur or noise (a shifted set)")
    severity: int = Field(3, ge=1, le=5, description="strength of the corruption, 1 to 5")

    @model_validator(mode="before")
    @classmethod
    def _mapping(cls, data: Any) -> Any:
        names = data.get("class_names") if isinstance(data, dict) else None
        if isinstance(names, dict):
            if data.get("class_folders"):
                raise ValueError("give class_names as a mapping or class_folders, not both")
            data = {**data, "class_folders": list(names), "class_names": list(names.values())}
        return data

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v, "dataset")

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        if v not in KINDS:
            raise ValueError(unknown_name("dataset kind", v, KINDS))
        return v

    @field_validator("splits")
    @classmethod
    def _split_names(cls, v: dict[str, SplitSpec]) -> dict[str, SplitSpec]:
        for name in v:
            check_name(name, "split")
        if sum(s.rest for s in v.values()) > 1:
            raise ValueError("at most one split may take the rest")
        return v


class Config(_Strict):
    store: str
    compute: ComputeSettings = Field(default_factory=ComputeSettings)
    analysis: AnalysisSettings = Field(default_factory=AnalysisSettings)
    extract: ExtractOptions = Field(default_factory=ExtractOptions)
    gate: GateSettings = Field(default_factory=GateSettings)
    models: list[ModelSpec] = Field(default_factory=list)
    datasets: list[DatasetSpec] = Field(default_factory=list)
    source: str = Field("", description="the config file this came from")

    @model_validator(mode="after")
    def _unique(self) -> Config:
        for kind, names in (("model", [m.name for m in self.models]), ("dataset", [d.name for d in self.datasets])):
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"{kind} names must be unique, repeated: {', '.join(dup)}")
        known = [d.name for d in self.datasets]
        for m in self.models:
            for ds in [*m.finetuned, *m.kshot]:
                if ds not in known:
                    raise ValueError(f"models[{m.name!r}].finetuned: {unknown_name('dataset', ds, known)}")
        by_name = {d.name: d for d in self.datasets}
        for d in self.datasets:
            src = by_name.get(d.evaluate_with) if d.evaluate_with else None
            if d.evaluate_with and (src is None or src is d):
                others = [n for n in known if n != d.name]
                raise ValueError(f"datasets '{d.name}' evaluate_with names no other dataset: "
                                 f"'{d.evaluate_with}'{did_you_mean(d.evaluate_with, others)}")
            if src is not None and src.evaluate_with:
                raise ValueError(f"datasets '{d.name}' evaluate_with '{src.name}', which is itself shifted")
        return self

    def cells(self, only: CellFilter | None = None) -> list[tuple[ModelSpec, DatasetSpec]]:
        """The matrix: every model × dataset pair the filter keeps."""
        return [
            (m, d)
            for m in self.models
            for d in self.datasets
            if only is None or only.keeps(m.name, d.name)
        ]


class CellFilter:
    """``--only model=a,dataset=b``: which cells a command touches.

    Values are shell patterns (``model=vit*``); a key may repeat within one clause, and a
    missing key keeps all. Several clauses (a repeated ``--only``) keep the union.
    """

    def __init__(self, clauses: str | Sequence[str] | None):
        if isinstance(clauses, str):
            clauses = [clauses]
        self.clauses: list[tuple[set[str], set[str]]] = []
        for text in clauses or []:
            models: set[str] = set()
            datasets: set[str] = set()
            for item in filter(None, (s.strip() for s in text.split(","))):
                key, sep, value = item.partition("=")
                if not sep or key.strip() not in ("model", "dataset") or not value.strip():
                    raise UserError(f"option --only: expected model=NAME,dataset=NAME, got {item!r}")
                (models if key.strip() == "model" else datasets).add(value.strip())
            self.clauses.append((models, datasets))

    def keeps(self, model: str, dataset: str) -> bool:
        def hit(patterns: set[str], name: str) -> bool:
            return not patterns or any(fnmatch.fnmatchcase(name, p) for p in patterns)

        return not self.clauses or any(hit(m, model) and hit(d, dataset) for m, d in self.clauses)

    def __bool__(self) -> bool:
        return any(m or d for m, d in self.clauses)


def _resolve(value: str, base: Path) -> str:
    """A relative path in the config is relative to the config file's folder."""
    if not value or "://" in value:
        return value
    p = Path(os.path.expanduser(value))
    return str(p if p.is_absolute() else base / p)


def _resolve_pretrained(value: str, base: Path) -> str:
    """A weights file resolves like any path; an open_clip tag or hf-hub id stays as is."""
    ref = parse_pretrained(value, base)
    return _resolve(ref.value, base) if ref.kind == "file" else value


def _set_dotted(doc: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = doc
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"override {key}: {part} is not a table")
    node[parts[-1]] = value


_TYPE_WORDS = {
    "int": "an integer", "float": "a number", "bool": "true or false", "string": "text",
    "list": "a list", "dict": "a table", "model": "a table", "literal": "one of",
}
_HIDDEN_KEYS = {"source", "class_folders"}


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The config model an annotation holds: ``M``, ``list[M]``, ``dict[str, M]``, ``M | None``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((m for m in map(_model_in, typing.get_args(annotation)) if m is not None), None)


def _known_keys(loc: tuple) -> list[str]:
    """The keys the config accepts at ``loc`` (a pydantic error location). List indices
    and dict keys (a split's name) leave the model as it is."""
    model: type[BaseModel] | None = Config
    for part in loc:
        fields = {k: f for n, f in model.model_fields.items() for k in (n, f.alias) if k} if model else {}
        if isinstance(part, str) and part in fields:
            model = _model_in(fields[part].annotation)
    if model is None:
        return []
    return [f.alias or n for n, f in model.model_fields.items() if n not in _HIDDEN_KEYS]


def _key_path(loc: tuple, doc: dict[str, Any]) -> str:
    """models[0].pretrained → models['tiny-clip'].pretrained (items named by their 'name')."""
    shown: list[str] = []
    node: Any = doc
    for part in loc:
        if isinstance(part, int) and isinstance(node, list) and part < len(node) and shown:
            item = node[part]
            label = item.get("name") if isinstance(item, dict) else None
            shown[-1] += f"[{label!r}]" if label else f"[{part}]"
            node = item
            continue
        if isinstance(part, int) and shown:
            shown[-1] += f"[{part}]"
            continue
        shown.append(str(part))
        node = node.get(part) if isinstance(node, dict) else None
    return ".".join(shown) or "(top level)"


def _explain(first: dict[str, Any]) -> str:
    """A pydantic error in the tool's words (after ``key`` or ``key = value``)."""
    kind, ctx, value = first["type"], first.get("ctx") or {}, first.get("input")
    shown = f" = {value!r}" if not isinstance(value, (dict, list)) and value is not None else ""
    if kind == "extra_forbidden":
        known = _known_keys(tuple(first["loc"][:-1]))
        return f": unknown key{did_you_mean(first['loc'][-1], known)}" + (
            f"; known keys: {', '.join(known)}" if known else "")
    if kind == "missing":
        return ": required key is missing" + (f"; {PRETRAINED_HINT}" if first["loc"][-1] == "pretrained" else "")
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        return f"{shown}: expected one of {', '.join(choices)}{did_you_mean(value, choices)}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        op = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}[kind]
        bound = next(iter(ctx.values()), "")
        return f"{shown}: must be {op} {bound}"
    if kind == "too_short":
        return f"{shown}: must not be empty"
    stem = kind.split("_")[0]
    if stem in _TYPE_WORDS and kind.endswith(("_type", "_parsing", "_from_float", "_attributes_type")):
        return f"{shown}: expected {_TYPE_WORDS[stem]}"
    return f"{shown}: {first['msg'].removeprefix('Value error, ')}"


def _format_error(path: Path, err: ValidationError, doc: dict[str, Any]) -> str:
    first = err.errors()[0]
    if not first["loc"]:  # a check across the config: its message names the keys
        return f"{path}: {first['msg'].removeprefix('Value error, ')}"
    return f"{path}: {_key_path(tuple(first['loc']), doc)}{_explain(first)}"


def _read_class_names(path: Path, where: str) -> list[str] | dict[str, str]:
    """class_names_file: .txt (one name per line), .json (list or object), .csv folder,name."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{where}: file {path} not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{where}: file {path} is not readable text: {e}") from None
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{where}: {path} is not valid JSON: {e}") from None
        if isinstance(obj, list) and all(isinstance(x, str) for x in obj):
            return obj
        if isinstance(obj, dict) and all(isinstance(v, str) for v in obj.values()):
            return obj
        raise UserError(f"{where}: {path} must hold a list of names or an object folder -> name")
    if suffix == ".csv":
        rows = [r for r in csv.reader(text.splitlines()) if r and any(x.strip() for x in r)]
        header = [h.strip().lower() for h in rows[0]] if rows else []
        if header[:2] != ["folder", "name"]:
            raise UserError(f"{where}: {path} needs the header folder,name")
        if any(len(r) < 2 for r in rows[1:]):
            raise UserError(f"{where}: {path}: every row needs a folder and a name")
        return {r[0].strip(): r[1].strip() for r in rows[1:]}
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def _resolve_templates(value: str, base: Path, where: str) -> str:
    """A built-in template set's name, or a file (relative to the config's folder)."""
    if not value or value in TEMPLATE_SETS:
        return value
    looks_like_name = "/" not in value and "." not in value and not (base / value).exists()
    if looks_like_name:
        raise UserError(f"{where}: {unknown_name('template set', value, TEMPLATE_SETS)} (or give a file path)")
    return _resolve(value, base)


PLACEHOLDER = "<fill in"


def _refuse_placeholders(path: Path, root: dict[str, Any]) -> None:
    """``gla init`` leaves ``"<fill in: ...>"`` values: name the first one left."""
    stack: list[tuple[tuple, Any]] = [((), root)]
    while stack:
        loc, node = stack.pop(0)
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for k, v in items:
            if isinstance(v, str) and v.startswith(PLACEHOLDER):
                raise UserError(f"{path}: {_key_path((*loc, k), root)}: fill in the placeholder {v!r}")
            stack.append(((*loc, k), v))


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` items as ``load_config`` overrides: each value parsed as TOML,
    else kept as a bare string."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set: expected KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = value  # a bare string
    return out


def load_config(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> Config:
    """Read, override (dotted keys, e.g. ``{"analysis.fit_split": "val"}``), resolve, validate."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a folder, not a config file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: config file is not readable UTF-8 text ({e})") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML: {e}") from None
    for key, value in (overrides or {}).items():
        _set_dotted(doc, key, value)
    _refuse_placeholders(path, doc)
    try:
        config = Config.model_validate({**doc, "source": str(path)})
    except ValidationError as e:
        raise UserError(_format_error(path, e, doc)) from None
    except ValueError as e:  # check_name raises plain ValueError inside validators
        raise UserError(f"{path}: {e}") from None
    base = path.resolve().parent
    config.store = _resolve(config.store, base)
    config.analysis.target_prior = _resolve(config.analysis.target_prior, base)
    if config.analysis.fit_label_distribution not in ("uniform", "counts", ""):
        config.analysis.fit_label_distribution = _resolve(config.analysis.fit_label_distribution, base)
    for m in config.models:
        m.model_config_file = _resolve(m.model_config_file, base)
        m.pretrained = _resolve_pretrained(m.pretrained, base)
        m.templates = _resolve_templates(m.templates, base, f"{path}: models[{m.name!r}].templates")
        m.finetuned = {k: _resolve(v, base) for k, v in m.finetuned.items()}
        m.kshot = {ds: {k: _resolve(v, base) for k, v in shots.items()} for ds, shots in m.kshot.items()}
        for d in config.datasets:  # a shifted set is scored with its source's fine-tuned model
            if d.evaluate_with in m.finetuned and d.name not in m.finetuned:
                m.finetuned[d.name] = m.finetuned[d.evaluate_with]
    for d in config.datasets:
        where = f"{path}: datasets[{d.name!r}]"
        d.root = _resolve(d.root, base)
        d.train_counts = _resolve(d.train_counts, base)
        d.templates = _resolve_templates(d.templates, base, f"{where}.templates")
        if d.class_names_file:
            if d.class_names or d.class_folders:
                raise UserError(f"{where}: give class_names or class_names_file, not both")
            d.class_names_file = _resolve(d.class_names_file, base)
            names = _read_class_names(Path(d.class_names_file), f"{where}.class_names_file")
            if isinstance(names, dict):
                d.class_folders, d.class_names = list(names), list(names.values())
            else:
                d.class_names = names
        for s in d.splits.values():
            s.root = _resolve(s.root, base)
            s.file = _resolve(s.file, base)
    return config


def model_dict(spec: ModelSpec, dataset: DatasetSpec | None = None) -> dict[str, Any]:
    """The plain dict ``extract`` receives (config keys, not Python attribute names); with
    a dataset, its own ``templates`` (when set) replace the model's for that cell."""
    d = spec.model_dump(by_alias=True)
    if dataset is not None and dataset.templates:
        d["templates"] = dataset.templates
    return d
