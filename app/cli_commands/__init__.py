"""Subcommands of `clm`, one module per owner (see app/cli.py)."""
