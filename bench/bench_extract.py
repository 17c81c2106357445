"""Extraction throughput: `extract_cell` vs bare open_clip loops, same model and batch size.

Three figures, images per second, end to end (model load and zero-shot head included in
every variant, so the ratios compare like with like):

- tensors: a bare loop over already-decoded, preprocessed tensors (encode + zs logits);
- files:   a bare loop over the same image files (decode + preprocess + encode + zs),
           sequential (num_workers=0) and through a torch DataLoader with the same
           worker count as the pipeline;
- gla:     `extract.run.extract_cell` on the same files (zs logits, Parquet parts,
           manifest), with num_workers=0 and with the configured workers.

Goal: gla over files-with-the-same-workers ≥ 0.90 (pipeline overhead ≤ 10 %).

    .venv/bin/python bench/bench_extract.py [--images 2048] [--batch-size 64] [--workers 1]
                                            [--size 96] [--repeat 5] [--threads 1]
                                            [--arch tiny|ViT-B-32]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def make_files(folder: Path, n: int, size: int, classes: list[str]) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        c = classes[i % len(classes)]
        (folder / c).mkdir(parents=True, exist_ok=True)
        # smooth-ish content so JPEG sizes are realistic
        base = rng.integers(0, 256, size=(size // 8, size // 8, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((size, size), Image.BILINEAR)
        img.save(folder / c / f"{i:06d}.jpg", quality=90)
    return folder


class _Files:
    def __init__(self, paths, preprocess):
        self.paths, self.preprocess = paths, preprocess

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            return self.preprocess(im.convert("RGB"))


def _worker_init(_):
    import torch

    torch.set_num_threads(1)


def bare(spec, classes, paths, batch_size, workers, mode):
    """A plain open_clip loop. mode: 'tensors' (pre-decoded) or 'files'."""
    import open_clip
    import torch
    from open_clip.zero_shot_classifier import build_zero_shot_classifier
    from PIL import Image

    if spec.get("model_config"):
        open_clip.add_model_config(spec["model_config"])
    from gla.extract.run import main_thread_budget

    threads = torch.get_num_threads()
    # the same thread budget as the pipeline, so the ratio measures overhead only
    torch.set_num_threads(min(threads, main_thread_budget("cpu", workers)))
    pre = None
    if mode == "tensors":  # decode outside the timed region
        _, _, pre = open_clip.create_model_and_transforms(spec["arch"], pretrained=spec["pretrained"] or None)
        tensors = torch.stack([pre(Image.open(p).convert("RGB")) for p in paths])
    t0 = time.perf_counter()
    model, _, pre = open_clip.create_model_and_transforms(spec["arch"], pretrained=spec["pretrained"] or None)
    model.eval()
    tok = open_clip.get_tokenizer(spec["arch"])
    outs = []
    with torch.inference_mode():
        w = build_zero_shot_classifier(model, tok, classes, ["a photo of a {}."], num_classes_per_batch=None)
        scale = model.logit_scale.exp()
        if mode == "tensors":
            batches = (tensors[i : i + batch_size] for i in range(0, len(tensors), batch_size))
        else:
            batches = torch.utils.data.DataLoader(
                _Files(paths, pre), batch_size=batch_size, num_workers=workers,
                worker_init_fn=_worker_init if workers else None,
                prefetch_factor=4 if workers else None)
        for x in batches:
            f = model.encode_image(x, normalize=True)
            outs.append((scale * f @ w).numpy())
    np.concatenate(outs)
    rate = len(paths) / (time.perf_counter() - t0)
    torch.set_num_threads(threads)
    return rate


def gla(spec, root, store, batch_size, workers):
    from gla.extract.run import extract_cell

    shutil.rmtree(store, ignore_errors=True)
    ds = {"name": "bench", "kind": "imagefolder", "root": str(root), "splits": {}}
    opts = {"batch_size": batch_size, "num_workers": workers, "shard_rows": 4096,
            "image_embeddings": False, "device": "cpu"}
    t0 = time.perf_counter()
    info = extract_cell(store, spec, ds, opts, progress=False)
    dt = time.perf_counter() - t0
    return info["images"] / dt, info


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (loader workers)."""
    import resource

    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + ch.ru_utime + ch.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--size", type=int, default=96, help="image side in pixels (JPEG)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads of the main process (1: robust on a shared machine)")
    ap.add_argument("--arch", default="tiny", help="'tiny' (the tests' model) or an open_clip arch, random init")
    args = ap.parse_args()

    import torch
    from fixtures_tiny_clip import CLASSES, make_tiny_clip

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="gla-bench-extract-"))
    try:
        if args.arch == "tiny":
            tc = make_tiny_clip(tmp / "model")
            spec = tc.model_spec()
        else:
            spec = {"name": "bench-model", "arch": args.arch, "pretrained": "", "templates": "simple"}
        root = make_files(tmp / "images", args.images, args.size, CLASSES)
        paths = sorted(str(p) for p in root.rglob("*.jpg"))
        # the pipeline's dataset order (class folder, then file) — same files either way
        print(f"model {args.arch}, {args.images} JPEG images {args.size}px, batch {args.batch_size}, "
              f"workers {args.workers}, torch threads {torch.get_num_threads()}, best of {args.repeat}")
        gla(spec, root, tmp / "warm", args.batch_size, 0)  # warm-up: imports, caches
        res: dict[str, float] = {}
        cpu: dict[str, float] = {}
        variants = {
            "bare tensors (pre-decoded)": lambda: bare(spec, CLASSES, paths, args.batch_size, 0, "tensors"),
            "bare files, workers=0": lambda: bare(spec, CLASSES, paths, args.batch_size, 0, "files"),
            f"bare files, workers={args.workers}": lambda: bare(spec, CLASSES, paths, args.batch_size, args.workers, "files"),
            "gla extract, workers=0": lambda: gla(spec, root, tmp / "s0", args.batch_size, 0)[0],
            f"gla extract, workers={args.workers}": lambda: gla(spec, root, tmp / "s1", args.batch_size, args.workers)[0],
        }
        names = list(variants)
        rounds: list[dict[str, float]] = []
        for r in range(args.repeat):  # interleaved, order rotated each round, best of
            this: dict[str, float] = {}
            for name in names[r % len(names):] + names[: r % len(names)]:
                fn = variants[name]
                c0 = cpu_seconds()
                this[name] = fn()
                res[name] = max(res.get(name, 0.0), this[name])
                per = args.images / max(cpu_seconds() - c0, 1e-9)
                cpu[name] = max(cpu.get(name, 0.0), per)
            rounds.append(this)
        _, info = gla(spec, root, tmp / "s2", args.batch_size, args.workers)
        print(f"  {'variant':<32} {'wall img/s':>10} {'img/CPU-s':>10}")
        for name, v in res.items():
            c = "-" if name.startswith("bare tensors") else f"{cpu[name]:.1f}"  # decode not timed
            print(f"  {name:<32} {v:10.1f} {c:>10}")
        t = res["bare tensors (pre-decoded)"]
        f0, fw = res["bare files, workers=0"], res[f"bare files, workers={args.workers}"]
        g0, gw = res["gla extract, workers=0"], res[f"gla extract, workers={args.workers}"]
        print(f"  gla/bare-files  workers=0: {g0 / f0:.3f}   workers={args.workers}: {gw / fw:.3f}   (goal >= 0.90)")
        print(f"  gla/bare-tensors          workers=0: {g0 / t:.3f}   workers={args.workers}: {gw / t:.3f}")
        w = args.workers
        paired = [
            (r["gla extract, workers=0"] / r["bare files, workers=0"],
             r[f"gla extract, workers={w}"] / r[f"bare files, workers={w}"]) for r in rounds]
        m0, mw = np.median([p[0] for p in paired]), np.median([p[1] for p in paired])
        print(f"  median of per-round ratios gla/bare-files  workers=0: {m0:.3f}   workers={w}: {mw:.3f}")
        c = {k: cpu[k] for k in res}
        print(f"  CPU-time ratios gla/bare-files  workers=0: {c['gla extract, workers=0'] / c['bare files, workers=0']:.3f}"
              f"   workers={args.workers}: {c[f'gla extract, workers={args.workers}'] / c[f'bare files, workers={args.workers}']:.3f}"
              "   (robust to other load on the machine)")
        s = info["seconds"]
        print(f"  gla stage times (last run): setup {s['setup']:.2f}s read-wait {s['read']:.2f}s "
              f"infer {s['infer']:.2f}s write {s['write']:.2f}s total {s['total']:.2f}s")
        print("command: .venv/bin/python bench/bench_extract.py " + " ".join(sys.argv[1:]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
