"""Per-channel input normalization as a layer, so that bounds are taken in pixel space.

Models evaluated by certify take images in [0, 1]; whatever normalization a network
was trained with is applied by a :class:`Normalize` layer inside the model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from certify.core.errors import UsageError


def _channels(values: Sequence[float], name: str) -> torch.Tensor:
    """``values`` as a 1 x C x 1 x 1 float32 tensor of finite numbers; :class:`UsageError`
    otherwise (finite in float32, where a tiny std would become 0)."""
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        raise UsageError(f"give one number per channel, got {values!r:.60}", param=name) from None
    tensor = torch.tensor(numbers, dtype=torch.float32)
    if not numbers or not bool(torch.isfinite(tensor).all()):
        raise UsageError(f"give finite numbers, one per channel, got {numbers!r:.60}", param=name)
    return tensor.view(1, -1, 1, 1)


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, with mean and std stored as buffers."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        means, stds = _channels(mean, "mean"), _channels(std, "std")
        if means.numel() != stds.numel():
            raise UsageError(
                f"mean and std need the same number of channels, got {means.numel()} and "
                f"{stds.numel()}",
                param="std",
            )
        if not bool((stds > 0).all()):
            raise UsageError(
                f"every std must be positive, got {stds.flatten().tolist()}", param="std"
            )
        self.register_buffer("mean", means)
        self.register_buffer("std", stds)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def is_identity(self) -> bool:
        return bool(torch.all(self.mean == 0) and torch.all(self.std == 1))

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


class NormalizedModel(nn.Module):
    """A network preceded by its input normalization; takes pixels in [0, 1]."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(x))
