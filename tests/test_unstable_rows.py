"""alpha-CROWN bounding a layer from each image's unstable neurons only
(certify/bounds/unstable_rows.py) gives the bounds of the whole layer, and an image the
same bounds alone and in a batch. The second implementation is auto_LiRPA's own: the
same alpha-CROWN with no layer bounded from rows. In float64 the two agree to rounding."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import certify.bounds.alpha_crown as alpha_crown
from certify.bounds.margins import BoundMethod, MarginBounder
from certify.bounds.unstable_rows import UnstableRows


@pytest.fixture
def setup(float64) -> tuple[MarginBounder, torch.Tensor, torch.Tensor]:
    """A random conv net on 12x12 images whose last convolution's patches outgrow the
    first ReLU's layer (auto_LiRPA turns them into a matrix there), with a dense layer
    after it; six random images labelled by the net."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 3 * 3, 32), nn.ReLU(), nn.Linear(32, 5),
    ).eval()  # fmt: skip
    images = torch.rand(6, 1, 12, 12)
    labels = net(images).argmax(1)
    return MarginBounder(net, (1, 12, 12), torch.device("cpu")), images, labels


def _rows_of_one_run(
    monkeypatch, bounder, images, labels, eps
) -> tuple[torch.Tensor, UnstableRows]:
    """alpha-CROWN's bounds, and the rows it chose."""
    chosen, original = [], alpha_crown.unstable_rows

    def spy(module, relus):
        chosen.append(found := original(module, relus))
        return found

    monkeypatch.setattr(alpha_crown, "unstable_rows", spy)
    bounds = bounder.lower_bounds(images, labels, eps, BoundMethod.ALPHA_CROWN)
    monkeypatch.undo()
    return bounds, chosen[0]


@pytest.mark.parametrize("eps", [0.02, 0.1])
def test_rows_give_the_bounds_of_the_whole_layer(monkeypatch, setup, eps) -> None:
    bounder, images, labels = setup
    with_rows, rows = _rows_of_one_run(monkeypatch, bounder, images, labels, eps)
    # Both ways a ReLU takes a row's slopes are exercised: a set per row (where auto_LiRPA
    # keeps one per neuron) and one shared by the row's output channel.
    assert rows.own_slopes
    per_channel = [
        (relu.name, layer)
        for relu in bounder.module.optimizable_activations
        for layer in rows.picked
        if (relu.name, layer) not in rows.own_slopes
        and relu.alpha.get(layer, torch.empty(0, 0)).shape[1]
        == bounder.module[layer].output_shape[1]
    ]
    assert per_channel
    # Each image's rows start with exactly its unstable neurons after CROWN.
    crown = bounder.lower_bounds(images, labels, eps, BoundMethod.CROWN)
    for layer, picked in rows.picked.items():
        node = bounder.module[layer]
        unstable = ((node.lower < 0) & (node.upper > 0)).flatten(1)
        for image, row in zip(unstable, picked, strict=True):
            count = int(image.sum())
            assert sorted(row[:count].tolist()) == image.nonzero().flatten().tolist()
            assert not image[row[count:]].any()

    monkeypatch.setattr(alpha_crown, "unstable_rows", lambda module, relus: UnstableRows({}))
    whole = bounder.lower_bounds(images, labels, eps, BoundMethod.ALPHA_CROWN)
    torch.testing.assert_close(with_rows, whole, rtol=0.0, atol=1e-9)
    assert (with_rows >= crown).all() and (with_rows - crown).max() > 1e-4


def test_an_image_gets_the_same_bound_alone_and_in_a_batch(monkeypatch, setup) -> None:
    bounder, images, labels = setup
    batch, rows = _rows_of_one_run(monkeypatch, bounder, images, labels, 0.1)
    assert rows.picked
    for i in (0, 3, 5):
        alone = bounder.lower_bounds(
            images[i : i + 1], labels[i : i + 1], 0.1, BoundMethod.ALPHA_CROWN
        )
        torch.testing.assert_close(alone[0], batch[i], rtol=0.0, atol=1e-9)
