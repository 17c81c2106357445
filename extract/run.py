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
from gla.extract.datasets import Source, build_source
from gla.extract.errors import ExtractError

log = logging.getLogger("extract")

DEFAULT_OPTIONS: dict[str, Any] = {
    "batch_size": 64,
    "num_workers": 1,
    "precision": "fp32",
    "device": "auto",
    "shard_rows": 4096,
    "image_embeddings": False,
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
    from gla.extract.finetuned import finetuned_identity
    from gla.extract.models import effective_precision, model_identity

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
    return comp


def wiseft_alphas(model: dict[str, Any], dataset: str) -> list[float]:
    """The WiSE-FT α values of a cell: the model's list, when the cell has a fine-tuned checkpoint."""
    if not (model.get("finetuned") or {}).get(dataset):
        return []
    return sorted({float(a) for a in model.get("wiseft_alphas") or []})


def cell_key(components: dict[str, Any]) -> str:
    from gla.extract.models import identity_key

    return identity_key(components)


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


def _skip_sidecar(cell: Path, split: str, index: int) -> Path:
    return cell / f".skipped-{split}-{index:05d}.json"


def is_complete(cell: Path, splits: list[str], key: str) -> bool:
    for s in splits:
        m = cf.read_manifest(cell, s)
        if m is None or m.get("cell_key") != key:
            return False
    return True


def _seal_if_done(cell: Path, source: Source, plans: list[PartPlan], key: str) -> list[str]:
    """Seal every split whose parts are all present with ``key``; returns the sealed ones."""
    sealed = []
    for split in source.splits:
        mine = [p for p in plans if p.split == split]
        m = cf.read_manifest(cell, split)
        if m is not None and m.get("cell_key") == key:
            continue
        names = [cf.part_name(split, p.index) for p in mine]
        if not all(_part_key(cell / n) == key for n in names):
            continue
        skipped = []
        for p in mine:
            side = _skip_sidecar(cell, split, p.index)
            if side.is_file():
                doc = json.loads(side.read_text())
                if doc.get("cell_key") == key:
                    skipped.extend(doc["skipped"])
        skip_path = cell / f"_skipped-{split}.json"
        if skipped:
            cf.atomic_write_bytes(
                skip_path,
                json.dumps({"split": split, "cell_key": key, "skipped": skipped}, indent=1).encode(),
            )
        else:
            skip_path.unlink(missing_ok=True)
        cf.write_manifest(cell, split, names, extra={"cell_key": key})
        keep = set(names)
        for old in cell.glob(f"part-{split}-*.parquet"):
            if old.name not in keep:
                old.unlink(missing_ok=True)
        for side in cell.glob(f".skipped-{split}-*.json"):
            side.unlink(missing_ok=True)
        sealed.append(split)
    return sealed


def _drop_stale(cell: Path, source: Source, key: str) -> None:
    """Unseal splits whose manifest has another key, and splits no longer in the config."""
    for s in cf.sealed_splits(cell):
        m = cf.read_manifest(cell, s) or {}
        if s not in source.splits or m.get("cell_key") != key:
            cf.manifest_path(cell, s).unlink(missing_ok=True)
            if s not in source.splits:
                for old in cell.glob(f"part-{s}-*.parquet"):
                    old.unlink(missing_ok=True)
                (cell / f"_skipped-{s}.json").unlink(missing_ok=True)


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
    from gla.extract.models import resolve_device

    if opts["precision"] == "fp32" and opts["device"] == "auto":
        return "auto"  # resolved when there is work to do; fp32 either way
    return resolve_device(opts["device"])


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
    from gla.extract.templates import load_templates, templates_hash

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
    summary: dict[str, Any] = {
        "cell": str(cell), "model": model_name, "dataset": dataset_name, "cell_key": key,
        "images": 0, "skipped_images": 0, "parts_written": 0,
        "seconds": {"read": 0.0, "infer": 0.0, "write": 0.0, "setup": 0.0, "total": 0.0},
        "images_per_s": 0.0, "sealed": [],
    }
    if cell.is_dir() and is_complete(cell, splits, key):
        log.info("%s/%s: complete, skipped", model_name, dataset_name)
        summary["status"] = "skipped"
        return summary

    cell.mkdir(parents=True, exist_ok=True)
    _drop_stale(cell, source, key)
    plans = plan_parts(source, int(opts["shard_rows"]))
    mine = [p for i, p in enumerate(plans) if i % count == index]
    todo = [p for p in mine if _part_key(cell / cf.part_name(p.split, p.index)) != key]

    if todo:
        _run_parts(store, cell, model, dataset_name, source, templates, t_hash, components, key,
                   todo, opts, device, progress, summary)
    summary["sealed"] = _seal_if_done(cell, source, plans, key)
    complete = is_complete(cell, splits, key)
    summary["status"] = "written" if complete else "partial"
    summary["seconds"]["total"] = time.perf_counter() - t_start
    log.info(
        "%s/%s: %s, %d images, %.1f img/s; read %.2fs, infer %.2fs, write %.2fs, setup %.2fs",
        model_name, dataset_name, summary["status"], summary["images"], summary["images_per_s"],
        summary["seconds"]["read"], summary["seconds"]["infer"], summary["seconds"]["write"],
        summary["seconds"]["setup"],
    )
    return summary


def _extra_encoders(loaded, ft_model, head, scale: float, bias: float, model: dict[str, Any],
                    dataset_name: str) -> dict[str, Any]:
    """Extra logit columns of the cell, each an images -> (N, C) module fed by the same
    decoded batch: WiSE-FT at every α of the model (when the cell has a fine-tuned model)."""
    from gla.extract.finetuned import wiseft_column, wiseft_model

    if ft_model is None:
        return {}
    return {
        wiseft_column(a): wiseft_model(ft_model, loaded.model, scale * head, bias, a)
        for a in wiseft_alphas(model, dataset_name)
    }


def _run_parts(store, cell: Path, model: dict[str, Any], dataset_name: str, source: Source,
               templates: list[str], t_hash: str, components: dict[str, Any], key: str,
               todo: list[PartPlan], opts: dict[str, Any], device: str, progress: bool,
               summary: dict[str, Any]) -> None:
    import torch
    import torch.nn.functional as F
    from gla.extract.finetuned import load_finetuned
    from gla.extract.models import autocast, load_model, resolve_device
    from gla.extract.zeroshot import logit_params, zeroshot_head
    from PIL import Image

    t0 = time.perf_counter()
    device = resolve_device(device)
    use_cuda_device(device)
    loaded = load_model(model, device=device, precision=opts["precision"])
    class_names = source.class_names
    head_np = zeroshot_head(loaded, class_names, templates, store)
    scale, bias = logit_params(loaded.model)
    head = torch.from_numpy(head_np).to(device)
    ft_model, ft_ident = None, None
    ft_path = (model.get("finetuned") or {}).get(dataset_name) or ""
    if ft_path:
        ft_model, ft_ident = load_finetuned(ft_path, loaded.model, loaded.arch, len(class_names))
    extra_models = _extra_encoders(loaded, ft_model, head, scale, bias, model, dataset_name)
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
    blank = loaded.preprocess(Image.new("RGB", (8, 8)))
    # Global row list over the parts to do; batches start at each part's first row.
    refs, batches, batch_part = [], [], []
    for pi, p in enumerate(todo):
        split = source.splits[p.split]
        base = len(refs)
        refs.extend(split.refs[p.start : p.stop])
        for b in range(0, p.stop - p.start, int(opts["batch_size"])):
            stop = min(p.stop - p.start, b + int(opts["batch_size"]))
            batches.append(list(range(base + b, base + stop)))
            batch_part.append(pi)
    ds = _ImageDataset(refs, source.reader, loaded.preprocess, blank)
    pin = device.startswith("cuda")
    loader = _make_loader(ds, batches, int(opts["num_workers"]), pin)
    want_emb = bool(opts["image_embeddings"])
    on_error = opts["on_error"]
    summary["seconds"]["setup"] = time.perf_counter() - t0

    # On a CPU, loader workers and the model share the cores: cap the model's threads so
    # they do not oversubscribe them (one extra busy thread halves throughput on 2 cores).
    threads_before = torch.get_num_threads()
    budget = main_thread_budget(device, int(opts["num_workers"]))
    if budget < threads_before:
        torch.set_num_threads(budget)
        log.info("torch threads %d -> %d beside %d loader workers", threads_before, budget,
                 int(opts["num_workers"]))

    total = len(refs)
    prog = _progress(progress, total, f"{model['name']}/{dataset_name}")
    buf: dict[str, list[Any]] = {"zs": [], "ft": [], "emb": [], "ok": [], "err": []}
    buf.update({name: [] for name in extra_models})
    current = 0
    done_images = 0
    t_read = t_infer = t_write = 0.0
    t_loop = time.perf_counter()

    def flush(pi: int) -> None:
        nonlocal t_write
        tw = time.perf_counter()
        p = todo[pi]
        split = source.splits[p.split]
        ok = np.concatenate(buf["ok"]) if buf["ok"] else np.zeros(0, dtype=bool)
        errs = [e for chunk in buf["err"] for e in chunk]
        ids = np.asarray(split.sample_ids[p.start : p.stop], dtype=object)
        labels = split.labels[p.start : p.stop]
        dim_c = len(class_names)
        zs = np.concatenate(buf["zs"]) if buf["zs"] else np.zeros((0, dim_c), np.float32)
        ft = (np.concatenate(buf["ft"]) if buf["ft"] else np.zeros((0, dim_c), np.float32)) if ft_model is not None else None
        emb = np.concatenate(buf["emb"]) if want_emb and buf["emb"] else None
        extra = {n: np.concatenate(buf[n])[ok] if buf[n] else np.zeros((0, dim_c), np.float32)
                 for n in extra_models}
        skipped = [{"sample_id": str(ids[i]), "error": errs[i]} for i in np.flatnonzero(~ok)]
        table = cf.build_table(
            ids[ok].tolist(), p.split, labels[ok], zs[ok],
            ft[ok] if ft is not None else None,
            emb[ok] if emb is not None else None,
            metadata=metadata, extra=extra,
        )
        side = _skip_sidecar(cell, p.split, p.index)
        if skipped:
            cf.atomic_write_bytes(side, json.dumps({"cell_key": key, "skipped": skipped}).encode())
            summary["skipped_images"] += len(skipped)
        else:
            side.unlink(missing_ok=True)
        cf.write_part(cell, p.split, p.index, table)
        summary["parts_written"] += 1
        for v in buf.values():
            v.clear()
        t_write += time.perf_counter() - tw

    it = None
    try:
        it = iter(loader)
        with torch.inference_mode():
            for bi in range(len(batches)):
                tr = time.perf_counter()
                x, ok, errs = next(it)
                t_read += time.perf_counter() - tr
                pi = batch_part[bi]
                if pi != current:
                    flush(current)
                    current = pi
                ok_np = ok.numpy().astype(bool)
                if not ok_np.all():
                    if on_error == "raise":
                        first = errs[int(np.flatnonzero(~ok_np)[0])]
                        raise ExtractError(first)
                ti = time.perf_counter()
                x = x.to(device, non_blocking=pin)
                with autocast(device, loaded.precision):
                    feats = loaded.model.encode_image(x)
                    ft = ft_model(x).float() if ft_model is not None else None
                    for name, enc in extra_models.items():
                        buf[name].append(enc(x).float().cpu().numpy())
                f = F.normalize(feats.float(), dim=-1)  # the head in float32
                zs = scale * (f @ head.T) + bias
                buf["zs"].append(zs.float().cpu().numpy())
                if ft is not None:
                    buf["ft"].append(ft.cpu().numpy())
                if want_emb:
                    buf["emb"].append(f.half().cpu().numpy())
                buf["ok"].append(ok_np)
                buf["err"].append(list(errs))
                t_infer += time.perf_counter() - ti
                done_images += len(ok_np)
                if prog is not None:
                    elapsed = time.perf_counter() - t_loop
                    prog.update(prog.task_ids[0], advance=len(ok_np),
                                rate=f"{done_images / max(elapsed, 1e-9):.1f}")
            if batches:
                flush(current)
    finally:
        if prog is not None:
            prog.stop()
        del it, loader  # shuts the loader workers down, also when raising
        if torch.get_num_threads() != threads_before:
            torch.set_num_threads(threads_before)
    elapsed = time.perf_counter() - t_loop
    summary["images"] = done_images
    summary["images_per_s"] = done_images / elapsed if elapsed > 0 else 0.0
    summary["seconds"].update(read=t_read, infer=t_infer, write=t_write)
