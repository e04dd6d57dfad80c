"""Building blocks for the small networks that the soundness tests draw."""

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
