"""Plain convolutional networks: the seed's CNN-7 variants and a small CNN for tests.

These are ``nn.Sequential`` stacks so that their state-dict keys are layer indices
(``0.weight`` ... ``19.bias``), exactly as in the checkpoints released with "Fast
Certified Robust Training with Short Warmup" (Shi et al., 2021). Keep the layer order
unchanged: any insertion shifts every later key and breaks loading those files.
"""

from __future__ import annotations

from torch import nn

from model_zoo.architectures.common import feature_size
from model_zoo.registry import register_model


def _conv_bn_relu(in_ch: int, out_ch: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(),
    ]


def cnn_7layer_bn(
    arch: str,
    in_ch: int,
    in_dim: int,
    num_classes: int,
    width: int,
    linear_size: int,
    last_stride: int,
) -> nn.Sequential:
    """Five 3x3 conv+BN+ReLU blocks, then Linear+BN+ReLU and the output Linear.

    Indices: convs at 0, 3, 6, 9, 12 (BN one after each), Flatten at 15, Linear at 16,
    BatchNorm1d at 17, output Linear at 19.
    """
    channels = (width, width, 2 * width, 2 * width, 2 * width)
    strides = (1, 1, 2, 1, last_stride)
    layers: list[nn.Module] = []
    prev = in_ch
    for out_ch, stride in zip(channels, strides, strict=True):
        layers += _conv_bn_relu(prev, out_ch, stride)
        prev = out_ch
    size = feature_size(arch, in_dim, [(3, s, 1) for s in strides])
    layers += [
        nn.Flatten(),
        nn.Linear(prev * size * size, linear_size),
        nn.BatchNorm1d(linear_size),
        nn.ReLU(),
        nn.Linear(linear_size, num_classes),
    ]
    return nn.Sequential(*layers)


@register_model
def cnn(
    in_ch: int, in_dim: int, num_classes: int, width: int = 64, linear_size: int = 512
) -> nn.Module:
    """CNN-7 with BatchNorm (the seed's ``cnn``): 5 convs 64-64-128-128-128, FC 512."""
    return cnn_7layer_bn("cnn", in_ch, in_dim, num_classes, width, linear_size, last_stride=1)


@register_model
def cnn_7layer_bn_imagenet(
    in_ch: int, in_dim: int, num_classes: int, width: int = 64, linear_size: int = 512
) -> nn.Module:
    """CNN-7 with BatchNorm for TinyImageNet: like ``cnn`` but the last conv has stride 2."""
    return cnn_7layer_bn(
        "cnn_7layer_bn_imagenet", in_ch, in_dim, num_classes, width, linear_size, last_stride=2
    )


@register_model
def cnn_4layer(
    in_ch: int, in_dim: int, num_classes: int, width: int = 16, linear_size: int = 100
) -> nn.Module:
    """Small CNN for quick runs: 2 convs (4x4, stride 2) and 2 linears, BN after each hidden."""
    size = feature_size("cnn_4layer", in_dim, [(4, 2, 1), (4, 2, 1)])
    return nn.Sequential(
        nn.Conv2d(in_ch, width, 4, stride=2, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, 2 * width, 4, stride=2, padding=1),
        nn.BatchNorm2d(2 * width),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(2 * width * size * size, linear_size),
        nn.BatchNorm1d(linear_size),
        nn.ReLU(),
        nn.Linear(linear_size, num_classes),
    )
