"""One module per ``gla`` sub-command (see pipeline.cli)."""
