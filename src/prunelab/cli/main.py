"""Command line: the ``prunelab`` group; each subcommand parses, then calls the library.

Library errors (``ValueError``, ``TypeError``, ``OSError`` ...) become one-line messages with a
non-zero exit, never a traceback.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from prunelab.cli.grid import study
from prunelab.cli.infer import bench, compact_cmd, model_info
from prunelab.cli.study import compare, report, run, sweep, train
from prunelab.study.executors import JobFailed
from prunelab.train import strict_blas

__all__ = ["cli", "main"]


class _Group(click.Group):
    """Turns library errors into one-line messages with a non-zero exit, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (ValueError, TypeError, OSError, ImportError, JobFailed) as e:
            raise click.ClickException(str(e)) from None
        except KeyboardInterrupt:
            click.echo("interrupted; files already written are intact", err=True)
            sys.exit(130)


STUDY_COMMANDS = frozenset({"run", "train", "sweep", "study"})
"""Commands whose numbers must not depend on the thread count (``train.strict_blas``)."""


@click.group(cls=_Group)
@click.option("-v", "--verbose", is_flag=True, help="Log progress details.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """prunelab: post-hoc pruning of trained networks."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if ctx.invoked_subcommand in STUDY_COMMANDS:
        strict_blas()


for _command in (run, train, sweep, report, compare, study, bench, compact_cmd, model_info):
    cli.add_command(_command)


def main() -> None:
    cli(prog_name="prunelab")
