"""ResNeXt networks with BatchNorm and a dense head, as in the seed (Shi et al., 2021).

``resnext`` is the CIFAR/MNIST model (3 stages of 1 block, cardinality 2, bottleneck
width 32, 64-channel stem); ``ResNeXt_imagenet64`` the TinyImageNet one (3 stages of 2
blocks, cardinality 2, bottleneck width 8, 16-channel stem). The seed hard-coded the
TinyImageNet head for 3-channel 64x64 input; here the head is sized from the input, so
the same architecture also runs on 32x32 and 28x28 images. Attribute names (``conv1``,
``layer1.0.shortcut``, ``linear1``, ``bn_dense``, ``linear2``) follow the seed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model_zoo.architectures.common import feature_size, residual_forward
from model_zoo.registry import register_model

EXPANSION = 2


class ResNeXtBlock(nn.Module):
    """1x1 conv, grouped 3x3 conv, 1x1 conv (each with BN) plus a shortcut."""

    def __init__(self, in_planes: int, cardinality: int, bottleneck_width: int, stride: int):
        super().__init__()
        group_width = cardinality * bottleneck_width
        out_planes = EXPANSION * group_width
        self.conv1 = nn.Conv2d(in_planes, group_width, 1)
        self.bn1 = nn.BatchNorm2d(group_width)
        self.conv2 = nn.Conv2d(
            group_width, group_width, 3, stride=stride, padding=1, groups=cardinality
        )
        self.bn2 = nn.BatchNorm2d(group_width)
        self.conv3 = nn.Conv2d(group_width, out_planes, 1)
        self.bn3 = nn.BatchNorm2d(out_planes)
        # An empty Sequential is the identity and, like the seed's, adds no state-dict keys.
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, 1, stride=stride), nn.BatchNorm2d(out_planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class ResNeXt(nn.Module):
    """Stem conv, three stages (stride 1, 2, 2; bottleneck width doubling) and a dense head."""

    def __init__(
        self,
        arch: str,
        in_ch: int,
        in_dim: int,
        num_classes: int,
        blocks: tuple[int, int, int],
        cardinality: int,
        bottleneck_width: int,
        stem_width: int,
        dense_dim: int = 512,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, stem_width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(stem_width)
        planes, width = stem_width, bottleneck_width
        stages = []
        for count, stride in zip(blocks, (1, 2, 2), strict=True):
            layers = []
            for i in range(count):
                layers.append(ResNeXtBlock(planes, cardinality, width, stride if i == 0 else 1))
                planes = EXPANSION * cardinality * width
            stages.append(nn.Sequential(*layers))
            width *= EXPANSION
        self.layer1, self.layer2, self.layer3 = stages
        size = feature_size(arch, in_dim, [(3, 1, 1), (3, 2, 1), (3, 2, 1)])
        self.linear1 = nn.Linear(planes * size * size, dense_dim)
        self.bn_dense = nn.BatchNorm1d(dense_dim)
        self.linear2 = nn.Linear(dense_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return residual_forward(
            x,
            (self.conv1, self.bn1),
            (self.layer1, self.layer2, self.layer3),
            (self.linear1, self.bn_dense),
            self.linear2,
        )


@register_model
def resnext(
    in_ch: int,
    in_dim: int,
    num_classes: int,
    cardinality: int = 2,
    bottleneck_width: int = 32,
) -> nn.Module:
    """ResNeXt, 3 stages of 1 block, cardinality 2, bottleneck 32, dense 512 (seed's CIFAR)."""
    return ResNeXt(
        "resnext",
        in_ch,
        in_dim,
        num_classes,
        blocks=(1, 1, 1),
        cardinality=cardinality,
        bottleneck_width=bottleneck_width,
        stem_width=64,
    )


@register_model(name="ResNeXt_imagenet64", aliases=("ResNeXt_bn_imagenet64",))
def resnext_imagenet64(
    in_ch: int,
    in_dim: int,
    num_classes: int,
    cardinality: int = 2,
    bottleneck_width: int = 8,
) -> nn.Module:
    """ResNeXt, 3 stages of 2 blocks, cardinality 2, bottleneck 8, dense 512 (TinyImageNet)."""
    return ResNeXt(
        "ResNeXt_imagenet64",
        in_ch,
        in_dim,
        num_classes,
        blocks=(2, 2, 2),
        cardinality=cardinality,
        bottleneck_width=bottleneck_width,
        stem_width=16,
    )
