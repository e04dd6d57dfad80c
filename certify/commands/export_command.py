"""``certify export``: a trained checkpoint as an ONNX file, for tools outside certify.

A thin layer over :func:`training.export.export_onnx`, which puts the data set's
normalization inside the graph and checks the file against the checkpoint; registered
in :mod:`certify.cli` next to ``certify train``, whose checkpoints it reads.
"""

from __future__ import annotations

from pathlib import Path

import click

from certify.commands.base import CertifyCommand


@click.command("export", cls=CertifyCommand)
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--opset", default=18, show_default=True, type=int, help="ONNX opset version.")
def export_command(checkpoint: str, out: str, opset: int) -> None:
    """Export CHECKPOINT to the ONNX file OUT, input normalization included."""
    # onnx and torch load only when a model is exported, not for `certify --help`.
    from training.export import export_onnx

    result = export_onnx(Path(checkpoint), Path(out), opset=opset)
    shape = "x".join(str(d) for d in result.input_shape)
    click.echo(
        f"wrote {result.path} ({result.arch}, input N x {shape} pixels in [0, 1]; "
        f"max difference to the checkpoint {result.max_abs_diff:.1e})"
    )
