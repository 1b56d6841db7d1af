"""Command groups of the `ddnm` command line (see ddnm/cli.py)."""
