"""One entry point for every model file certify can evaluate.

``load_model`` picks the reader by file suffix: ``.onnx`` files go through
:mod:`model_zoo.onnx.loading`, everything else is read as a PyTorch checkpoint by
:mod:`model_zoo.checkpoint`. Either way the result takes pixel images in [0, 1]; for an
ONNX file it also records how far the converted network is from onnxruntime.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from certify.core.datasets import Dataset, get_spec, parse_dataset
from certify.core.errors import CheckpointError, UsageError
from model_zoo.checkpoint import load_checkpoint
from model_zoo.loaded import LoadedModel


def load_model(
    path: str | Path,
    *,
    arch: str | None = None,
    dataset: Dataset | str | None = None,
    num_classes: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> LoadedModel:
    """Load a checkpoint or ONNX file as a model over pixel images in [0, 1]."""
    path = Path(path)
    dataset = parse_dataset(dataset) if dataset is not None else None
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise CheckpointError(f"model file {path} {what}: give the path of a .pth or .onnx file")
    if path.suffix.lower() == ".onnx":
        return _load_onnx(path, arch, dataset, num_classes, mean, std)
    if mean is not None:
        raise UsageError(
            "applies to ONNX models only; checkpoints carry or imply their normalization",
            param="mean",
        )
    return load_checkpoint(
        path, arch=arch, dataset=dataset.value if dataset else None, num_classes=num_classes
    )


def _load_onnx(
    path: Path,
    arch: str | None,
    dataset: Dataset | None,
    num_classes: int | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
) -> LoadedModel:
    from model_zoo.onnx.loading import load_onnx

    if arch is not None:
        raise UsageError(
            "applies to checkpoints; an ONNX file carries its architecture", param="arch"
        )
    if dataset is None:
        raise UsageError(
            f"{path.name} is an ONNX model: give its data set so its input is known",
            param="dataset",
        )
    spec = get_spec(dataset)
    loaded = load_onnx(path, mean=mean, std=std, input_shape=spec.input_shape)
    return LoadedModel(
        model=loaded.model.eval(),
        arch="onnx",
        dataset=dataset.value,
        num_classes=num_classes or spec.num_classes,
        input_shape=loaded.input_shape,
        mean=tuple(mean) if mean else (0.0,) * spec.channels,
        std=tuple(std) if std else (1.0,) * spec.channels,
        eps=None,
        source_format="onnx",
        conversion_difference=loaded.conversion_difference,
    )
