"""Branch and bound against ground truth: on small random ReLU networks, dense and
convolutional, ``bab`` must decide every instance (generous limits) and agree with an
exact MILP verifier written in the test (tests/exact_verifier.py); a counterexample it
reports must be inside the ball and misclassified in float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from certify.bounds.bab import BabLimits, BabVerdict, Branching, branch_and_bound
from certify.bounds.bab.beta_crown import SplitBounder
from certify.bounds.lirpa import bounded_module
from certify.bounds.margins import margin_matrix
from certify.evaluation.counterexamples import CounterexampleFinder, double_precision_twin
from tests.exact_verifier import affine_layers, exact_min_margin

# Instances whose exact margin is this close to 0 are left out: float32 bounds cannot
# decide them either way, and neither answer would be wrong.
_BORDER = 1e-4


def _dense(seed: int, inputs: int, width: int, depth: int, classes: int = 3) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    size = inputs
    for _ in range(depth):
        layers += [nn.Linear(size, width), nn.ReLU()]
        size = width
    layers.append(nn.Linear(size, classes))
    return _spread(nn.Sequential(*layers))


def _conv(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return _spread(nn.Sequential(
        nn.Conv2d(1, 2, 3, stride=1), nn.ReLU(), nn.Flatten(),
        nn.Linear(2 * 3 * 3, 12), nn.ReLU(), nn.Linear(12, 3),
    ))  # fmt: skip


def _spread(model: nn.Sequential) -> nn.Sequential:
    """Weights large enough, and the first layer centred on the box, for the labels to
    change inside [0, 1]: PyTorch's initialization leaves most small nets constant there."""
    first = True
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, nn.Linear | nn.Conv2d):
                fan_in = layer.weight[0].numel()
                layer.weight.normal_(0.0, 2.0 / fan_in**0.5)
                layer.bias.normal_(0.0, 0.1)
                if first:
                    layer.bias -= 0.5 * layer.weight.flatten(1).sum(1)
                first = False
    return model


def _decide(model: nn.Module, image: torch.Tensor, eps: float, branching: Branching):
    shape = tuple(image.shape)
    label = int(model(image[None]).argmax())
    bounder = SplitBounder(bounded_module(model, shape, torch.device("cpu")))
    finder = CounterexampleFinder(
        model, double_precision_twin(model, shape), image[None], label, eps, index=0
    )
    spec = margin_matrix(torch.tensor([label]), 3)
    outcome = branch_and_bound(
        bounder, image[None], eps, spec, finder, branching=branching,
        limits=BabLimits(timeout=120, max_domains=200_000),
    )  # fmt: skip
    return label, outcome


def _near_the_boundary(model: nn.Module, shape: tuple[int, ...], generator: torch.Generator):
    """An image a little way from a point where the label changes, and an eps at which
    it is surely attacked (the distance to a misclassified point past that one)."""
    with torch.no_grad():
        points = torch.rand(256, *shape, generator=generator)
        labels = model(points).argmax(1)
        a = points[0]
        b = points[(labels != labels[0]).nonzero()[0, 0]]
        lo, hi = 0.0, 1.0  # along a + t (b - a): the label of a at lo, another at hi
        for _ in range(40):
            mid = (lo + hi) / 2
            same = int(model((a + mid * (b - a))[None]).argmax()) == int(labels[0])
            lo, hi = (mid, hi) if same else (lo, mid)
        image = a + 0.7 * lo * (b - a)
        return image, float((a + hi * (b - a) - image).abs().max())


def _exact_bracket(model: nn.Module, image: torch.Tensor, label: int, hi: float):
    """Radii just inside and just outside the exact robust radius (8% apart), with the
    exact margins there: (lo, margin > 0, hi, margin <= 0). ``hi`` must be attacked."""
    lo, m_lo = 0.0, exact_min_margin(model, image, label, 0.0)
    m_hi = None
    while hi - lo > 0.08 * hi:
        mid = (lo + hi) / 2
        m = exact_min_margin(model, image, label, mid)
        if m > 0:
            lo, m_lo = mid, m
        else:
            hi, m_hi = mid, m
    if m_hi is None:
        m_hi = exact_min_margin(model, image, label, hi)
    return lo, m_lo, hi, m_hi


def _instances():
    """Every network with FSB (the default); the small ones with BaBSR too. The larger
    ones take tens of seconds: in the slow set."""
    cases = []
    for seed in range(6):
        case = ("dense", seed, 2 + seed % 4, 8 + 4 * seed, 1 + seed % 3)
        slow = [pytest.mark.slow] if seed >= 2 else []
        cases.append(pytest.param(*case, Branching.FSB, marks=slow))
        if not slow:
            cases.append(pytest.param(*case, Branching.BABSR))
    for seed in range(3):
        slow = [pytest.mark.slow] if seed >= 1 else []
        cases.append(pytest.param("conv", seed, 0, 0, 0, Branching.FSB, marks=slow))
        if not slow:
            cases.append(pytest.param("conv", seed, 0, 0, 0, Branching.BABSR))
    return cases


@pytest.mark.parametrize(("kind", "seed", "inputs", "width", "depth", "branching"), _instances())
def test_bab_agrees_with_the_exact_verifier(kind, seed, inputs, width, depth, branching):
    model = _dense(seed, inputs, width, depth) if kind == "dense" else _conv(seed)
    model.eval()
    shape = (inputs,) if kind == "dense" else (1, 5, 5)
    generator = torch.Generator().manual_seed(100 + seed)
    decided = {BabVerdict.VERIFIED: 0, BabVerdict.ATTACKED: 0}
    for trial in range(2):
        image, radius_hi = _near_the_boundary(model, shape, generator)
        label = int(model(image[None]).argmax())
        lo, m_lo, hi, m_hi = _exact_bracket(model, image, label, radius_hi)
        # Just inside and just outside the exact robust radius: the hard instances. The
        # margin cannot grow with eps, so at most m_hi past hi and at least m_lo before lo.
        for eps, known in ((0.8 * lo, m_lo), (1.2 * hi, m_hi)):
            _, outcome = _decide(model, image, eps, branching)
            truth = known if abs(known) >= _BORDER else exact_min_margin(model, image, label, eps)
            if abs(truth) < _BORDER:
                continue
            expected = BabVerdict.VERIFIED if truth > 0 else BabVerdict.ATTACKED
            assert outcome.verdict == expected, (trial, eps, truth, outcome)
            decided[expected] += 1
            if expected is BabVerdict.ATTACKED:
                point = outcome.counterexample.double()
                assert (point - image.double()).abs().max() <= eps
                assert point.min() >= 0 and point.max() <= 1
                logits = model.double()(point)
                model.float()
                assert int(logits.argmax()) != label
    # Both answers occur, so neither direction is tested vacuously.
    assert decided[BabVerdict.VERIFIED] and decided[BabVerdict.ATTACKED], decided


@pytest.mark.parametrize("kind", ["dense", "conv"])
def test_the_exact_margin_lies_between_interval_bounds_and_sampled_points(kind) -> None:
    """The ground truth itself: never above the margin of a point of the ball, never below
    interval arithmetic's bound (both taken here in float64)."""
    model = (_dense(7, 3, 12, 2) if kind == "dense" else _conv(7)).double().eval()
    shape = (3,) if kind == "dense" else (1, 5, 5)
    generator = torch.Generator().manual_seed(7)
    image = torch.rand(shape, generator=generator, dtype=torch.float64)
    label = int(model(image[None]).argmax())
    for eps in (0.02, 0.1, 0.3):
        exact = exact_min_margin(model, image, label, eps)
        lo, hi = (image - eps).clamp(0, 1), (image + eps).clamp(0, 1)
        points = lo + torch.rand(20_000, *shape, generator=generator, dtype=torch.float64) * (
            hi - lo
        )
        with torch.no_grad():
            logits = model(points)
        others = torch.cat([logits[:, :label], logits[:, label + 1 :]], dim=1)
        sampled = float((logits[:, label : label + 1] - others).min())
        assert exact <= sampled + 1e-9
        layers = affine_layers(model, shape)
        box_lo, box_hi = lo.flatten().numpy(), hi.flatten().numpy()
        for w, b in layers[:-1]:
            mid, rad = (box_lo + box_hi) / 2, (box_hi - box_lo) / 2
            centre, spread = w @ mid + b, np.abs(w) @ rad
            box_lo, box_hi = np.maximum(centre - spread, 0), np.maximum(centre + spread, 0)
        w, b = layers[-1]
        diff_w, diff_b = w[label] - np.delete(w, label, 0), b[label] - np.delete(b, label)
        mid, rad = (box_lo + box_hi) / 2, (box_hi - box_lo) / 2
        interval = float((diff_w @ mid + diff_b - np.abs(diff_w) @ rad).min())
        assert interval - 1e-9 <= exact
        if eps == 0.1:
            assert interval < exact - 1e-3  # the bounds differ: neither check is vacuous
