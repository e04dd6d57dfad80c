"""Building blocks for the small networks that the tests draw."""

import torch
from torch import nn


class Residual(nn.Module):
    """``x + BN(conv(x))``: a residual addition with a convolution and BatchNorm."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bn(self.conv(x))


# Small widths per registered architecture, for tests that only need the graph structure.
SMALL_OPTIONS = {
    "cnn": {"width": 4, "linear_size": 8},
    "cnn_7layer_bn_imagenet": {"width": 4, "linear_size": 8},
    "cnn_4layer": {"width": 4, "linear_size": 8},
    "wide_resnet_8": {"widen_factor": 1, "dense_dim": 8},
    "wide_resnet_imagenet64": {"widen_factor": 1, "dense_dim": 8},
    "resnext": {"bottleneck_width": 2},
    "ResNeXt_imagenet64": {"bottleneck_width": 2},
}
