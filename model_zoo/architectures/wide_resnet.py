"""Wide ResNets with BatchNorm and a dense head, as in the seed (Shi et al., 2021).

``wide_resnet_8`` is the CIFAR/MNIST model (widen factor 8) and
``wide_resnet_imagenet64`` the TinyImageNet one (widen factor 10); both have three
stages of one basic block each and, instead of global pooling, a Linear+BN layer of
512 units on the flattened features. Attribute names (``conv1``, ``layer1.0.downsample``,
``dense_bn``, ``fc`` ...) are those of the seed's checkpoints and must not change.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model_zoo.architectures.common import feature_size, residual_forward
from model_zoo.registry import register_model


class BasicBlock(nn.Module):
    """Two 3x3 conv+BN layers with a residual connection (1x1 conv+BN when shapes change)."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        # Out-of-place add: auto_LiRPA traces the graph and in-place ops confuse it.
        return F.relu(out + shortcut)


class WideResNet(nn.Module):
    """Stem conv, three stages (stride 1, 2, 2) and a Linear+BN+ReLU head before ``fc``."""

    def __init__(
        self,
        arch: str,
        in_ch: int,
        in_dim: int,
        num_classes: int,
        blocks: tuple[int, int, int] = (1, 1, 1),
        widen_factor: int = 8,
        base_width: int = 16,
        dense_dim: int = 512,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, base_width, 3, stride=1, padding=1)
        self.bn1 = nn.BatchNorm2d(base_width)
        planes = base_width
        stages = []
        for i, (count, stride) in enumerate(zip(blocks, (1, 2, 2), strict=True)):
            out_planes = base_width * (2**i) * widen_factor
            stages.append(self._stage(planes, out_planes, count, stride))
            planes = out_planes
        self.layer1, self.layer2, self.layer3 = stages
        size = feature_size(arch, in_dim, [(3, 1, 1), (3, 2, 1), (3, 2, 1)])
        self.dense = nn.Linear(planes * size * size, dense_dim)
        self.dense_bn = nn.BatchNorm1d(dense_dim)
        self.fc = nn.Linear(dense_dim, num_classes)
        self._init_weights()

    @staticmethod
    def _stage(in_planes: int, planes: int, count: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes, 1) for _ in range(1, count)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        # The seed's initialization for its CIFAR Wide ResNet; certified training may
        # replace it (IBP initialization), plain training keeps it.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return residual_forward(
            x,
            (self.conv1, self.bn1),
            (self.layer1, self.layer2, self.layer3),
            (self.dense, self.dense_bn),
            self.fc,
        )


@register_model
def wide_resnet_8(
    in_ch: int, in_dim: int, num_classes: int, widen_factor: int = 8, dense_dim: int = 512
) -> nn.Module:
    """Wide ResNet, widen factor 8, 3 stages of 1 block, dense head of 512 (seed's CIFAR)."""
    return WideResNet(
        "wide_resnet_8", in_ch, in_dim, num_classes, widen_factor=widen_factor, dense_dim=dense_dim
    )


@register_model(name="wide_resnet_imagenet64", aliases=("wide_resnet_bn_imagenet64",))
def wide_resnet_imagenet64(
    in_ch: int, in_dim: int, num_classes: int, widen_factor: int = 10, dense_dim: int = 512
) -> nn.Module:
    """Wide ResNet, widen factor 10, 3 stages of 1 block, dense head of 512 (TinyImageNet)."""
    return WideResNet(
        "wide_resnet_imagenet64",
        in_ch,
        in_dim,
        num_classes,
        widen_factor=widen_factor,
        dense_dim=dense_dim,
    )
