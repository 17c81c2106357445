"""The embedded default: a miniature long-tailed CLIP world on real images.

``world`` defines the classes, frequencies and splits; ``build_assets`` trains the tiny
CLIP and the fine-tuned classifiers (``python -m gla.extract.demo.build_assets``); ``assets/``
holds the committed outputs that ``gla demo`` runs on.
"""
