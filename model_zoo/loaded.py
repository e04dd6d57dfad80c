"""What loading a model file gives: the network and what is known about it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from certify.core.datasets import Dataset


@dataclass
class LoadedModel:
    """A network over pixel images in [0, 1], ready for evaluation, with what its file says."""

    model: nn.Module
    arch: str
    dataset: Dataset | None
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    eps: float | None
    source_format: str
    conversion_difference: float | None = None
    """For an ONNX file, the largest difference of a logit between the converted network
    and onnxruntime on the probe images; None for checkpoints (nothing was converted)."""
    path: Path | None = None
    """The file it was loaded from (None for a module built in memory)."""
