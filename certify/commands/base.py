"""What every command shares: turning library errors into click's errors, and the check
of an output file given with ``--out``.

Library errors name arguments by their Python names: an error about one argument
carries it in ``param``, and a message may name others in backquotes (``` `resume` ```).
Here both become the command's flags, so the user reads ``--resume``; an error with a
``param`` is a usage error (exit 2, like click's own), any other a plain one (exit 1).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click

from certify.core.errors import CertifyError, UsageError

_NAMED = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)`")


class CertifyCommand(click.Command):
    """A command whose library errors name its flags."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CertifyError as exc:
            reason = _NAMED.sub(lambda m: self.flag(m.group(1)), exc.reason)
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
