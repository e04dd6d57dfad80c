"""The attack inside training steps (training/attack.py), checked against hand
computations on a linear model, whose cross-entropy gradient is W^T (softmax - onehot)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from certify.core.errors import UsageError
from training.attack import TrainingAttack, adversarial_points, attack_starts, sample_noise


@pytest.fixture
def linear() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4)).double()
    x = torch.rand(5, 1, 3, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 1])
    return model, x, y


def test_one_step_from_the_centre_goes_to_the_corner_the_gradient_points_to(linear) -> None:
    model, x, y = linear
    weight, bias = model[1].weight.detach(), model[1].bias.detach()
    flat = x.flatten(1)
    probs = torch.softmax(flat @ weight.T + bias, dim=1)
    grad = (probs - F.one_hot(y, 4).double()) @ weight  # d CE / d x, by hand
    low, high = (flat - 0.1).clamp(0, 1), (flat + 0.1).clamp(0, 1)
    # A step of the box's half-width per pixel, after clipping to the pixel range.
    expected = torch.min(torch.max(flat + (high - low) / 2 * grad.sign(), low), high)
    attack = TrainingAttack(steps=1, step_size=1.0, random_start=False)
    found = adversarial_points(model, x, y, 0.1, attack)
    torch.testing.assert_close(found.flatten(1), expected, rtol=0, atol=1e-12)
    assert not found.requires_grad


def test_points_stay_in_the_box_and_the_pixel_range(linear) -> None:
    model, x, y = linear
    attack = TrainingAttack(steps=5, step_size=0.5, restarts=2)
    noise = attack_starts(torch.arange(5), 2, tuple(x.shape[1:]))
    found = adversarial_points(model, x, y, 0.3, attack, noise)
    assert ((found - x).abs() <= 0.3 + 1e-12).all()
    assert (found >= 0).all() and (found <= 1).all()


def test_restarts_keep_the_worst_point_and_one_step_keeps_its_end(linear) -> None:
    model, x, y = linear
    noise = attack_starts(torch.arange(7, 12), 3, tuple(x.shape[1:])).double()

    def run(restarts: int) -> torch.Tensor:
        attack = TrainingAttack(steps=1, step_size=0.25, restarts=restarts)
        return adversarial_points(model, x, y, 0.2, attack, noise)

    torch.testing.assert_close(run(1), run(1), rtol=0, atol=0)
    one, three = run(1), run(3)
    with torch.no_grad():
        losses = [F.cross_entropy(model(p), y, reduction="none") for p in (one, three)]
    # The first of three restarts is the one-restart run: the kept point is at least as bad.
    assert (losses[1] >= losses[0] - 1e-12).all()
    assert not torch.equal(one, three)
    # One step from a known start: the point one signed step away, by hand.
    weight, bias = model[1].weight.detach(), model[1].bias.detach()
    low = (x - 0.2).clamp(0, 1).flatten(1)
    high = (x + 0.2).clamp(0, 1).flatten(1)
    start = low + noise[0].flatten(1) * (high - low)
    probs = torch.softmax(start @ weight.T + bias, dim=1)
    grad = (probs - F.one_hot(y, 4).double()) @ weight
    expected = torch.min(torch.max(start + 0.25 * (high - low) / 2 * grad.sign(), low), high)
    torch.testing.assert_close(one.flatten(1), expected, rtol=0, atol=1e-12)


def test_several_steps_keep_the_worst_point_visited(linear) -> None:
    model, x, y = linear
    noise = attack_starts(torch.arange(3, 8), 1, tuple(x.shape[1:])).double()
    # Steps as large as the box: PGD bounces between corners; the worst point it
    # visits is kept, whichever step found it.
    attack = TrainingAttack(steps=4, step_size=2.0)
    found = adversarial_points(model, x, y, 0.3, attack, noise)
    low, high = (x - 0.3).clamp(0, 1), (x + 0.3).clamp(0, 1)
    point, visited = low + noise[0] * (high - low), []
    for _ in range(5):
        visited.append(point)
        point = point.detach().requires_grad_(True)
        loss = F.cross_entropy(model(point), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, point)
        point = torch.min(torch.max(point.detach() + (high - low) * grad.sign(), low), high)
    with torch.no_grad():
        losses = torch.stack([F.cross_entropy(model(p), y, reduction="none") for p in visited])
    worst = losses.max(0).values
    with torch.no_grad():
        torch.testing.assert_close(F.cross_entropy(model(found), y, reduction="none"), worst)


def test_bad_settings_name_the_option() -> None:
    for options, param in (
        ({"steps": 0}, "attack_steps"),
        ({"step_size": 0.0}, "attack_step_size"),
        ({"restarts": 0}, "attack_restarts"),
    ):
        with pytest.raises(UsageError) as info:
            TrainingAttack(**options)
        assert info.value.param == param


def test_each_image_draws_its_noise_from_its_own_seed() -> None:
    seeds = torch.tensor([5, 9, 5])
    noise = sample_noise(seeds, (2, 3))
    assert noise.shape == (3, 2, 3)
    torch.testing.assert_close(noise[0], noise[2], rtol=0, atol=0)
    # The same image's noise, whatever its neighbours: a chunk or process of its own
    # draws the same starts.
    torch.testing.assert_close(sample_noise(seeds[1:2], (2, 3))[0], noise[1], rtol=0, atol=0)
    expected = torch.rand((2, 3), generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(noise[1], expected, rtol=0, atol=0)
    starts = attack_starts(seeds, 2, (3,))
    assert starts.shape == (2, 3, 3)
    torch.testing.assert_close(starts[1, 0], noise[0, 1], rtol=0, atol=0)


def test_the_attack_start_is_an_option_with_the_papers_default(tmp_path) -> None:
    from training.attack import AttackStart
    from training.config import TrainConfig

    common = {"dataset": "mnist", "data_dir": tmp_path, "out_dir": tmp_path / "r", "eps": 0.1}
    paper = TrainConfig(method="mtl-ibp", **common)
    assert paper.attack_start is AttackStart.RANDOM and paper.objective().attack.random_start
    centre = TrainConfig(method="sabr", attack_start="centre", **common)
    assert centre.objective().attack.random_start is False
    assert centre.to_plain()["attack_start"] == "centre"
    for method, start, param in (("fast", "centre", "attack_start"),
                                 ("mtl-ibp", "middle", "attack_start")):  # fmt: skip
        with pytest.raises(UsageError) as info:
            TrainConfig(method=method, attack_start=start, **common)
        assert info.value.param == param
