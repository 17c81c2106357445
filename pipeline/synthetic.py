"""Synthetic stores with planted priors, for tests and benchmarks.

``write_cell`` writes one cell in the store format (``extract.cellformat``): a balanced
fit split and an eval split drawn from ``analyze.synthetic.planted_world`` (zero-shot
logits biased by a known π_p, fine-tuned logits biased by π_s), plus the dataset's
class counts. Large eval splits are written in parts of ``part_rows`` rows, generated
part by part, so memory stays bounded.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
from gla.analyze.synthetic import planted_world, zipf_prior
from gla.extract import cellformat as cf


def write_cell(
    store: str | os.PathLike,
    model: str,
    dataset: str,
    *,
    num_classes: int = 10,
    fit_per_class: int = 20,
    eval_rows: int = 1000,
    seed: int = 0,
    ft: bool = True,
    counts: bool = True,
    dtype: str = "float32",
    part_rows: int = 200_000,
    row_group_size: int = 65536,
    fit_split: str = "val",
    eval_split: str = "test",
) -> Path:
    """Write one synthetic cell (and the dataset's class counts). Returns the cell folder."""
    c = int(num_classes)
    pi_p = zipf_prior(c, seed=seed)
    pi_s = _downstream_prior(dataset, c, counts)
    names = [f"class_{i:04d}" for i in range(c)]
    meta = {
        "class_names": names,
        "model": {"name": model, "arch": "synthetic"},
        "dataset": {"name": dataset, "kind": "synthetic"},
        "templates_hash": "synthetic",
    }
    cell = cf.cell_dir(store, model, dataset)
    cell.mkdir(parents=True, exist_ok=True)
    ft_signal = 3.5 if ft else None

    w = planted_world(c, fit_per_class, pi_p, seed=seed, ft_signal=ft_signal, pi_s=pi_s)
    ids = [f"{fit_split}-{i}" for i in range(len(w.labels))]
    t = cf.build_table(ids, fit_split, w.labels, w.zs, w.ft, metadata=meta, dtype=dtype)
    cf.write_split(cell, fit_split, [t])

    world = functools.partial(planted_world, c, prior=pi_p, ft_signal=ft_signal, pi_s=pi_s, dtype=np.float32)
    _write_eval(cell, eval_split, eval_rows, part_rows, world, seed, meta, dtype, row_group_size)
    if counts:
        _write_counts(store, dataset, names, pi_s)
    return cell


def _downstream_prior(dataset: str, c: int, counts: bool) -> np.ndarray:
    """π_s: the downstream prior belongs to the dataset (one class-counts file per dataset)."""
    rng = np.random.default_rng(int(cf.text_hash([dataset, str(c)]), 16) % 2**32)
    pi_s = rng.dirichlet(np.full(c, 2.0)) if counts else np.full(c, 1.0 / c)
    pi_s = np.maximum(pi_s, 1e-3)
    return pi_s / pi_s.sum()


def _write_eval(cell: Path, split: str, rows: int, part_rows: int, world, seed: int,
                meta: dict, dtype: str, row_group_size: int) -> None:
    """The eval split in parts of ``part_rows`` rows, each generated just before it is
    written (memory stays bounded), then sealed and committed."""
    c = len(meta["class_names"])
    gen = cf.new_generation()
    parts, done, k = [], 0, 0
    while done < rows:
        n = min(part_rows, rows - done)
        per = np.full(c, n // c, dtype=np.int64)
        per[: n - per.sum()] += 1
        w = world(per, seed=seed + 17 + k)
        perm = np.random.default_rng(seed + k).permutation(n)
        ids = np.char.add(f"{split}-{k}-", np.arange(n).astype(str))
        t = cf.build_table(
            ids, split, w.labels[perm], w.zs[perm], None if w.ft is None else w.ft[perm],
            metadata=meta, dtype=dtype,
        )
        del w
        parts.append(cf.write_part(cell, split, k, t, gen, row_group_size=row_group_size).name)
        del t
        done += n
        k += 1
    cf.commit_cell(cell, {split: cf.seal_split(cell, split, parts, gen)})


def _write_counts(store: str | os.PathLike, dataset: str, names: list[str], pi_s: np.ndarray) -> None:
    """The dataset's training class counts, drawn from π_s (50 images per class on average)."""
    c = len(names)
    train = np.maximum(1, np.round(pi_s * 50 * c)).astype(np.int64)
    table = pa.table(
        {
            "class_index": pa.array(np.arange(c, dtype=np.int32)),
            "class_name": pa.array(names, pa.string()),
            "count": pa.array(train),
        }
    )
    cf.atomic_write_table(Path(store) / "datasets" / dataset / "class_counts.parquet", table)


def write_matrix(
    store: str | os.PathLike,
    models: int,
    datasets: int,
    **kwargs,
) -> list[tuple[str, str]]:
    """A models × datasets matrix of synthetic cells (model-i / data-j), distinct seeds."""
    cells = []
    for i in range(models):
        for j in range(datasets):
            m, d = f"model-{i}", f"data-{j}"
            write_cell(store, m, d, seed=1000 * i + j, **kwargs)
            cells.append((m, d))
    return cells
