"""CPU stages of gla-pipeline: priors, logit adjustment, statistics.

Pure functions over numpy arrays and Arrow/Polars tables; no torch, no file I/O.
"""
