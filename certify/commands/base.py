"""What every command shares: turning library errors into click's errors, and the check
of an output file given with ``--out``.

Library errors name arguments by their Python names: an error about one argument
carries it in ``param``, and a message may name others in backquotes (``` `resume` ```).
Here both become the command's flags, so the user reads ``--resume``; an error with a
``param`` is a usage error (exit 2, like click's own), a failed soundness check is a bug
(exit 3, with the per-image file of the run written for the report, see
:func:`write_soundness_evidence`), any other error is one of the input (exit 1).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import click

from certify.core.errors import CertifyError, DataError, SoundnessError, UsageError

_NAMED = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)`")


class CertifyCommand(click.Command):
    """A command whose library errors name its flags, and whose bad arguments are told in
    one line (click's usage block left out; ``--help`` has it)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            exc.ctx = None  # click prints the usage block only for an error with a context
            raise

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CertifyError as exc:
            reason = _NAMED.sub(lambda m: self.flag(m.group(1)), exc.reason)
            if isinstance(exc, DataError) and exc.download is not None:
                reason = _with_download_command(reason, *exc.download)
            if isinstance(exc, SoundnessError):
                raise SoundnessFailure(reason) from None
            if exc.param is None:
                raise click.ClickException(reason) from None
            # No ctx: click would print the usage lines too, and bad input gets one line.
            raise click.BadParameter(reason, param_hint=self.flag(exc.param)) from None

    def flag(self, name: str) -> str:
        """The flag (or argument) of this command that sets the library argument ``name``."""
        dashed = "--" + name.replace("_", "-")
        for param in self.params:
            if param.name == name or dashed in getattr(param, "opts", ()):
                if isinstance(param, click.Option):
                    return dashed if dashed in param.opts else param.opts[0]
                return param.human_readable_name
        return dashed


def _with_download_command(reason: str, dataset: str, data_dir: Path) -> str:
    """The message of a missing data set, ending with the command that downloads it."""
    reason = reason.removesuffix("; certify.data.download_dataset fetches it")
    command = f"certify data download {dataset} --data-dir {shlex.quote(str(data_dir))}"
    return f"{reason}; to download it, run `{command}`"


class CertifyGroup(click.Group):
    """A group of commands whose bad arguments (an unknown command) are told in one line."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            exc.ctx = None
            raise

    def resolve_command(self, ctx: click.Context, args: list[str]):  # type: ignore[override]
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as exc:
            exc.ctx = None
            raise


class SoundnessFailure(click.ClickException):
    """A verified image was attacked or misclassified: a bug, reported with exit code 3."""

    exit_code = 3


# Where a failed run's per-image results go when the command was given no file for them.
SOUNDNESS_SAMPLES = "soundness_failure_samples.csv"


def write_soundness_evidence(exc: SoundnessError, path: Path | None, folder: Path) -> None:
    """Write the per-image file of the failed run to ``path``, the user's, or else to a new
    file in ``folder``, and say so in the message (or why it could not be written)."""
    result = exc.result
    if result is None:
        return
    if path is None:
        path, n = folder / SOUNDNESS_SAMPLES, 1
        while path.exists():
            n += 1
            path = folder / f"{Path(SOUNDNESS_SAMPLES).stem}_{n}.csv"
    try:
        result.write_csv(per_sample=path)  # type: ignore[attr-defined]
    except (OSError, CertifyError) as err:
        exc.reason += f" (the per-image results could not be written to {path}: {err})"
    else:
        exc.reason += f"; the per-image results are in {path}: attach them to the report"


def check_out_file(path: str | Path, suffix_hint: str) -> Path:
    """``path`` as a Path, if a file can be written there (not a folder, folder exists)."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(
            f"{path} is a folder; give a file name, e.g. {path / suffix_hint}", param="out"
        )
    if not path.parent.is_dir():
        raise UsageError(f"{path}: folder {path.parent} does not exist", param="out")
    return path
