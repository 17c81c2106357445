"""GPU stage of gla-pipeline: open_clip models over image datasets, logits to Parquet.

Importing this package does not import torch: ``extract.cellformat`` (the store's logit
format) is used by analysis-only installs too. Modules that need torch (or open_clip,
PIL, safetensors, datasets) import it inside the functions that use it: those optional
extras are the only imports made inside functions; the package's own modules import each
other at module level (tests/test_structure.py).

Modules (one job each):

- ``cellformat``  the store's logit-cell format (numpy + pyarrow only)
- ``models``      open_clip model by arch + pretrained tag / hf-hub id / local file, or a
                  model-config JSON; device, precision, model identity
- ``finetuned``   fine-tuned classifiers: our ``gla-ft/1`` checkpoints and WiSE-FT's layout
- ``templates``   prompt templates: "simple", "openai-imagenet" (open_clip's 80) or a file
- ``zeroshot``    the zero-shot head (class names × templates), cached in the store
- ``datasets``    dataset kinds (imagefolder, manifest, webdataset, fashion-mnist,
                  animal-mnist) and seeded split drawing
- ``run``         ``extract_cell``: one decode, every encoder; resumable sharded writes
- ``cellkey``     the cell key and generation tag shared by ``run`` and ``reembed``
- ``reembed``     zs for new templates / class names from stored image embeddings
- ``sources``     raw Fashion-MNIST / animal-mnist arrays
- ``errors``      ``ExtractError`` (bad input, one line)
"""
