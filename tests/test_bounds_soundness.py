"""Soundness of the margin bounds: no point of the eps ball goes below them.

Points are drawn three ways: uniformly inside the clipped ball, at its corners, and by
gradient descent on each margin (the points an attacker would find).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from certify.bounds.bab import BabLimits, BabOptions
from certify.bounds.margins import BoundMethod, MarginBounder, margin_matrix
from certify.core.errors import ModelError
from model_zoo.normalization import NormalizedModel
from tests.networks import Residual

# alpha-CROWN's optimization and branch and bound take seconds on these models: in the
# slow set.
_SLOW = (BoundMethod.ALPHA_CROWN, BoundMethod.BAB)
METHODS = [pytest.param(m, marks=pytest.mark.slow) if m in _SLOW else m for m in BoundMethod]
# Branch and bound with limits small enough for a test; its bound is sound at any limit.
_BAB = BabOptions(BabLimits(timeout=20, max_domains=400))

TOL = 1e-5


def _small_net(channels: int = 3) -> nn.Module:
    body = nn.Sequential(
        nn.Conv2d(channels, 8, 3, stride=2, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        Residual(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 32),
        nn.BatchNorm1d(32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )
    # Non-trivial BN statistics, then eval mode as in certification.
    body.train()
    with torch.no_grad():
        body(
            NormalizedModel(nn.Identity(), [0.5] * channels, [0.25] * channels)(
                torch.rand(64, channels, 16, 16)
            )
        )
    return NormalizedModel(body, [0.5] * channels, [0.25] * channels).eval()


def _margins(model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    spec = margin_matrix(labels, 10)
    return torch.einsum("nck,nk->nc", spec, model(x))


def _attack_each_margin(model, images, labels, eps, steps=30) -> torch.Tensor:
    """Smallest margin found by signed gradient descent on each margin separately."""
    lower, upper = (images - eps).clamp(0, 1), (images + eps).clamp(0, 1)
    best = _margins(model, images, labels)
    for j in range(best.shape[1]):
        x = images.clone()
        for _ in range(steps):
            x.requires_grad_(True)
            (grad,) = torch.autograd.grad(_margins(model, x, labels)[:, j].sum(), x)
            x = torch.min(torch.max(x.detach() - 0.25 * eps * grad.sign(), lower), upper)
        with torch.no_grad():
            best[:, j] = torch.minimum(best[:, j], _margins(model, x, labels)[:, j])
    return best


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(1)
    model = _small_net()
    images = torch.rand(4, 3, 16, 16)
    labels = model(images).argmax(1)
    return model, images, labels, MarginBounder(model, (3, 16, 16), torch.device("cpu"), bab=_BAB)


_EPS = 0.02


@pytest.fixture(scope="module")
def lower_at_eps(setup):
    """Each method's lower bounds on the setup's images at ``_EPS``, computed once for the
    tests that read them (branch and bound's take seconds)."""
    _, images, labels, bounder = setup
    found: dict[BoundMethod, torch.Tensor] = {}

    def lower(method: BoundMethod) -> torch.Tensor:
        if method not in found:
            found[method] = bounder.lower_bounds(images, labels, _EPS, method)
        return found[method]

    return lower


def _assert_bounds_hold(model, images, labels, eps: float, lower: torch.Tensor) -> None:
    """No random point, corner or attacked point of the ball has a margin below lower."""
    lo, hi = (images - eps).clamp(0, 1), (images + eps).clamp(0, 1)
    with torch.no_grad():
        for _ in range(50):
            u = torch.rand_like(images)
            for x in (lo + u * (hi - lo), torch.where(u > 0.5, hi, lo)):
                assert (_margins(model, x, labels) >= lower - TOL).all()
    attacked = _attack_each_margin(model, images, labels, eps)
    assert (attacked >= lower - TOL).all()


@pytest.mark.parametrize("method", METHODS)
def test_bounds_hold_on_random_corner_and_attacked_points(
    setup, lower_at_eps, method: BoundMethod
) -> None:
    model, images, labels, _ = setup
    _assert_bounds_hold(model, images, labels, _EPS, lower_at_eps(method))


@pytest.mark.parametrize("method", METHODS)
def test_eps_zero_bounds_equal_the_margins(setup, method: BoundMethod) -> None:
    model, images, labels, bounder = setup
    lower = bounder.lower_bounds(images, labels, 0.0, method)
    with torch.no_grad():
        exact = _margins(model, images, labels)
    torch.testing.assert_close(lower, exact, rtol=1e-4, atol=1e-4)


def test_crown_is_at_least_as_tight_as_ibp(setup) -> None:
    _, images, labels, bounder = setup
    ibp = bounder.lower_bounds(images, labels, 0.01, BoundMethod.IBP)
    crown = bounder.lower_bounds(images, labels, 0.01, BoundMethod.CROWN)
    assert (crown >= ibp - TOL).all()
    assert (crown > ibp + TOL).any()


def test_margin_matrix_rows() -> None:
    spec = margin_matrix(torch.tensor([2, 0]), 4)
    assert spec.shape == (2, 3, 4)
    logits = torch.tensor([[1.0, 2.0, 5.0, 3.0], [4.0, 1.0, 0.0, 2.0]])
    margins = torch.einsum("nck,nk->nc", spec, logits)
    torch.testing.assert_close(margins, torch.tensor([[4.0, 3.0, 2.0], [3.0, 4.0, 2.0]]))


def test_dilated_convolutions_are_refused() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3, dilation=2), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    with pytest.raises(ModelError, match="dilated convolutions"):
        MarginBounder(model, (1, 8, 8), torch.device("cpu"))


def test_crown_bounds_of_an_image_do_not_depend_on_its_batch() -> None:
    """auto_LiRPA's default chose IBP or CROWN intermediate bounds per batch; an image's
    CROWN bound then changed with --crown-batch-size (image 917 of the bundled data: a
    margin bound of 3.28 alone, 2.55 in its batch of 32)."""
    from certify.data import load_split
    from certify.pipeline.embedded import EMBEDDED_DIR, EMBEDDED_MODEL
    from model_zoo.checkpoint import load_checkpoint

    model = load_checkpoint(EMBEDDED_MODEL).model
    data = load_split("mnist", EMBEDDED_DIR / "data", "test", 896, 32)
    bounder = MarginBounder(model, (1, 28, 28), torch.device("cpu"))
    batch = bounder.lower_bounds(data.images, data.labels, 0.4, BoundMethod.CROWN)
    for i in (0, 21, 31):  # 21 is image 917
        alone = bounder.lower_bounds(
            data.images[i : i + 1], data.labels[i : i + 1], 0.4, BoundMethod.CROWN
        )
        torch.testing.assert_close(alone[0], batch[i], rtol=0.0, atol=1e-4)


def _s_shaped_net(kind: str, activation: type[nn.Module]) -> nn.Module:
    if kind == "mlp":
        layers = [nn.Flatten(), nn.Linear(3 * 8 * 8, 32), activation(), nn.Linear(32, 32)]
        layers += [activation(), nn.Linear(32, 10)]
    else:
        layers = [nn.Conv2d(3, 8, 3, stride=2, padding=1), activation()]
        layers += [nn.Conv2d(8, 8, 3, stride=2, padding=1), activation()]
        layers += [nn.Flatten(), nn.Linear(8 * 2 * 2, 10)]
    body = nn.Sequential(*layers)
    # Large weights spread the pre-activation intervals over both sides of the
    # inflection point, across it and far from it, where the relaxation changes.
    with torch.no_grad():
        for parameter in body.parameters():
            parameter.mul_(4.0)
    return NormalizedModel(body, [0.5] * 3, [0.25] * 3).eval()


@pytest.fixture(scope="module")
def s_shaped_setups() -> dict:
    return {}


def _s_shaped_params() -> list:
    params = []
    for activation in (nn.Sigmoid, nn.Tanh):
        for kind in ("mlp", "cnn"):
            # Branch and bound splits ReLUs only (test_bab_refuses_other_activations).
            for method in (m for m in BoundMethod if m is not BoundMethod.BAB):
                marks = [pytest.mark.slow] if method is BoundMethod.ALPHA_CROWN else []
                name = f"{activation.__name__.lower()}-{kind}-{method.value}"
                params.append(pytest.param(activation, kind, method, marks=marks, id=name))
    return params


@pytest.mark.parametrize(("activation", "kind", "method"), _s_shaped_params())
def test_sigmoid_and_tanh_bounds_hold(s_shaped_setups, activation, kind, method) -> None:
    key = (activation, kind)
    if key not in s_shaped_setups:
        torch.manual_seed(2)
        model = _s_shaped_net(kind, activation)
        images = torch.rand(4, 3, 8, 8)
        labels = model(images).argmax(1)
        bounder = MarginBounder(model, (3, 8, 8), torch.device("cpu"))
        s_shaped_setups[key] = model, images, labels, bounder
    model, images, labels, bounder = s_shaped_setups[key]
    eps = 0.05
    lower = bounder.lower_bounds(images, labels, eps, method)
    _assert_bounds_hold(model, images, labels, eps, lower)


def test_bab_refuses_other_activations() -> None:
    torch.manual_seed(2)
    model = _s_shaped_net("mlp", nn.Sigmoid)
    images = torch.rand(1, 3, 8, 8)
    bounder = MarginBounder(model, (3, 8, 8), torch.device("cpu"))
    with pytest.raises(ModelError, match="bab splits ReLUs only; this model also has BoundSigmoid"):
        bounder.lower_bounds(images, model(images).argmax(1), 0.01, BoundMethod.BAB)


@pytest.mark.slow
def test_bab_is_at_least_as_tight_as_alpha_crown(lower_at_eps) -> None:
    alpha = lower_at_eps(BoundMethod.ALPHA_CROWN)
    bab = lower_at_eps(BoundMethod.BAB)
    assert (bab.min(dim=1).values >= alpha.min(dim=1).values - TOL).all()
