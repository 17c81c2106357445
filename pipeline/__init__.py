"""Orchestration of gla-pipeline: CLI, config, store, Dask runner, report."""

__version__ = "0.1.0"
