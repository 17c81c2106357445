"""Rebuild the demo's committed assets: a tiny CLIP pretrained on a long tail, and one
fine-tuned classifier per downstream dataset.

    python -m gla.extract.demo.build_assets [--out DIR]

Deterministic (seeded, single-threaded torch, deterministic algorithms). On two CPU cores
it takes a few minutes. Not run by ``make demo``: the outputs are committed.

Pretraining objective: CLIP's image→text contrastive loss where the candidate captions of
each step are one caption per class (a random template each), plus the text→image
direction with every same-class image a positive. Each image competes against every
class's caption, so the model learns the long-tailed label frequency as a bias, which is
the pretraining label bias that GLA estimates and removes. (Plain in-batch InfoNCE with
repeated same-class captions largely cancels that bias, which would make a poor demo.)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from gla.extract.demo import world
from gla.extract.sources import load_animal_mnist, load_fashion_mnist

ASSETS = Path(__file__).resolve().parent / "assets"
ARCH = "gla-tiny-clip"
MODEL_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 28, "layers": 3, "width": 96, "head_width": 32, "patch_size": 7,
                   "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2,
                 "mlp_ratio": 2.0},
}
MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


def to_tensor(images: np.ndarray):
    """uint8 (N, 28, 28) gray → normalised (N, 3, 28, 28): what open_clip's preprocess gives."""
    import torch

    x = images.astype(np.float32)[:, None] / 255.0
    x = (np.repeat(x, 3, axis=1) - MEAN[None, :, None, None]) / STD[None, :, None, None]
    return torch.from_numpy(np.ascontiguousarray(x))


def augment(x, gen):
    """Random shifts of up to 2 pixels (cheap, keeps the 28-pixel frame)."""
    import torch

    dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=gen))
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def load_pools():
    """Train pools of both sources in the 20-class label space."""
    fx, fy, _ = load_fashion_mnist("train")
    ax, ay, _ = load_animal_mnist("train")
    return {"fashion": (fx, fy), "animals": (ax, ay)}


def split_world(pools):
    """Pretraining images (20-class labels) and fine-tuning images per dataset."""
    rng = np.random.default_rng(world.SEED)
    truth = world.pretrain_counts()
    pre_x, pre_y, ft = [], [], {}
    offset = 0
    for name, (x, y) in pools.items():
        names = world.DATASETS[name]
        pre_idx = world.draw_indices(y, np.array([truth[c] for c in names]), rng)
        ft_idx = world.draw_indices(y, world.finetune_counts(name), rng, exclude=pre_idx)
        pre_x.append(x[pre_idx])
        pre_y.append(y[pre_idx] + offset)
        ft[name] = (x[ft_idx], y[ft_idx])
        offset += len(names)
    return np.concatenate(pre_x), np.concatenate(pre_y), ft


def build_model(out: Path):
    import open_clip

    cfg_path = out / f"{ARCH}.json"
    cfg_path.write_text(json.dumps(MODEL_CONFIG, indent=1) + "\n")
    open_clip.add_model_config(cfg_path)
    model = open_clip.create_model(ARCH, pretrained=None)
    return model, open_clip.get_tokenizer(ARCH)


def caption_tokens(tokenizer, classes: list[str]):
    """(T, C, L) tokens: every template × class."""
    import torch

    return torch.stack([tokenizer([t.format(c) for c in classes]) for t in world.TEMPLATES])


def pretrain(model, tokenizer, x, y, *, epochs: int, batch: int, lr: float, log) -> None:
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(world.SEED)
    tokens = caption_tokens(tokenizer, world.CLASSES)  # (T, C, L)
    T, C, _ = tokens.shape
    X, Y = to_tensor(x), torch.from_numpy(y)
    steps = epochs * ((len(X) + batch - 1) // batch)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(X), generator=gen)
        total = 0.0
        for i in range(0, len(X), batch):
            idx = perm[i : i + batch]
            xb, yb = augment(X[idx], gen), Y[idx]
            pick = torch.randint(0, T, (C,), generator=gen)
            caps = tokens[pick, torch.arange(C)]
            img = F.normalize(model.encode_image(xb), dim=-1)
            txt = F.normalize(model.encode_text(caps), dim=-1)
            logits = model.logit_scale.exp() * img @ txt.T  # (B, C)
            loss_i2t = F.cross_entropy(logits, yb)
            # text→image: each class caption present in the batch against the batch's images,
            # every image of that class a positive.
            present = torch.unique(yb)
            lt = logits.T[present]  # (P, B)
            pos = (yb[None, :] == present[:, None]).float()
            loss_t2i = -(torch.log_softmax(lt, dim=1) * pos).sum(1).div(pos.sum(1)).mean()
            loss = 0.5 * (loss_i2t + loss_t2i)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, np.log(100))
            total += float(loss.detach()) * len(idx)
        log(f"pretrain epoch {epoch + 1}/{epochs}: loss {total / len(X):.3f}, "
            f"scale {float(model.logit_scale.exp()):.1f}")
    model.eval()


def zero_shot_head(model, tokenizer, classes: list[str]):
    """logit_scale × mean normalised caption embedding per class (renormalised), (C, D)."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        tokens = caption_tokens(tokenizer, classes)
        emb = F.normalize(model.encode_text(tokens.flatten(0, 1)), dim=-1)
        emb = F.normalize(emb.view(tokens.shape[0], len(classes), -1).mean(0), dim=-1)
        return emb * model.logit_scale.exp()


def finetune(model, head_init, x, y, *, epochs: int, batch: int, lr: float, log):
    """Image tower + linear head (initialised from the zero-shot head) on imbalanced data."""
    import copy

    import torch
    import torch.nn.functional as F

    visual = copy.deepcopy(model.visual)
    head = torch.nn.Linear(head_init.shape[1], head_init.shape[0])
    with torch.no_grad():
        head.weight.copy_(head_init)
        head.bias.zero_()
    gen = torch.Generator().manual_seed(world.SEED + 7)
    X, Y = to_tensor(x), torch.from_numpy(y)
    params = list(visual.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    steps = epochs * ((len(X) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    visual.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(X), generator=gen)
        total = 0.0
        for i in range(0, len(X), batch):
            idx = perm[i : i + batch]
            feats = F.normalize(visual(augment(X[idx], gen)), dim=-1)
            loss = F.cross_entropy(head(feats), Y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        log(f"  finetune epoch {epoch + 1}/{epochs}: loss {total / len(X):.3f}")
    visual.eval()
    return visual, head


def save_finetuned(path: Path, visual, head, num_classes: int) -> None:
    from safetensors.torch import save_file

    tensors = {f"visual.{k}": v.detach().contiguous() for k, v in visual.state_dict().items()}
    tensors["head.weight"] = head.weight.detach().contiguous()
    tensors["head.bias"] = head.bias.detach().contiguous()
    meta = {"format": "gla-ft/1", "arch": ARCH, "num_classes": str(num_classes), "normalize": "true"}
    save_file(tensors, str(path), metadata=meta)


def save_pretrained(path: Path, model) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path))


def main(argv: list[str] | None = None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ASSETS)
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--ft-epochs", type=int, default=15)
    args = p.parse_args(argv)
    torch.manual_seed(world.SEED)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", flush=True)

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    pre_x, pre_y, ft_sets = split_world(load_pools())
    log(f"pretraining on {len(pre_x)} images over {len(world.CLASSES)} classes")
    model, tokenizer = build_model(out)
    pretrain(model, tokenizer, pre_x, pre_y, epochs=args.epochs, batch=128, lr=2e-3, log=log)
    save_pretrained(out / f"{ARCH}.safetensors", model)
    (out / "templates.txt").write_text("\n".join(world.TEMPLATES) + "\n")
    truth = world.pretrain_counts()
    total = sum(truth.values())
    freq = {
        ds: {c: {"count": truth[c], "share": truth[c] / total} for c in names}
        for ds, names in world.DATASETS.items()
    }
    (out / "pretrain_frequencies.json").write_text(json.dumps(freq, indent=1) + "\n")
    for ds, (x, y) in ft_sets.items():
        names = world.DATASETS[ds]
        log(f"fine-tuning {ds} on {len(x)} images")
        head0 = zero_shot_head(model, tokenizer, names)
        visual, head = finetune(model, head0, x, y, epochs=args.ft_epochs, batch=64, lr=5e-4, log=log)
        save_finetuned(out / f"ft-{ds}.safetensors", visual, head, len(names))
        counts = np.bincount(y, minlength=len(names))
        lines = ["class_index,count"] + [f"{k},{int(n)}" for k, n in enumerate(counts)]
        (out / f"train-counts-{ds}.csv").write_text("\n".join(lines) + "\n")
    log(f"assets written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
