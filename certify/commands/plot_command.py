"""``certify plot``: training curves of one or more `certify train` runs, as a PNG, or
with ``--curves`` the robustness curves of results files, as a PNG and a PDF.

A thin layer over :mod:`reports.plots` and :mod:`reports.robustness_curves`; every file
is written atomically, and only after everything was read and drawn, so that bad input
leaves no file behind.
"""

from __future__ import annotations

import click

from certify.commands.base import CertifyCommand, check_out_file


@click.command("plot", cls=CertifyCommand)
@click.argument("inputs", nargs=-1, required=True, type=click.Path(), metavar="RUN_DIR|CSV...")
@click.option(
    "--curves",
    is_flag=True,
    help="The arguments are results CSV files (of certify eval --out or certify train): "
    "draw certified and PGD accuracy against eps, into --out and a PDF or PNG beside it.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(),
    help="PNG file to write; with --curves, FILE.png or FILE.pdf (both are written).",
)
@click.option("--dpi", default=100, show_default=True, type=click.IntRange(30, 600))
def plot_command(inputs: tuple[str, ...], curves: bool, out: str, dpi: int) -> None:
    """Draw the curves of RUN_DIRs (folders with train_log.csv) into one PNG.

    eps schedule, loss, both regularizers, clean and verified error (train and
    validation), and the shares of active and inactive ReLUs; one colour per run.

    With --curves, the arguments are results CSV files instead: certified accuracy per
    bound method and PGD accuracy against eps, one panel per data set, written as
    FILE.png and FILE.pdf (the name given to --out, and the other format beside it).
    """
    from certify.core.atomic_files import atomic_write

    if curves:
        files = _curve_files(inputs, out, dpi)
    else:
        from reports.plots import plot_runs

        check_out_file(out, "curves.png")
        _refuse_results_files(inputs)
        files = {out: plot_runs(inputs, dpi=dpi)}
    for path, data in files.items():
        atomic_write(path, lambda f, data=data: f.write(data))
    click.echo(f"wrote {' and '.join(map(str, files))}", err=True)


def _refuse_results_files(inputs: tuple[str, ...]) -> None:
    """A results file given without --curves would be refused as "not a training log";
    say instead what the user most likely meant."""
    from pathlib import Path

    from certify.core.errors import UsageError

    for name in inputs:
        path = Path(name)
        if path.suffix.lower() == ".csv" and path.is_file():
            with open(path, encoding="utf-8", errors="replace") as f:
                header = f.readline().strip().split(",")
            if "verified_error" in header and "eps" in header:
                raise UsageError(
                    f"{path} is a results file, not a run folder: add `curves` to draw "
                    "its robustness curves"
                )


def _curve_files(inputs: tuple[str, ...], out: str, dpi: int) -> dict[str, bytes]:
    """The robustness curves as the file ``out`` names and, beside it, the other format:
    a PNG to look at and a PDF for a paper, from one figure."""
    from reports.robustness_curves import CurveFormat, plot_curves

    path = check_out_file(out, "curves.png")
    asked = CurveFormat.from_path(path)
    other = CurveFormat.PDF if asked is CurveFormat.PNG else CurveFormat.PNG
    images = plot_curves(inputs, (asked, other), dpi=dpi)
    return {out: images[asked], str(path.with_suffix("." + other.value)): images[other]}
