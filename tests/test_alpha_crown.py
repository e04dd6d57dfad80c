"""alpha-CROWN: never below CROWN, strictly tighter where CROWN is loose, and the same
bound for an image alone and in a batch. Its soundness is checked with the other methods
in tests/test_soundness_properties.py and tests/test_bounds_soundness.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from certify.bounds.margins import AlphaCrownOptions, BoundMethod, MarginBounder
from certify.core.errors import UsageError
from certify.data import load_split


@pytest.fixture(scope="module")
def plain_mlp(shared_data: Path) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """An MLP trained without certified training (its CROWN bounds are loose), and 16
    test images."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)
    )
    train = load_split("mnist", shared_data, "train", num_samples=3000)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    for i in range(0, 3000, 50):
        x, y = train.images[i : i + 50], train.labels[i : i + 50]
        loss = nn.functional.cross_entropy(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    test = load_split("mnist", shared_data, "test", num_samples=16)
    return net.eval(), test.images, test.labels


def test_alpha_crown_is_strictly_tighter_than_crown_where_crown_is_loose(plain_mlp) -> None:
    net, images, labels = plain_mlp
    bounder = MarginBounder(net, (1, 28, 28), torch.device("cpu"))
    crown = bounder.lower_bounds(images, labels, 0.05, BoundMethod.CROWN)
    alpha = bounder.lower_bounds(images, labels, 0.05, BoundMethod.ALPHA_CROWN)
    gain = alpha - crown
    assert (gain >= 0).all()  # per margin, the better of two sound bounds
    # Optimized slopes must move: a gradient stuck at the slopes' start (0 or 1) would
    # return CROWN's bound unchanged.
    assert gain.max() > 1e-2 and gain.mean() > 1e-3, (gain.max().item(), gain.mean().item())


def test_alpha_crown_bound_of_an_image_does_not_depend_on_its_batch(plain_mlp) -> None:
    net, images, labels = plain_mlp
    bounder = MarginBounder(net, (1, 28, 28), torch.device("cpu"))
    batch = bounder.lower_bounds(images, labels, 0.05, BoundMethod.ALPHA_CROWN)
    for i in (0, 7, 15):
        alone = bounder.lower_bounds(
            images[i : i + 1], labels[i : i + 1], 0.05, BoundMethod.ALPHA_CROWN
        )
        torch.testing.assert_close(alone[0], batch[i], rtol=0.0, atol=1e-4)


def test_more_iterations_never_loosen_the_bound(plain_mlp) -> None:
    net, images, labels = plain_mlp
    bounds = []
    for iterations in (2, 10):
        options = AlphaCrownOptions(iterations=iterations)
        bounder = MarginBounder(net, (1, 28, 28), torch.device("cpu"), alpha=options)
        bounds.append(bounder.lower_bounds(images[:4], labels[:4], 0.05, BoundMethod.ALPHA_CROWN))
    assert (bounds[1] >= bounds[0] - 1e-5).all()


def test_bad_options_name_the_parameter() -> None:
    for options, param in (({"iterations": 0}, "alpha_iterations"), ({"lr": 0.0}, "alpha_lr")):
        with pytest.raises(UsageError) as info:
            AlphaCrownOptions(**options)
        assert info.value.param == param


def test_the_memory_probe_leaves_later_bounds_as_they_were(plain_mlp) -> None:
    """The chunk probe runs a short alpha-CROWN on the module that evaluation then uses:
    the slopes and options it leaves behind must not change a later bound."""
    net, images, labels = plain_mlp
    bounder = MarginBounder(net, (1, 28, 28), torch.device("cpu"))
    before = bounder.lower_bounds(images[:4], labels[:4], 0.05, BoundMethod.ALPHA_CROWN)
    bounder.probe_memory(images[4:6], labels[4:6], 0.05, BoundMethod.ALPHA_CROWN)
    after = bounder.lower_bounds(images[:4], labels[:4], 0.05, BoundMethod.ALPHA_CROWN)
    assert torch.equal(after, before)
