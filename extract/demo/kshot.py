"""k-shot heads for the demo: linear heads on the frozen pretrained tower, k images per class.

    build_kshot_heads(out_dir) -> {dataset: {k: checkpoint path}}

For each downstream dataset and k in ``SHOTS``, k training images per class are drawn
(seeded) from the dataset's "train" pool, outside the tiny CLIP's pretraining images. A
linear head initialised from the zero-shot head (as in WiSE-FT) is trained on their
normalised, frozen image features: ``STEPS`` full-batch AdamW steps, on the CPU, in well
under a second per head. Each is saved in the gla-ft/1 layout with the pretrained tower,
so extraction recognises it as a head on the pretrained features and runs no second
tower pass. Deterministic: a rebuild gives the same tensors.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from gla.extract.demo import world
from gla.extract.demo.build_assets import (
    ARCH,
    ASSETS,
    load_pools,
    save_finetuned,
    to_tensor,
    zero_shot_head,
)

SHOTS = (1, 2, 4, 8, 16)
STEPS = 300
LR = 1e-3


def _pretraining_indices(pools) -> dict[str, np.ndarray]:
    """The pretraining images of each pool: the same seeded draws as ``split_world``."""
    rng = np.random.default_rng(world.SEED)
    truth = world.pretrain_counts()
    out = {}
    for name, (_, y) in pools.items():
        names = world.DATASETS[name]
        pre = world.draw_indices(y, np.array([truth[c] for c in names]), rng)
        world.draw_indices(y, world.finetune_counts(name), rng, exclude=pre)  # keep the rng in step
        out[name] = pre
    return out


def _load_model(assets: Path):
    import open_clip
    from safetensors.torch import load_file

    open_clip.add_model_config(assets / f"{ARCH}.json")
    model = open_clip.create_model(ARCH, pretrained=None)
    model.load_state_dict(load_file(str(assets / f"{ARCH}.safetensors")))
    return model.eval(), open_clip.get_tokenizer(ARCH)


def train_head(feats, y, head_init, steps: int = STEPS, lr: float = LR):
    """Linear head from ``head_init`` on fixed features (full batch, AdamW)."""
    import torch
    import torch.nn.functional as F

    head = torch.nn.Linear(head_init.shape[1], head_init.shape[0])
    with torch.no_grad():
        head.weight.copy_(head_init)
        head.bias.zero_()
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.01)
    for _ in range(steps):
        loss = F.cross_entropy(head(feats), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return head


def build_kshot_heads(out_dir: str | Path, assets: Path = ASSETS, shots=SHOTS) -> dict[str, dict[int, str]]:
    """Write (or reuse) the k-shot checkpoints; returns their paths by dataset and k."""
    import torch
    import torch.nn.functional as F

    out_dir = Path(out_dir)
    paths = {ds: {k: out_dir / f"{ds}-{k}shot.safetensors" for k in shots} for ds in world.DATASETS}
    index = out_dir / "kshot.json"
    want = {"shots": list(shots), "steps": STEPS, "lr": LR, "seed": world.SEED}
    if index.is_file() and json.loads(index.read_text()) == want and all(
            p.is_file() for d in paths.values() for p in d.values()):
        return {ds: {k: str(p) for k, p in d.items()} for ds, d in paths.items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(world.SEED)
    model, tokenizer = _load_model(assets)
    pools = load_pools()
    pre = _pretraining_indices(pools)
    for ds, (x, y) in pools.items():
        names = world.DATASETS[ds]
        with torch.no_grad():
            head0 = zero_shot_head(model, tokenizer, names)
        for k in shots:
            rng = np.random.default_rng([world.SEED, 7, list(world.DATASETS).index(ds), k])
            idx = world.draw_indices(y, np.full(len(names), k), rng, exclude=pre[ds])
            with torch.no_grad():
                feats = F.normalize(model.encode_image(to_tensor(x[idx])), dim=-1)
            head = train_head(feats, torch.from_numpy(y[idx]).long(), head0)
            save_finetuned(paths[ds][k], model.visual, head, len(names))
    index.write_text(json.dumps(want))
    return {ds: {k: str(p) for k, p in d.items()} for ds, d in paths.items()}

