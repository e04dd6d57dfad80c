"""eps_box: the eps-ball clipped to the pixel box [0, 1], bit for bit the plain clip."""

import pytest
import torch

from certify.core.eps_box import eps_box


def test_clips_at_the_borders_of_the_pixel_box() -> None:
    # Dyadic values: every sum is exact, so the hand computation is too.
    x = torch.tensor([0.0, 0.0625, 0.5, 0.9375, 1.0])
    lower, upper = eps_box(x, 0.125)
    assert torch.equal(lower, torch.tensor([0.0, 0.0, 0.375, 0.8125, 0.875]))
    assert torch.equal(upper, torch.tensor([0.125, 0.1875, 0.625, 1.0, 1.0]))


def test_an_eps_beyond_1_is_the_whole_box_and_0_the_image() -> None:
    x = torch.tensor([[0.0, 0.3, 1.0]])
    lower, upper = eps_box(x, 1.5)
    assert torch.equal(lower, torch.zeros_like(x)) and torch.equal(upper, torch.ones_like(x))
    lower, upper = eps_box(x, 0.0)
    assert torch.equal(lower, x) and torch.equal(upper, x)


def test_a_tensor_eps_per_image() -> None:
    x = torch.tensor([[0.25, 0.875], [0.25, 0.875]], dtype=torch.float64)
    eps = torch.tensor([[0.125], [0.5]], dtype=torch.float64)
    lower, upper = eps_box(x, eps)
    assert lower.dtype == upper.dtype == torch.float64
    assert torch.equal(lower, torch.tensor([[0.125, 0.75], [0.0, 0.375]], dtype=torch.float64))
    assert torch.equal(upper, torch.tensor([[0.375, 1.0], [0.75, 1.0]], dtype=torch.float64))


def _plain_clip(x: torch.Tensor, eps: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)


@pytest.mark.parametrize("eps_shape", [None, (4, 1, 1, 1), (4, 3, 5, 5)])
def test_values_and_gradients_are_those_of_the_plain_clip(eps_shape: tuple | None) -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 5, 5, generator=generator)
    x[0, 0], x[1, 0], x[2, 0] = 0.0, 1.0, 0.25
    # 0.25: x - eps lands on the border 0 exactly, where clamp's gradient is decided.
    eps = 0.25 if eps_shape is None else torch.rand(eps_shape, generator=generator)
    weights = torch.randn(2, *x.shape, generator=generator)
    found = []
    for clip in (eps_box, _plain_clip):
        leaf = x.clone().requires_grad_(True)
        lower, upper = clip(leaf, eps)
        (weights[0] * lower + weights[1] * upper).sum().backward()
        found.append(torch.stack([lower.detach(), upper.detach(), leaf.grad]))
    assert torch.equal(found[0], found[1])


def test_leaves_the_image_alone() -> None:
    x = torch.tensor([0.0, 0.5, 1.0])
    with torch.no_grad():
        eps_box(x, 0.7)
    assert torch.equal(x, torch.tensor([0.0, 0.5, 1.0]))
