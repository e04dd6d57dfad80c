"""The L1 penalty: each paper's sum, computed by hand on a tiny network, the papers'
coefficients as the presets take them, and its gradient added once per training step."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from certify.bounds.training_bounders import IBPBounder
from certify.core.datasets import Dataset
from certify.core.errors import UsageError
from training.config import TrainConfig
from training.data import Augmentation, Split, batches
from training.l1 import L1Reach, l1_norm, l1_reach, published_l1
from training.loop import StepConfig, train_epoch
from training.methods import Method
from training.schedulers import EpsSchedule


def _tiny() -> nn.Sequential:
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.ReLU(), nn.Linear(2, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 0.0]]))
        model[0].bias.copy_(torch.tensor([-0.25, 3.0]))
        model[1].weight.copy_(torch.tensor([2.0, -1.0]))
        model[1].bias.copy_(torch.tensor([0.0, -0.5]))
        model[3].weight.copy_(torch.tensor([[-4.0, 1.0]]))
        model[3].bias.copy_(torch.tensor([0.75]))
    return model


@pytest.mark.parametrize(
    ("reach", "expected"),
    [
        # |W1| 3.5 + |b1| 3.25 + BatchNorm's |gamma| 3 + |beta| 0.5 + |W2| 5 + |b2| 0.75
        (L1Reach.ALL_PARAMETERS, 16.0),
        # ((3.5 + 3.25) + (5 + 0.75)) / 2 affine layers
        (L1Reach.AFFINE_LAYERS, 6.25),
        # 3.5 + 5
        (L1Reach.AFFINE_WEIGHTS, 8.5),
    ],
)
def test_each_papers_sum_by_hand(reach: L1Reach, expected: float) -> None:
    assert float(l1_norm(_tiny(), reach).detach()) == pytest.approx(expected)


def test_each_method_sums_as_its_paper() -> None:
    assert l1_reach(Method.SABR) is L1Reach.ALL_PARAMETERS
    assert l1_reach(Method.TAPS) is l1_reach(Method.STAPS) is L1Reach.AFFINE_LAYERS
    for method in (Method.MTL_IBP, Method.CC_IBP, Method.EXP_IBP, Method.FAST):
        assert l1_reach(method) is L1Reach.AFFINE_WEIGHTS


def test_published_coefficients_and_the_configuration(tmp_path: Path) -> None:
    # The papers' commands: SABR's README, TAPS's scripts, the expressive losses' README.
    assert published_l1(Method.SABR, Dataset.MNIST, 0.1) == 1e-5
    assert published_l1(Method.SABR, Dataset.CIFAR, 8 / 255) == 0.0
    assert published_l1(Method.STAPS, Dataset.TINYIMAGENET, 1 / 255) == 1e-6
    assert published_l1(Method.MTL_IBP, Dataset.CIFAR, 8 / 255) == 1e-7
    assert published_l1(Method.CC_IBP, Dataset.CIFAR100, 2 / 255) == 3e-6  # CIFAR-10's
    assert published_l1(Method.FAST, Dataset.CIFAR, 8 / 255) == 0.0

    def config(**options: object) -> TrainConfig:
        return TrainConfig(dataset=Dataset.CIFAR, data_dir=tmp_path, out_dir=tmp_path,
                           arch="cnn", eps=2 / 255, **options)  # fmt: skip

    assert config(method=Method.TAPS).l1 == 2e-6
    assert config(method=Method.TAPS, l1=0.0).l1 == 0.0
    assert config().l1 == 0.0  # the seed's fast trains without one
    with pytest.raises(UsageError, match="must be >= 0"):
        config(l1=-1e-6)


def test_a_step_adds_its_gradient_once() -> None:
    """With plain SGD at rate 1, one step with the penalty moves each weight of an affine
    layer by l1 * sign(w) further than the same step without it, and the other
    parameters not at all (fast sums the affine layers' weights)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)
    )
    x, y = torch.rand(32, 1, 4, 4), torch.randint(0, 3, (32,))
    moved = {}
    for l1 in (0.0, 0.01):
        twin = copy.deepcopy(model)
        optimizer = torch.optim.SGD(twin.parameters(), lr=1.0)
        schedule = EpsSchedule(0.1, start=1, length=2, epoch_length=1)
        config = StepConfig(Method.FAST, max_eps=0.1, num_classes=3, grad_clip=1e9,
                            grad_acc_steps=2, l1=l1)  # fmt: skip
        data = batches(Split(x, y), 32, torch.Generator().manual_seed(0), Augmentation())
        train_epoch(twin, IBPBounder(twin), optimizer, data, schedule, 1, config,
                    torch.device("cpu"))  # fmt: skip
        moved[l1] = dict(twin.named_parameters())
    for name, before in model.named_parameters():
        difference = moved[0.01][name] - moved[0.0][name]
        if name.endswith("weight") and before.dim() == 2:
            expected = -0.01 * before.sign()
        else:
            expected = torch.zeros_like(before)
        assert torch.allclose(difference, expected, atol=1e-6), name


def test_a_run_stored_without_the_penalty_resumes_without_it(tmp_path: Path) -> None:
    """A checkpoint written before the option existed trained without L1: resuming it
    with the paper's coefficient would change the experiment, so that is a difference."""
    sabr = TrainConfig(dataset=Dataset.MNIST, data_dir=tmp_path, out_dir=tmp_path,
                       method=Method.SABR, eps=0.1)  # fmt: skip
    old = {k: v for k, v in sabr.to_plain().items() if k != "l1"}
    assert sabr.differences(old) == ["l1"]
    assert replace(sabr, l1=0.0).differences(old) == []
    assert sabr.differences(sabr.to_plain()) == []
