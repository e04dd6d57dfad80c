"""One entry point for every model file certify can evaluate.

``load_model`` picks the reader by file suffix: ``.onnx`` files go through
:mod:`model_zoo.onnx.loading`, everything else is read as a PyTorch checkpoint by
:mod:`model_zoo.checkpoint`. Either way the result takes pixel images in [0, 1]; for an
ONNX file it also records how far the converted network is from onnxruntime.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from certify.core.datasets import Dataset, get_spec, parse_dataset
from certify.core.errors import CheckpointError, UsageError
from model_zoo.checkpoint import load_checkpoint
from model_zoo.checkpoint.loading import load_defined
from model_zoo.definition import ModelDefinition
from model_zoo.loaded import LoadedModel
from model_zoo.normalization import NormalizedModel


def load_model(
    path: str | Path,
    *,
    arch: str | None = None,
    dataset: Dataset | str | None = None,
    num_classes: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    probes: torch.Tensor | None = None,
    definition: ModelDefinition | None = None,
    input_shape: tuple[int, ...] | None = None,
) -> LoadedModel:
    """Load a checkpoint or ONNX file as a model over pixel images in [0, 1].

    ``arch`` and ``num_classes`` are for checkpoints that do not say them, ``mean`` and
    ``std`` for ONNX models (and defined ones) that normalize outside. An ONNX model is
    checked against onnxruntime on fixed probe images and on ``probes`` (images of the
    data set at hand); ``input_shape`` (C, H, W) gives an ONNX model's input where no
    built-in ``dataset`` does (a data set file of the user's). With ``definition`` the
    checkpoint's weights go into the network that the user's code builds
    (:mod:`model_zoo.definition`: this runs that code)."""
    if definition is not None:
        loaded = _load_defined(path, definition, arch, dataset, num_classes, mean, std)
    else:
        loaded = _load(path, arch, dataset, num_classes, mean, std, probes, input_shape)
    loaded.path = Path(path)
    return loaded


@dataclass(frozen=True)
class ModelFile:
    """A model file and what it may not say itself, loaded when the data set is known
    (``certify.evaluate`` loads it with the data set's images as ONNX probes)."""

    path: Path
    arch: str | None = None
    num_classes: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    definition: ModelDefinition | None = None

    def __post_init__(self) -> None:
        mean, std = self.mean, self.std
        if (mean is None) != (std is None):
            raise UsageError("`mean` and `std` go together: give both or neither", param="std")
        if mean is not None and std is not None:
            if len(mean) != len(std):
                raise UsageError(
                    f"{len(mean)} means but {len(std)} stds: give one of each per channel",
                    param="std",
                )
            object.__setattr__(self, "mean", tuple(float(v) for v in mean))
            object.__setattr__(self, "std", tuple(float(v) for v in std))
        object.__setattr__(self, "path", Path(self.path))

    def load(
        self,
        dataset: Dataset | None = None,
        probes: torch.Tensor | None = None,
        input_shape: tuple[int, ...] | None = None,
    ) -> LoadedModel:
        return load_model(
            self.path, arch=self.arch, dataset=dataset, num_classes=self.num_classes,
            mean=self.mean, std=self.std, probes=probes, definition=self.definition,
            input_shape=input_shape,
        )  # fmt: skip


def _load_defined(
    path: str | Path,
    definition: ModelDefinition,
    arch: str | None,
    dataset: Dataset | str | None,
    num_classes: int | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
) -> LoadedModel:
    if Path(path).suffix.lower() == ".onnx":
        raise UsageError(
            "applies to checkpoints; an ONNX file carries its network", param="model_def"
        )
    for name, value in (("arch", arch), ("num_classes", num_classes)):
        if value is not None:
            raise UsageError("the model definition gives the network: leave it out", param=name)
    loaded = load_defined(path, definition, parse_dataset(dataset) if dataset else None)
    if mean is not None and std is not None:
        if isinstance(loaded.model, NormalizedModel):
            raise UsageError(
                "the checkpoint stores its normalization: leave out mean and std", param="mean"
            )
        loaded.model = NormalizedModel(loaded.model, mean, std).eval()
        loaded.mean, loaded.std = tuple(mean), tuple(std)
    return loaded


def _load(
    path: str | Path,
    arch: str | None,
    dataset: Dataset | str | None,
    num_classes: int | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    probes: torch.Tensor | None,
    input_shape: tuple[int, ...] | None,
) -> LoadedModel:
    path = Path(path)
    dataset = parse_dataset(dataset) if dataset is not None else None
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise CheckpointError(f"model file {path} {what}: give the path of a .pth or .onnx file")
    if path.suffix.lower() == ".onnx":
        return _load_onnx(path, arch, dataset, num_classes, mean, std, probes, input_shape)
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
    probes: torch.Tensor | None,
    input_shape: tuple[int, ...] | None,
) -> LoadedModel:
    from model_zoo.onnx.loading import load_onnx

    if arch is not None:
        raise UsageError(
            "applies to checkpoints; an ONNX file carries its architecture", param="arch"
        )
    if dataset is None and input_shape is None:
        raise UsageError(
            f"{path.name} is an ONNX model: give its data set so its input is known",
            param="dataset",
        )
    spec = get_spec(dataset) if dataset is not None else None
    shape = spec.input_shape if spec is not None else tuple(int(d) for d in input_shape)
    loaded = load_onnx(path, mean=mean, std=std, input_shape=shape, probes=probes)
    channels = shape[0]
    return LoadedModel(
        model=loaded.model.eval(),
        arch="onnx",
        dataset=dataset,
        num_classes=num_classes or (spec.num_classes if spec else loaded.num_classes or 0),
        input_shape=loaded.input_shape,
        mean=tuple(mean) if mean else (0.0,) * channels,
        std=tuple(std) if std else (1.0,) * channels,
        eps=None,
        source_format="onnx",
        conversion_difference=loaded.conversion_difference,
    )
