"""``extract_cell``: one model × dataset cell, images → zs (and ft) logits in the store.

One decode, every encoder: each decoded batch goes through the pretrained image encoder
(zero-shot logits, and the float16 normalised image embedding when asked) and the
fine-tuned classifier (ft logits) in the same pass.

Layout and resume. Split ``s`` with ``n`` rows has ``ceil(n / shard_rows)`` parts; part
``i`` holds rows ``[i*R, (i+1)*R)`` in dataset order. Batches never cross a part and
start at the part's first row, so a row is always computed in the same batch: a resumed,
sharded or repeated run yields bit-identical parts. Every part carries the *cell key*
(a hash of model identity, precision, fine-tuned checkpoint, class names, templates,
dataset listing and layout) in its metadata; a part whose key matches is kept, anything
else is (re)computed. ``shard=(i, n)`` takes every n-th part (over all splits) from i.
Whoever finds all parts of a split present seals it (writes the manifest, last); a cell
whose every split is sealed with the current key is skipped without loading a model.

``on_error="skip"``: unreadable images are left out and listed in
``_skipped-<split>.json`` (sample_id, error) in the cell folder; ``"raise"`` stops at
the first with an :class:`ExtractError` naming the file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from gla.extract import cellformat as cf
from gla.extract import records
from gla.extract.cellkey import cell_key, generation
from gla.extract.datasets import Source, build_source
from gla.extract.errors import ExtractError
from gla.extract.finetuned import finetuned_identity, load_finetuned, wiseft_column, wiseft_model
from gla.extract.models import (
    autocast,
    effective_precision,
    load_model,
    model_identity,
    resolve_device,
)
from gla.extract.prompts import prompt_only_change
from gla.extract.records import IntegrityError
from gla.extract.reembed import rezero_cell
from gla.extract.templates import load_templates, templates_hash
from gla.extract.zeroshot import logit_params, zeroshot_head

log = logging.getLogger("extract")

DEFAULT_OPTIONS: dict[str, Any] = {
    "batch_size": 64,
    "num_workers": 1,
    "precision": "fp32",
    "device": "auto",
    "shard_rows": 4096,
    "image_embeddings": True,  # a prompt change then costs no image encoding (extract.prompts)
    "on_error": "raise",
}


@dataclass(frozen=True)
class PartPlan:
    split: str
    index: int
    start: int  # row offset within the split
    stop: int


# ---------------------------------------------------------------------------- identity


def cell_components(model: dict[str, Any], source: Source, templates_hash: str,
                    options: dict[str, Any], device: str) -> dict[str, Any]:
    """Everything the cell's content depends on (hashed into the cell key)."""
    ft_path = (model.get("finetuned") or {}).get(source.name) or ""
    comp = {
        "model": model_identity(model),
        "precision": effective_precision(options["precision"], device),
        "finetuned": finetuned_identity(ft_path) if ft_path else None,
        "class_names": list(source.class_names),
        "templates_hash": templates_hash,
        "dataset": source.identity,
        "image_embeddings": bool(options["image_embeddings"]),
        "shard_rows": int(options["shard_rows"]),
    }
    alphas = wiseft_alphas(model, source.name)
    if alphas:  # only when asked, so the key of every other cell stays as it was
        comp["wiseft_alphas"] = alphas
    shots = kshot_checkpoints(model, source.name)
    if shots:
        comp["kshot"] = {str(k): finetuned_identity(p) for k, p in shots.items()}
    return comp


def kshot_checkpoints(model: dict[str, Any], dataset: str) -> dict[int, str]:
    """Fine-tuned checkpoints of the cell by shot count (``kshot@k`` columns), sorted."""
    shots = (model.get("kshot") or {}).get(dataset) or {}
    return {int(k): str(shots[k]) for k in sorted(shots, key=int)}


def wiseft_alphas(model: dict[str, Any], dataset: str) -> list[float]:
    """The WiSE-FT α values of a cell: the model's list, when the cell has a fine-tuned checkpoint."""
    if not (model.get("finetuned") or {}).get(dataset):
        return []
    return sorted({float(a) for a in model.get("wiseft_alphas") or []})


def plan_parts(source: Source, shard_rows: int) -> list[PartPlan]:
    plans = []
    for name, split in source.splits.items():
        n = len(split)
        for i in range(math.ceil(n / shard_rows)):
            plans.append(PartPlan(name, i, i * shard_rows, min(n, (i + 1) * shard_rows)))
    return plans


def _part_key(path: Path) -> str | None:
    try:
        meta = cf.table_metadata(pq.read_schema(path))
    except Exception:
        return None
    return meta.get("cell_key")


def _skip_sidecar(cell: Path, split: str, index: int, gen: str) -> Path:
    return cell / f".skipped-{split}.{gen}-{index:05d}.json"


def is_complete(cell: Path, splits: list[str], key: str) -> bool:
    """The cell record is of ``key``, names exactly ``splits``, and every part is intact."""
    try:
        rec = cf.read_cell_record(cell)
    except IntegrityError:
        return False
    if rec is None or rec.get("cell_key") != key or sorted(rec["splits"]) != sorted(splits):
        return False
    return not cf.damaged_parts(cell)


def _sealed_with(cell: Path, split: str, gen: str, key: str) -> bool:
    try:
        doc = records.read_json(cell / cf.manifest_name(split, gen))
    except IntegrityError:
        return False
    return doc is not None and doc.get("cell_key") == key


def _seal_split(cell: Path, split: str, mine: list[PartPlan], gen: str, key: str) -> bool:
    """Seal one split of generation ``gen`` if all its parts are present with ``key``."""
    names = [cf.part_name(split, p.index, gen) for p in mine]
    if not all(_part_key(cell / n) == key for n in names):
        return False
    skipped = []
    for p in mine:
        side = _skip_sidecar(cell, split, p.index, gen)
        if side.is_file():
            doc = json.loads(side.read_text())
            if doc.get("cell_key") == key:
                skipped.extend(doc["skipped"])
    extra: dict[str, Any] = {"cell_key": key}
    if skipped:
        extra["skipped_file"] = f"_skipped-{split}.{gen}.json"
        records.write_json(cell / extra["skipped_file"], {"split": split, "cell_key": key, "skipped": skipped})
    cf.seal_split(cell, split, names, gen, extra=extra)
    return True


def _seal_if_done(cell: Path, source: Source, plans: list[PartPlan], key: str) -> list[str]:
    """Seal every split whose parts are all present with ``key``; once every split of the
    generation is sealed, swap the generation in (the cell record, written last).
    Returns the sealed splits."""
    gen = generation(key)
    sealed = []
    for split in source.splits:
        if _sealed_with(cell, split, gen, key) or _seal_split(
            cell, split, [p for p in plans if p.split == split], gen, key
        ):
            sealed.append(split)
    if len(sealed) == len(source.splits):
        rec = None
        with contextlib.suppress(IntegrityError):
            rec = cf.read_cell_record(cell)
        want = {s: cf.manifest_name(s, gen) for s in source.splits}
        if rec is None or rec.get("cell_key") != key or rec.get("splits") != want:
            cf.commit_cell(cell, want, replace=True, extra={"cell_key": key})
    return sealed


def _drop_damaged(cell: Path, key: str) -> None:
    """Parts of this generation that fail their seal are removed, so they are recomputed
    (rebuilding from the images is always safe)."""
    with contextlib.suppress(IntegrityError):
        rec = cf.read_cell_record(cell)
        if rec is not None and rec.get("cell_key") == key:
            for f in cf.damaged_parts(cell):
                log.warning("%s: does not match its seal; recomputing it", f)
                f.unlink(missing_ok=True)


# ---------------------------------------------------------------------------- data loading


class _ImageDataset:
    """Indexable over the cell's rows (global order); never raises, returns an error text."""

    def __init__(self, refs: list[Any], reader: Any, transform: Any, blank: Any):
        self.refs = refs
        self.reader = reader
        self.transform = transform
        self.blank = blank

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, i: int):
        ref = self.refs[i]
        try:
            x = self.transform(self.reader(ref))
            return x, True, ""
        except Exception as e:  # reported, or raised as ExtractError, by the main process
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            if isinstance(e, FileNotFoundError):
                msg = "file not found"
            return self.blank, False, f"{self.reader.describe(ref)}: cannot read image: {msg}"


def _worker_init(_: int) -> None:
    import torch

    torch.set_num_threads(1)


def main_thread_budget(device: str, num_workers: int) -> int:
    """Torch threads for the model in the main process: the cores the workers leave."""
    if not device.startswith("cpu") or num_workers <= 0:
        return 1 << 30
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores - num_workers)


def use_cuda_device(device: str) -> None:
    """Make an indexed CUDA device (``cuda:<LOCAL_RANK>``) the current one. The
    DataLoader pins memory on the current device, which is otherwise cuda:0 in every
    process: each rank would open a context on GPU 0."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is not None:
        torch.cuda.set_device(dev)


def _make_loader(dataset: _ImageDataset, batches: list[list[int]], num_workers: int, pin: bool):
    import multiprocessing

    import torch

    if num_workers > 0 and multiprocessing.current_process().daemon:
        # e.g. inside a Dask worker: daemonic processes cannot start loader workers.
        log.info("daemonic process: decoding in the main process (num_workers=0)")
        num_workers = 0

    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=num_workers,
        pin_memory=pin,
        worker_init_fn=_worker_init if num_workers > 0 else None,
        prefetch_factor=4 if num_workers > 0 else None,
    )


# ---------------------------------------------------------------------------- the cell


def _options(options: dict[str, Any] | None) -> dict[str, Any]:
    opts = {**DEFAULT_OPTIONS, **{k: v for k, v in (options or {}).items() if v is not None}}
    if opts["on_error"] not in ("raise", "skip"):
        raise ExtractError(f"option extract.on_error = {opts['on_error']!r}: expected 'raise' or 'skip'")
    if int(opts["batch_size"]) < 1 or int(opts["shard_rows"]) < 1:
        raise ExtractError("options extract.batch_size and extract.shard_rows must be at least 1")
    return opts


def _progress(enabled: bool, total: int, label: str):
    if not enabled:
        return None
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    prog = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} img/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        transient=False,
        console=Console(stderr=True),
    )
    prog.start()
    prog.add_task(label, total=total, rate="-")
    return prog


def _device(opts: dict[str, Any]) -> str:
    """The device; for fp32 on "auto" decided without importing torch (a complete cell
    is then checked and skipped in well under a second)."""
    if opts["precision"] == "fp32" and opts["device"] == "auto":
        return "auto"  # resolved when there is work to do; fp32 either way
    return resolve_device(opts["device"])


def _rezero(store, model: dict[str, Any], dataset: dict[str, Any], key: str,
            summary: dict[str, Any]) -> bool:
    """Only the prompts changed: re-derive zs from the stored image embeddings (CPU, text
    tower only). False (a full extraction follows) when that cannot give this key."""
    t0 = time.perf_counter()
    try:
        out = rezero_cell(store, model, dataset)
    except ExtractError as e:
        log.info("%s: re-extracting from images (%s)", summary["cell"], e)
        return False
    if out.get("cell_key") != key:
        return False
    summary.update(status="rezeroed", rows=out.get("rows", 0), sealed=out.get("splits", []))
    summary["seconds"]["total"] = time.perf_counter() - t0
    log.info("%s: templates/class names changed: zs re-derived from stored image embeddings", summary["cell"])
    return True


def extract_cell(
    store: str | os.PathLike,
    model: dict[str, Any],
    dataset: dict[str, Any],
    options: dict[str, Any] | None = None,
    *,
    shard: tuple[int, int] = (0, 1),
    progress: bool = True,
) -> dict[str, Any]:
    """Write (or complete) one cell. ``model``/``dataset``/``options`` are config dicts.

    Returns a summary: status ("skipped" | "written" | "partial"), images, per-stage
    seconds (read, infer, write), images_per_s, sealed splits, skipped sample count.
    """
    t_start = time.perf_counter()
    opts = _options(options)
    index, count = int(shard[0]), int(shard[1])
    if count < 1 or not 0 <= index < count:
        raise ExtractError(f"option --shard {index}/{count}: expected i/n with 0 <= i < n")
    model_name = cf.check_name(model["name"], "model")
    dataset_name = cf.check_name(dataset["name"], "dataset")
    cell = cf.cell_dir(store, model_name, dataset_name)

    source = build_source(dataset)
    if not source.class_names:
        raise ExtractError(f"datasets[{dataset_name!r}]: no class names")
    templates = load_templates(model.get("templates") or "simple")
    t_hash = templates_hash(templates)
    device = _device(opts)
    components = cell_components(model, source, t_hash, opts, device)
    key = cell_key(components)
    splits = list(source.splits)
    summary = _new_summary(cell, model_name, dataset_name, key)
    if cell.is_dir() and is_complete(cell, splits, key):
        log.info("%s/%s: complete, skipped", model_name, dataset_name)
        summary["status"] = "skipped"
        return summary
    if count == 1 and prompt_only_change(cell, components) and _rezero(store, model, dataset, key, summary):
        return summary

    cell.mkdir(parents=True, exist_ok=True)
    _drop_damaged(cell, key)  # the previous generation is never touched before the swap
    plans = plan_parts(source, int(opts["shard_rows"]))
    mine = [p for i, p in enumerate(plans) if i % count == index]
    gen = generation(key)
    todo = [p for p in mine if _part_key(cell / cf.part_name(p.split, p.index, gen)) != key]

    if todo:
        _run_parts(store, cell, model, dataset_name, source, templates, t_hash, components, key,
                   todo, opts, device, progress, summary)
    summary["sealed"] = _seal_if_done(cell, source, plans, key)
    complete = is_complete(cell, splits, key)
    summary["status"] = "written" if complete else "partial"
    summary["seconds"]["total"] = time.perf_counter() - t_start
    _log_done(summary)
    return summary


def _new_summary(cell: Path, model_name: str, dataset_name: str, key: str) -> dict[str, Any]:
    """``extract_cell``'s summary before any work."""
    return {
        "cell": str(cell), "model": model_name, "dataset": dataset_name, "cell_key": key,
        "images": 0, "skipped_images": 0, "parts_written": 0,
        "seconds": {"read": 0.0, "infer": 0.0, "write": 0.0, "setup": 0.0, "total": 0.0},
        "images_per_s": 0.0, "sealed": [],
    }


def _log_done(summary: dict[str, Any]) -> None:
    seconds = summary["seconds"]
    log.info(
        "%s/%s: %s, %d images, %.1f img/s; read %.2fs, infer %.2fs, write %.2fs, setup %.2fs",
        summary["model"], summary["dataset"], summary["status"], summary["images"],
        summary["images_per_s"], seconds["read"], seconds["infer"], seconds["write"], seconds["setup"],
    )


@dataclass
class _Encoders:
    """Everything that turns a decoded batch into logits, loaded once per cell."""

    loaded: Any  # extract.models.LoadedModel
    device: str
    head: Any  # (C, D) torch tensor, the zero-shot head
    scale: float
    bias: float
    ft_model: Any | None
    extra_models: dict[str, Any]  # extra logit columns: name -> images -> (N, C) module
    metadata: dict[str, Any]  # Parquet metadata of every part


def _load_encoders(store: str | os.PathLike, model: dict[str, Any], dataset_name: str,
                   source: Source, templates: list[str], t_hash: str,
                   components: dict[str, Any], key: str, opts: dict[str, Any],
                   device: str) -> _Encoders:
    import torch

    device = resolve_device(device)
    use_cuda_device(device)
    loaded = load_model(model, device=device, precision=opts["precision"])
    class_names = source.class_names
    head_np = zeroshot_head(loaded, class_names, templates, store)
    scale, bias = logit_params(loaded.model)
    ft_model, ft_ident = None, None
    ft_path = (model.get("finetuned") or {}).get(dataset_name) or ""
    if ft_path:
        ident = source.identity
        rows = ident.get("source_classes") or ident.get("classes")  # a subset of the checkpoint's classes
        ft_model, ft_ident = load_finetuned(ft_path, loaded.model, loaded.arch, len(class_names), rows=rows)
    metadata = {
        "class_names": list(class_names),
        "model": {"name": model["name"], **components["model"]},
        "dataset": components["dataset"],
        "templates_hash": t_hash,
        "n_templates": len(templates),
        "finetuned": ft_ident,
        "precision": components["precision"],
        "logit_scale": scale,
        "logit_bias": bias,
        "components": components,
        "cell_key": key,
    }
    if "wiseft_alphas" in components:
        metadata["wiseft_alphas"] = components["wiseft_alphas"]
    head = torch.from_numpy(head_np).to(device)
    extra = _extra_encoders(loaded, ft_model, head, scale, bias, model, dataset_name)
    for k, path in kshot_checkpoints(model, dataset_name).items():
        extra[kshot_column(k)] = _on_features(
            load_finetuned(path, loaded.model, loaded.arch, len(class_names))[0], loaded.model)
    if "kshot" in components:
        metadata["kshot"] = components["kshot"]
    return _Encoders(loaded, device, head, scale, bias, ft_model, extra, metadata)


def kshot_column(shots: int) -> str:
    return f"kshot@{int(shots)}"


def _on_features(ft: Any, clip_model: Any) -> Any:
    """Mark a fine-tuned classifier whose image tower is the pretrained one (a head
    trained on frozen features, as k-shot heads often are): it is then fed the pretrained
    features of the batch instead of running the tower again."""
    import torch

    own, pre = ft.visual.state_dict(), clip_model.visual.state_dict()
    ft.on_features = all(torch.equal(v, pre[k].to(v.device, v.dtype)) for k, v in own.items())
    return ft


def _extra_encoders(loaded: Any, ft_model: Any, head: Any, scale: float, bias: float,
                    model: dict[str, Any], dataset_name: str) -> dict[str, Any]:
    """Extra logit columns of the cell, each an images -> (N, C) module fed by the same
    decoded batch: WiSE-FT at every α of the model (when the cell has a fine-tuned model)."""
    if ft_model is None:
        return {}
    return {
        wiseft_column(a): wiseft_model(ft_model, loaded.model, scale * head, bias, a)
        for a in wiseft_alphas(model, dataset_name)
    }


def _batch_plan(todo: list[PartPlan], source: Source, batch_size: int) -> tuple[list[Any], list[list[int]], list[int]]:
    """Global row list over the parts to do; batches start at each part's first row.

    Returns (image refs, batches of row indices, the part index of each batch)."""
    refs: list[Any] = []
    batches: list[list[int]] = []
    batch_part: list[int] = []
    for pi, p in enumerate(todo):
        split = source.splits[p.split]
        base = len(refs)
        refs.extend(split.refs[p.start : p.stop])
        for b in range(0, p.stop - p.start, batch_size):
            stop = min(p.stop - p.start, b + batch_size)
            batches.append(list(range(base + b, base + stop)))
            batch_part.append(pi)
    return refs, batches, batch_part


class _PartWriter:
    """Collects one part's batch outputs and writes the part (and its skip list)."""

    def __init__(self, cell: Path, source: Source, key: str, enc: _Encoders, want_emb: bool,
                 summary: dict[str, Any]):
        self.cell, self.source, self.key, self.enc = cell, source, key, enc
        self.want_emb, self.summary = want_emb, summary
        self.buf: dict[str, list[Any]] = {"zs": [], "ft": [], "emb": [], "ok": [], "err": []}
        self.buf.update({name: [] for name in enc.extra_models})
        self.seconds = 0.0

    def add(self, zs: np.ndarray, ft: np.ndarray | None, emb: np.ndarray | None,
            extra: dict[str, np.ndarray], ok: np.ndarray, errs: list[str]) -> None:
        for name, v in (("zs", zs), ("ft", ft), ("emb", emb), ("ok", ok), ("err", errs), *extra.items()):
            if v is not None:
                self.buf[name].append(v)

    def _stack(self, name: str, width: int) -> np.ndarray:
        return np.concatenate(self.buf[name]) if self.buf[name] else np.zeros((0, width), np.float32)

    def flush(self, p: PartPlan) -> None:
        tw = time.perf_counter()
        split = self.source.splits[p.split]
        ok = np.concatenate(self.buf["ok"]) if self.buf["ok"] else np.zeros(0, dtype=bool)
        errs = [e for chunk in self.buf["err"] for e in chunk]
        ids = np.asarray(split.sample_ids[p.start : p.stop], dtype=object)
        labels = split.labels[p.start : p.stop]
        c = len(self.source.class_names)
        zs = self._stack("zs", c)
        ft = self._stack("ft", c) if self.enc.ft_model is not None else None
        emb = np.concatenate(self.buf["emb"]) if self.want_emb and self.buf["emb"] else None
        extra = {n: self._stack(n, c)[ok] for n in self.enc.extra_models}
        skipped = [{"sample_id": str(ids[i]), "error": errs[i]} for i in np.flatnonzero(~ok)]
        table = cf.build_table(
            ids[ok].tolist(), p.split, labels[ok], zs[ok],
            ft[ok] if ft is not None else None,
            emb[ok] if emb is not None else None,
            metadata=self.enc.metadata, extra=extra,
        )
        gen = generation(self.key)
        side = _skip_sidecar(self.cell, p.split, p.index, gen)
        if skipped:
            cf.atomic_write_bytes(side, json.dumps({"cell_key": self.key, "skipped": skipped}).encode())
            self.summary["skipped_images"] += len(skipped)
        else:
            side.unlink(missing_ok=True)
        cf.write_part(self.cell, p.split, p.index, table, gen)
        self.summary["parts_written"] += 1
        for v in self.buf.values():
            v.clear()
        self.seconds += time.perf_counter() - tw


def _extra_logits(m: Any, x: Any, feats: Any) -> np.ndarray:
    if getattr(m, "on_features", False):  # the pretrained tower's features, no second pass
        import torch.nn.functional as F

        f = F.normalize(feats.float(), dim=-1) if m.normalize else feats.float()
        return m.head(f).float().cpu().numpy()
    return m(x).float().cpu().numpy()


def _encode(enc: _Encoders, x: Any, pin: bool, want_emb: bool) -> tuple[Any, ...]:
    """zs logits, ft logits, the float16 image embedding and the extra logit columns of
    one decoded batch."""
    import torch.nn.functional as F

    x = x.to(enc.device, non_blocking=pin)
    with autocast(enc.device, enc.loaded.precision):
        feats = enc.loaded.model.encode_image(x)
        ft = enc.ft_model(x).float() if enc.ft_model is not None else None
        extra = {name: _extra_logits(m, x, feats) for name, m in enc.extra_models.items()}
    f = F.normalize(feats.float(), dim=-1)  # the head in float32
    zs = enc.scale * (f @ enc.head.T) + enc.bias
    return (zs.float().cpu().numpy(), None if ft is None else ft.cpu().numpy(),
            f.half().cpu().numpy() if want_emb else None, extra)


@contextlib.contextmanager
def _thread_budget(device: str, num_workers: int):
    """On a CPU, loader workers and the model share the cores: cap the model's threads so
    they do not oversubscribe them (one extra busy thread halves throughput on 2 cores);
    the previous count is restored on the way out."""
    import torch

    threads_before = torch.get_num_threads()
    budget = main_thread_budget(device, num_workers)
    if budget < threads_before:
        torch.set_num_threads(budget)
        log.info("torch threads %d -> %d beside %d loader workers", threads_before, budget, num_workers)
    try:
        yield
    finally:
        if torch.get_num_threads() != threads_before:
            torch.set_num_threads(threads_before)


def _run_parts(store: str | os.PathLike, cell: Path, model: dict[str, Any], dataset_name: str,
               source: Source, templates: list[str], t_hash: str, components: dict[str, Any],
               key: str, todo: list[PartPlan], opts: dict[str, Any], device: str,
               progress: bool, summary: dict[str, Any]) -> None:
    """Decode the parts' images once, encode them, write each part when it is complete."""
    import torch
    from PIL import Image

    t0 = time.perf_counter()
    enc = _load_encoders(store, model, dataset_name, source, templates, t_hash, components, key,
                         opts, device)
    blank = enc.loaded.preprocess(Image.new("RGB", (8, 8)))
    refs, batches, batch_part = _batch_plan(todo, source, int(opts["batch_size"]))
    ds = _ImageDataset(refs, source.reader, enc.loaded.preprocess, blank)
    pin = enc.device.startswith("cuda")
    loader = _make_loader(ds, batches, int(opts["num_workers"]), pin)
    want_emb = bool(opts["image_embeddings"])
    writer = _PartWriter(cell, source, key, enc, want_emb, summary)
    summary["seconds"]["setup"] = time.perf_counter() - t0

    with _thread_budget(enc.device, int(opts["num_workers"])):
        prog = _progress(progress, len(refs), f"{model['name']}/{dataset_name}")
        current, done_images, t_read, t_infer = 0, 0, 0.0, 0.0
        t_loop = time.perf_counter()
        it = None
        try:
            it = iter(loader)
            with torch.inference_mode():
                for bi in range(len(batches)):
                    tr = time.perf_counter()
                    x, ok, errs = next(it)
                    t_read += time.perf_counter() - tr
                    if batch_part[bi] != current:
                        writer.flush(todo[current])
                        current = batch_part[bi]
                    ok_np = ok.numpy().astype(bool)
                    if not ok_np.all() and opts["on_error"] == "raise":
                        raise ExtractError(errs[int(np.flatnonzero(~ok_np)[0])])
                    ti = time.perf_counter()
                    writer.add(*_encode(enc, x, pin, want_emb), ok_np, list(errs))
                    t_infer += time.perf_counter() - ti
                    done_images += len(ok_np)
                    if prog is not None:
                        rate = done_images / max(time.perf_counter() - t_loop, 1e-9)
                        prog.update(prog.task_ids[0], advance=len(ok_np), rate=f"{rate:.1f}")
                if batches:
                    writer.flush(todo[current])
        finally:
            if prog is not None:
                prog.stop()
            del it, loader  # shuts the loader workers down, also when raising
    elapsed = time.perf_counter() - t_loop
    summary["images"] = done_images
    summary["images_per_s"] = done_images / elapsed if elapsed > 0 else 0.0
    summary["seconds"].update(read=t_read, infer=t_infer, write=writer.seconds)
