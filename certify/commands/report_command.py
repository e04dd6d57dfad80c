"""``certify report``: merge evaluation CSV files into one paper table.

A thin layer over :mod:`reports.results_table` and :mod:`reports.table_rendering`: parses
the options, prints the table or writes it atomically with ``--out``.
"""

from __future__ import annotations

import click

from certify.commands.base import CertifyCommand, check_out_file

_FORMAT_HELP = "terminal (rich table), markdown, latex (booktabs) or csv."
_SUFFIX = {"markdown": "md", "latex": "tex", "csv": "csv"}


def _split(values: tuple[str, ...] | str | None) -> tuple[str, ...]:
    """Comma-separated and repeated options alike, as one tuple of names."""
    if not values:
        return ()
    items = (values,) if isinstance(values, str) else values
    return tuple(v.strip() for item in items for v in item.split(",") if v.strip())


@click.command("report", cls=CertifyCommand)
@click.argument("results", nargs=-1, required=True, type=click.Path())
@click.option("--format", "fmt", default="terminal", show_default=True, help=_FORMAT_HELP)
@click.option("--out", type=click.Path(), help="Write the table to this file.")
@click.option("--group-by", multiple=True, help="Columns to group rows by, e.g. dataset,eps.")
@click.option("--sort-by", multiple=True, help="Columns to sort by; -col sorts descending.")
@click.option(
    "--where", multiple=True, help="Keep rows where COLUMN=VALUE (also != < <= > >=); repeatable."
)
def report_command(
    results: tuple[str, ...],
    fmt: str,
    out: str | None,
    group_by: tuple[str, ...],
    sort_by: tuple[str, ...],
    where: tuple[str, ...],
) -> None:
    """Merge RESULTS files (from `certify eval --out`, `certify train`) into one table.

    One row per model, data set and eps; errors in percent. When the same model, data
    set, eps and method appear more than once, the row with the latest date wins.
    """
    from certify.core.atomic_files import atomic_write_text
    from reports.results_table import ReportOptions, make_report
    from reports.table_rendering import check_format, render, terminal_table

    fmt = check_format(fmt)
    if out:
        check_out_file(out, f"table.{_SUFFIX.get(fmt, 'txt')}")
    options = ReportOptions(where=where, group_by=_split(group_by), sort_by=_split(sort_by))
    groups = make_report(results, options)
    if out:
        atomic_write_text(out, render(groups, fmt))
        click.echo(f"wrote {out}", err=True)
    elif fmt == "terminal":
        from rich.console import Console

        Console().print(terminal_table(groups))
    else:
        click.echo(render(groups, fmt), nl=False)
