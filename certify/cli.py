"""The ``certify`` command line: a thin click layer over the library.

Each command parses its options, calls library functions and renders their results.
Library errors (:class:`certify.core.errors.CertifyError`) become a one-line message
that names the flag at fault and a non-zero exit code here (see
:mod:`certify.commands.base`), and nowhere else.
"""

from __future__ import annotations

import logging
import sys

import click

from certify.commands.base import CertifyGroup
from certify.core.allocator import keep_freed_memory
from certify.core.errors import CertifyError


class _Group(CertifyGroup):
    """Turns library errors that escape a command (raised while its options are parsed)
    into one-line messages with exit code 1."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except CertifyError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="certify")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """Certified robustness of image classifiers: train and verify."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)


def main() -> None:
    # Evaluation and training allocate many activation-sized tensors: keep freed
    # memory for reuse instead of paying page faults for each (see certify.core.allocator).
    keep_freed_memory()
    cli(prog_name="certify")


def _register_commands() -> None:
    from certify.commands.data_command import data_group
    from certify.commands.eval_command import eval_command
    from certify.commands.export_command import export_command
    from certify.commands.models_command import models_command
    from certify.commands.plot_command import plot_command
    from certify.commands.report_command import report_command
    from certify.commands.train_command import train_command

    cli.add_command(eval_command)
    cli.add_command(models_command)
    cli.add_command(train_command)
    cli.add_command(export_command)
    cli.add_command(report_command)
    cli.add_command(plot_command)
    cli.add_command(data_group)


_register_commands()

if __name__ == "__main__":
    sys.exit(main())
