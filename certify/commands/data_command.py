"""``certify data download``: fetch a data set's official files into ``--data-dir``.

A thin layer over :func:`certify.data.download.download_dataset`, which does the
resumable, checksummed, atomic work; here only the options and the progress display
(a rich bar on a terminal, one line per step otherwise, so that logs stay readable).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)

from certify.commands.base import CertifyCommand, CertifyGroup
from certify.core.datasets import Dataset
from certify.data.fetch import ProgressFn

_DATASETS = ", ".join(d.value for d in Dataset)


@click.group("data", cls=CertifyGroup)
def data_group() -> None:
    """Get the data sets that eval and train read."""


_DOWNLOAD_HELP = f"""Download DATASET ({_DATASETS}) in the layout eval and train read.

Each file is checked against its published MD5 and unpacked in a hidden folder, then
moved into place in one step. An interrupted download resumes when the command is run
again.
"""


@data_group.command("download", cls=CertifyCommand, help=_DOWNLOAD_HELP)
@click.argument("dataset")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    help="Folder to put the data set in.  [default: $CERTIFY_DATA, else ./data]",
)
@click.option("--mirror", metavar="URL", help="Fetch URL/<file name> instead of the official host.")
@click.option("--force", is_flag=True, help="Download again even if the data set is there.")
def download_command(dataset: str, data_dir: str | None, mirror: str | None, force: bool) -> None:
    from certify.data.download import download_dataset

    with _progress() as progress:
        result = download_dataset(dataset, data_dir, mirror=mirror, force=force, progress=progress)
    if result.downloaded:
        click.echo(f"{result.dataset.value}: wrote {result.path}", err=True)
    else:
        click.echo(
            f"{result.dataset.value}: {result.path} is there already; "
            "pass --force to download it again",
            err=True,
        )


@contextlib.contextmanager
def _progress() -> Iterator[ProgressFn]:
    console = Console(stderr=True)
    if not console.is_terminal:
        yield _log_steps()
        return
    # Narrow enough for an 80-column terminal.
    columns = (
        TextColumn("{task.description:<32}"),
        BarColumn(bar_width=20),
        DownloadColumn(),
        TimeRemainingColumn(),
    )
    tasks: dict[str, TaskID] = {}
    with Progress(*columns, console=console) as bar:

        def update(stage: str, done: int, total: int | None) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total, completed=done)
            bar.update(tasks[stage], completed=done, total=total)

        yield update


def _log_steps() -> ProgressFn:
    """One stderr line as each step starts, for logs and pipes."""
    seen: set[str] = set()

    def log(stage: str, done: int, total: int | None) -> None:
        if stage in seen:
            return
        seen.add(stage)
        resumed = f", resuming at {done:,} bytes" if done and stage.startswith("download") else ""
        size = f" ({total:,} bytes{resumed})" if total is not None else ""
        click.echo(f"{stage}{size}", err=True)

    return log
