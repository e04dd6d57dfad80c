"""Export of a trained model to ONNX, with its input normalization inside the graph.

The exported network takes pixels in [0, 1] (batch x C x H x W, any batch size) and
returns logits, so that other tools need no knowledge of the data set's mean and std.
The file is checked by loading it back through certify's own ONNX loader and
comparing its logits with the checkpoint's on random images; it is written to a
temporary file first and moved into place only when the check passes.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from certify.core.atomic_files import atomic_path
from certify.core.datasets import Dataset
from certify.core.errors import ModelError, UsageError, first_line
from model_zoo.checkpoint import load_checkpoint
from model_zoo.normalization import NormalizedModel

# The oldest opset the exporter converts to; a model it cannot convert is refused after
# the export (see _export).
MIN_OPSET = 7


@dataclass(frozen=True)
class ExportResult:
    path: Path
    arch: str
    dataset: Dataset | None
    input_shape: tuple[int, int, int]
    max_abs_diff: float


def export_onnx(
    checkpoint: Path, out_path: Path, opset: int = 18, tol: float = 1e-4
) -> ExportResult:
    """Write ``checkpoint`` as an ONNX file at ``out_path`` and verify it."""
    out_path = Path(out_path)
    if out_path.suffix.lower() != ".onnx":
        raise UsageError(f"{out_path}: the exported file needs the .onnx suffix", param="out")
    if not out_path.parent.is_dir():
        raise UsageError(
            f"cannot write {out_path}: folder {out_path.parent} does not exist", param="out"
        )
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise UsageError(
            f"{opset}: give an opset from {MIN_OPSET} (the exporter's oldest) to {newest}",
            param="opset",
        )
    loaded = load_checkpoint(checkpoint)
    model = loaded.model
    if not isinstance(model, NormalizedModel):
        # Identity normalization is left out on loading; put it back so the file says so.
        model = NormalizedModel(model, loaded.mean, loaded.std)
    model = model.eval().cpu()
    with atomic_path(out_path) as tmp:
        _export(model, loaded.input_shape, tmp, opset)
        diff = _check(model, tmp, loaded.input_shape)
        if diff > tol:
            raise ModelError(
                f"the exported ONNX model differs from the checkpoint by {diff:.2e} "
                f"(more than {tol:g}); the architecture may use an unsupported operation"
            )
    return ExportResult(out_path, loaded.arch, loaded.dataset, loaded.input_shape, diff)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter prints progress, warns and logs about its own internals."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _export(model: torch.nn.Module, shape: tuple[int, int, int], path: Path, opset: int) -> None:
    dummy = torch.rand(2, *shape)
    batch = torch.export.Dim("batch")
    with _quiet():
        try:
            torch.onnx.export(
                model,
                (dummy,),
                str(path),
                dynamo=True,
                external_data=False,
                input_names=["input"],
                output_names=["logits"],
                dynamic_shapes=({0: batch},),
                opset_version=opset,
            )
        except Exception as exc:  # the exporter raises many types
            raise ModelError(f"ONNX export failed: {first_line(exc)}") from exc
    # The exporter writes opset 18 and converts down; where it cannot, it says so in a log
    # and keeps 18.
    written = next(
        (o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx")),
        None,
    )
    if written != opset:
        raise UsageError(
            f"this model cannot be exported at opset {opset} (the exporter kept opset "
            f"{written}): give another, e.g. {written}",
            param="opset",
        )


def _check(model: torch.nn.Module, path: Path, shape: tuple[int, int, int]) -> float:
    from model_zoo.onnx.loading import load_onnx

    back = load_onnx(path, input_shape=shape)
    images = torch.rand(8, *shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return float((back.model(images) - model(images)).abs().max())
