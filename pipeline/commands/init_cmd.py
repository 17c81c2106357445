"""``gla init``: write a commented starter config.

    gla init [--from-folder PATH] [--out gla.toml] [--force]

With ``--from-folder``, PATH is read as an imagefolder dataset (``PATH/<class>/<image>``):
its class folders become an explicit ``{folder = "name"}`` mapping and a validation split
is sized to the smallest class. The model is left as placeholders (``<fill in: ...>``),
which ``gla check`` names until they are replaced.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from gla.extract.datasets import IMAGE_EXTS
from gla.pipeline.config import PLACEHOLDER
from gla.pipeline.errors import UserError

MODEL = '''
# ---------------------------------------------------------------------------- the model
[[models]]
name = "my-model"                 # a short name: the store's folder for this model
# An open_clip architecture (`gla models` lists them), e.g. "ViT-B-32".
arch = "<fill in: an open_clip architecture, e.g. ViT-B-32>"
# Weights: an open_clip tag (e.g. "laion2b_s34b_b79k"), "hf-hub:ORG/NAME", or a local
# .safetensors file (relative paths are relative to this file); "none" for random weights.
pretrained = "<fill in: a pretrained tag, hf-hub:ORG/NAME or a local checkpoint>"
templates = "simple"              # or "openai-imagenet", or a text file: one template per line with {{}}
# model_config = "my-arch.json"   # an architecture outside open_clip's registry
# A fine-tuned checkpoint per dataset (its head must have one row per class):
# finetuned = {{ {dataset} = "ft-{dataset}.safetensors" }}
'''

HEADER = '''# gla-pipeline run config: `gla check {out}` validates it, `gla run {out}` runs it.
# Paths are relative to this file. Datasets, class names and the checks: docs/datasets.md.
store = "gla-store"

[compute]
workers = 2                       # local Dask worker processes; 0 runs in this process

[analysis]
estimators = ["gla"]              # the first fits the prior the methods use
fit_split = "val"                 # a class-balanced split the prior pi_p is fitted on
eval_split = "test"               # every method is scored here (never the fit split)

[extract]
batch_size = 64
# device = "auto"                 # cuda when there is one
'''


def _dataset_block(folder: Path | None, out_dir: Path) -> str:
    if folder is None:
        return '''
# ---------------------------------------------------------------------------- the dataset
[[datasets]]
name = "my-images"
kind = "imagefolder"              # or manifest, webdataset, huggingface, fashion-mnist, animal-mnist
root = "<fill in: a folder holding one sub-folder of images per class>"
# train_counts = "train-counts.csv"   # class_index,count of the fine-tuning set (for ft_la and gla)
[datasets.splits]
val = { per_class = 20 }          # drawn with `seed`, balanced
test = { rest = true }            # every image the other splits did not draw
'''
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UserError(f"--from-folder {folder}: no class folders (expected PATH/<class>/<image>)")
    counts = {c: sum(1 for _, _, files in os.walk(folder / c) for f in files
                     if os.path.splitext(f)[1].lower() in IMAGE_EXTS) for c in classes}
    smallest = min(counts.values())
    if smallest < 2:
        empty = min(counts, key=counts.get)
        raise UserError(f"--from-folder {folder}: class folder {empty!r} has {smallest} image(s); "
                        "each class needs at least 2 (one to fit on, one to test on)")
    per_class = max(1, min(20, smallest // 2))
    root = os.path.relpath(folder.resolve(), out_dir.resolve())
    name = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in folder.resolve().name) or "images"
    mapping = "\n".join(f"{json.dumps(c)} = {json.dumps(c)}" for c in classes)
    return f'''
# ---------------------------------------------------------------------------- the dataset
# {len(classes)} class folders, {sum(counts.values())} images (smallest class: {smallest}).
[[datasets]]
name = {json.dumps(name)}
kind = "imagefolder"
root = {json.dumps(root)}
seed = 0
# limit_per_class = 50            # a quick look: the first 50 images of each class
# train_counts = "train-counts.csv"   # class_index,count of the fine-tuning set (for ft_la and gla)
[datasets.splits]
val = {{ per_class = {per_class} }}
test = {{ rest = true }}

# The names the prompts use, in label order: each class folder (left) maps to its name
# (right). Edit the names, not the folders, e.g. "n01440764" = "tench". Every folder
# must be named; a class_names list must hold exactly the folder names.
[datasets.class_names]
{mapping}
'''


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from-folder", metavar="PATH",
                        help="an imagefolder dataset (PATH/<class>/<image>) to start from")
    parser.add_argument("--out", default="gla.toml", help="the config file to write (default gla.toml)")
    parser.add_argument("--force", action="store_true", help="overwrite --out if it exists")


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and not args.force:
        raise UserError(f"--out {out}: file exists (pass --force to overwrite it)")
    folder = None
    if args.from_folder:
        folder = Path(args.from_folder)
        if not folder.is_dir():
            raise UserError(f"--from-folder {folder}: not a folder")
    block = _dataset_block(folder, out.parent)
    dataset = json.loads(block.split("name = ", 1)[1].split("\n", 1)[0])
    text = HEADER.format(out=out.name) + MODEL.format(dataset=dataset) + block
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    except OSError as e:
        raise UserError(f"--out {out}: cannot write ({e.strerror})") from None
    print(f"wrote {out}: replace the {PLACEHOLDER}: ...> placeholders, then `gla check {out}`")
    return 0
