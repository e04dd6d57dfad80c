"""Small helpers shared by the architecture modules: output sizes of convolutions and
the forward pass that both residual networks share.

Fully connected heads need the spatial size that reaches them; computing it from the
layer settings (rather than assuming the input is 32x32 or 64x64) is what lets every
architecture accept MNIST, CIFAR and TinyImageNet geometries.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from certify.core.errors import ModelError


def conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Spatial size after a convolution or pooling layer with these settings."""
    return (size + 2 * padding - kernel) // stride + 1


def feature_size(arch: str, in_dim: int, convs: Iterable[tuple[int, int, int]]) -> int:
    """Spatial size after a stack of layers given as ``(kernel, stride, padding)``.

    Raises :class:`ModelError` when the input is too small for the stack.
    """
    size = in_dim
    for kernel, stride, padding in convs:
        size = conv_out(size, kernel, stride, padding)
        if size < 1:
            raise ModelError(f"input size {in_dim} is too small for architecture {arch!r}")
    return size


def residual_forward(
    x: torch.Tensor,
    stem: tuple[nn.Module, nn.Module],
    stages: Iterable[nn.Module],
    dense: tuple[nn.Module, nn.Module],
    head: nn.Module,
) -> torch.Tensor:
    """Stem (conv, BN, ReLU), the residual stages, then a dense layer with BN and ReLU
    and the classifier: the seed's Wide ResNet and ResNeXt, whose parameter names
    differ."""
    x = F.relu(stem[1](stem[0](x)))
    for stage in stages:
        x = stage(x)
    # Flatten, not view(size(0), -1): auto_LiRPA traces size(0) as a constant batch.
    x = torch.flatten(x, 1)
    return head(F.relu(dense[1](dense[0](x))))
