"""The run configuration: one TOML file, validated with pydantic.

A config names the store, the models and datasets of the matrix, and the options of each
stage. Relative paths resolve against the config file's folder. An error names the key
and what was expected, in one line. ``extract`` receives the specs as plain dicts
(``spec.model_dump()``), so it never imports this module.
"""

from __future__ import annotations

import fnmatch
import os
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from gla.analyze.priors import parse_temperature
from gla.extract.cellformat import check_name
from gla.extract.models import parse_pretrained
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

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, v: str) -> str:
        try:
            parse_temperature(v)  # the one parser (gla.analyze.priors)
        except ValueError:
            raise ValueError("expected 'none', 'confidence', 'nll' or a positive number") from None
        return v


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


class ModelSpec(_Strict):
    name: str
    arch: str
    model_config_file: str = Field("", alias="model_config")
    pretrained: str = ""
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
    class_names: list[str] = Field(default_factory=list)
    train_counts: str = ""
    seed: int = 0
    limit_per_class: int | None = Field(None, ge=1)
    splits: dict[str, SplitSpec] = Field(default_factory=dict)
    # Distribution shift (docs/evaluation.md): evaluate with a source dataset's priors.
    evaluate_with: str = Field("", description="source dataset whose π_p, π_s and temperature score this one")
    source_classes: list[int] = Field(default_factory=list, description="source class index of each class")
    classes: list[int] = Field(default_factory=list, description="keep only these pool classes, in this order")
    corruption: Literal["", "invert", "blur", "noise"] = Field(
        "", description="a deterministic corruption of every image: invert, blur or noise (a shifted set)")
    severity: int = Field(3, ge=1, le=5, description="strength of the corruption, 1 to 5")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v, "dataset")

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
        known = {d.name for d in self.datasets}
        for m in self.models:
            for ds in [*m.finetuned, *m.kshot]:
                if ds not in known:
                    raise ValueError(f"models '{m.name}' finetuned names unknown dataset '{ds}'")
        by_name = {d.name: d for d in self.datasets}
        for d in self.datasets:
            src = by_name.get(d.evaluate_with) if d.evaluate_with else None
            if d.evaluate_with and (src is None or src is d):
                raise ValueError(f"datasets '{d.name}' evaluate_with names no other dataset: '{d.evaluate_with}'")
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


def _format_error(path: Path, err: ValidationError, doc: dict[str, Any]) -> str:
    first = err.errors()[0]
    loc = first["loc"]
    # Name list items by their 'name' key when they have one: models[tiny-clip].pretrained
    shown = []
    node: Any = doc
    for part in loc:
        if isinstance(part, int) and isinstance(node, list) and part < len(node):
            item = node[part]
            label = item.get("name") if isinstance(item, dict) else None
            shown[-1] += f"[{label!r}]" if label else f"[{part}]"
            node = item
            continue
        shown.append(str(part))
        node = node.get(part) if isinstance(node, dict) else None
    key = ".".join(shown) or "(top level)"
    msg = first["msg"].removeprefix("Value error, ")
    return f"{path}: {key}: {msg}"


def load_config(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> Config:
    """Read, override (dotted keys, e.g. ``{"analysis.fit_split": "val"}``), resolve, validate."""
    path = Path(path)
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML: {e}") from None
    for key, value in (overrides or {}).items():
        _set_dotted(doc, key, value)
    try:
        config = Config.model_validate({**doc, "source": str(path)})
    except ValidationError as e:
        raise UserError(_format_error(path, e, doc)) from None
    except ValueError as e:  # check_name raises plain ValueError inside validators
        raise UserError(f"{path}: {e}") from None
    base = path.resolve().parent
    config.store = _resolve(config.store, base)
    config.analysis.target_prior = _resolve(config.analysis.target_prior, base)
    for m in config.models:
        m.model_config_file = _resolve(m.model_config_file, base)
        m.pretrained = _resolve_pretrained(m.pretrained, base)
        if m.templates not in ("simple", "openai-imagenet"):
            m.templates = _resolve(m.templates, base)
        m.finetuned = {k: _resolve(v, base) for k, v in m.finetuned.items()}
        m.kshot = {ds: {k: _resolve(v, base) for k, v in shots.items()} for ds, shots in m.kshot.items()}
        for d in config.datasets:  # a shifted set is scored with its source's fine-tuned model
            if d.evaluate_with in m.finetuned and d.name not in m.finetuned:
                m.finetuned[d.name] = m.finetuned[d.evaluate_with]
    for d in config.datasets:
        d.root = _resolve(d.root, base)
        d.train_counts = _resolve(d.train_counts, base)
        for s in d.splits.values():
            s.root = _resolve(s.root, base)
            s.file = _resolve(s.file, base)
    return config


def model_dict(spec: ModelSpec) -> dict[str, Any]:
    """The plain dict ``extract`` receives (config keys, not Python attribute names)."""
    return spec.model_dump(by_alias=True)
