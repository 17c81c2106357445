"""GPU stage of gla-pipeline: open_clip models over image datasets, logits to Parquet.

Importing this package does not import torch: ``extract.cellformat`` (the store's logit
format) is used by analysis-only installs too. Modules that need torch import it
themselves.
"""
