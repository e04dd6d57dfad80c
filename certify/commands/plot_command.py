"""``certify plot``: training curves of one or more `certify train` runs, as a PNG.

A thin layer over :mod:`reports.plots`; the PNG is written atomically.
"""

from __future__ import annotations

import click

from certify.commands.base import CertifyCommand, check_out_file


@click.command("plot", cls=CertifyCommand)
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="PNG file to write.")
@click.option("--dpi", default=100, show_default=True, type=click.IntRange(30, 600))
def plot_command(run_dirs: tuple[str, ...], out: str, dpi: int) -> None:
    """Draw the curves of RUN_DIRS (folders with train_log.csv) into one PNG.

    eps schedule, loss, both regularizers, clean and verified error (train and
    validation), and the shares of active and inactive ReLUs; one colour per run.
    """
    from certify.core.atomic_files import atomic_write
    from reports.plots import plot_runs

    check_out_file(out, "curves.png")
    png = plot_runs(run_dirs, dpi=dpi)
    atomic_write(out, lambda f: f.write(png))
    click.echo(f"wrote {out}", err=True)
