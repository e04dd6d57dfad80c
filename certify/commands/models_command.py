"""``certify models``: list the registered architectures."""

from __future__ import annotations

import click

from certify.commands.base import CertifyCommand


@click.command("models", cls=CertifyCommand)
@click.argument("pattern", required=False)
def models_command(pattern: str | None) -> None:
    """List architecture names (optionally matching a glob PATTERN)."""
    from model_zoo import list_models

    for name in list_models(pattern):
        click.echo(name)
