"""Property-based soundness: over random small networks built from every layer type we
support, random eps and random inputs, no point of the eps ball goes below the margin
lower bounds of any bound method, branch and bound included.

Points come from uniform sampling inside the clipped ball, from its corners, and from
gradient descent on each margin.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from certify.bounds.bab import BabLimits, BabOptions
from certify.bounds.margins import AlphaCrownOptions, BoundMethod, MarginBounder, margin_matrix
from model_zoo.normalization import NormalizedModel
from tests.networks import Residual

LAYERS = ("conv", "grouped_conv", "strided_conv", "residual", "avgpool")


def _build(layers: list[str], in_ch: int, size: int, classes: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    mods: list[nn.Module] = []
    ch = 4
    mods += [nn.Conv2d(in_ch, ch, 3, padding=1), nn.BatchNorm2d(ch), nn.ReLU()]
    for kind in layers:
        if kind == "conv":
            mods += [nn.Conv2d(ch, ch, 3, padding=1), nn.BatchNorm2d(ch), nn.ReLU()]
        elif kind == "grouped_conv":
            mods += [nn.Conv2d(ch, ch, 3, padding=1, groups=2), nn.BatchNorm2d(ch), nn.ReLU()]
        elif kind == "strided_conv" and size >= 4:
            mods += [nn.Conv2d(ch, ch, 3, stride=2, padding=1), nn.ReLU()]
            size = (size + 1) // 2
        elif kind == "residual":
            mods += [Residual(ch), nn.ReLU()]
        elif kind == "avgpool" and size >= 4:
            mods += [nn.AvgPool2d(2)]
            size //= 2
    mods += [nn.Flatten(), nn.Linear(ch * size * size, 8), nn.BatchNorm1d(8), nn.ReLU()]
    mods += [nn.Linear(8, classes)]
    body = nn.Sequential(*mods)
    for m in body.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(-1.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    mean = torch.rand(in_ch).tolist()
    std = (torch.rand(in_ch) * 0.5 + 0.2).tolist()
    return NormalizedModel(body, mean, std).eval()


def _margins(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    return torch.einsum("nck,nk->nc", margin_matrix(labels, k), model(x))


def _lowest_found(model, images, labels, eps, k, generator) -> torch.Tensor:
    lo, hi = (images - eps).clamp(0, 1), (images + eps).clamp(0, 1)
    best = torch.full((len(images), k - 1), float("inf"))
    with torch.no_grad():
        for _ in range(32):
            u = torch.rand(images.shape, generator=generator)
            for x in (lo + u * (hi - lo), torch.where(u > 0.5, hi, lo)):
                best = torch.minimum(best, _margins(model, x, labels, k))
    for j in range(k - 1):
        x = lo + torch.rand(images.shape, generator=generator) * (hi - lo)
        for _ in range(15):
            x.requires_grad_(True)
            (grad,) = torch.autograd.grad(_margins(model, x, labels, k)[:, j].sum(), x)
            x = torch.min(torch.max(x.detach() - 0.2 * eps * grad.sign(), lo), hi)
        with torch.no_grad():
            best[:, j] = torch.minimum(best[:, j], _margins(model, x, labels, k)[:, j])
    return best


# The broadest sweep of the suite (every method on random networks): in the full run.
@pytest.mark.slow
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    layers=st.lists(st.sampled_from(LAYERS), min_size=1, max_size=3),
    in_ch=st.sampled_from([1, 3]),
    size=st.sampled_from([6, 8]),
    classes=st.integers(3, 5),
    eps=st.floats(0.0, 0.2),
    seed=st.integers(0, 2**16),
)
def test_no_point_in_the_ball_beats_the_bounds(layers, in_ch, size, classes, eps, seed) -> None:
    model = _build(layers, in_ch, size, classes, seed)
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand((3, in_ch, size, size), generator=generator)
    labels = torch.randint(0, classes, (3,), generator=generator)
    # alpha-CROWN's bounds are sound after any number of steps: a few keep the test fast.
    alpha = AlphaCrownOptions(iterations=4)
    # Branch and bound's bounds (the smallest over its subdomains) hold at any limit.
    bab = BabOptions(BabLimits(timeout=2, max_domains=16), batch=16)
    shape = (in_ch, size, size)
    bounder = MarginBounder(model, shape, torch.device("cpu"), alpha=alpha, bab=bab)
    found = _lowest_found(model, images, labels, eps, classes, generator)
    for method in BoundMethod:
        lower = bounder.lower_bounds(images, labels, eps, method)
        slack = 1e-4 * (1 + found.abs())
        assert (found >= lower - slack).all(), (method, layers, (lower - found).max().item())
