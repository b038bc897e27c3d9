"""Command line interface: ``prunelab`` (see ``prunelab --help``)."""

from prunelab.cli.main import cli, main

__all__ = ["cli", "main"]
