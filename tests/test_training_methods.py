"""Fidelity of the training methods with an attack (mtl-ibp, cc-ibp, exp-ibp, sabr):
each loss is computed here from its formula, with this file's own interval pass and
its own PGD, on a tiny network with fixed weights and batch, and
``training.loop.chunk_loss`` must give the same value, the same gradients (none through
the adversarial point) and the same BatchNorm running statistics. A short run of each
method lowers its own loss on real MNIST."""

from __future__ import annotations

import copy
import csv
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from certify.bounds.margins import margin_matrix
from certify.bounds.training_bounders import IBPBounder
from certify.cli import cli
from certify.core.datasets import Dataset
from certify.data import load_split
from model_zoo import create_model
from model_zoo.checkpoint import read_checkpoint
from model_zoo.normalization import NormalizedModel
from training.attack import TrainingAttack
from training.config import TrainConfig
from training.data import Augmentation, Split, batches
from training.expressive import ExpressiveLoss, published_settings
from training.init import ibp_init
from training.loop import Meter, StepConfig, chunk_loss, train_epoch
from training.methods import Method
from training.sabr import SabrLoss
from training.schedulers import EpsSchedule

EXPRESSIVE = [Method.MTL_IBP, Method.CC_IBP, Method.EXP_IBP]
EPS, COEF = 0.1, 0.3


def _tiny() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).double()
    with torch.no_grad():  # BatchNorm's affine part and running statistics off their defaults
        net[1].weight.uniform_(0.5, 1.5)
        net[1].bias.uniform_(-0.2, 0.2)
        net[1].running_mean.uniform_(-0.3, 0.3)
        net[1].running_var.uniform_(0.5, 2.0)
    return net.train()


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(8, 4, generator=generator, dtype=torch.float64)
    return x, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])


def _affine(net: nn.Sequential, mean, var) -> tuple:
    """Scale and shift of the BatchNorm layer with the given statistics."""
    bn = net[1]
    scale = bn.weight / torch.sqrt(var + bn.eps)
    return scale, bn.bias - mean * scale


def _clean_pass(net: nn.Sequential, x) -> None:
    """A train-mode pass whose batch statistics enter the running ones, by hand."""
    bn = net[1]
    with torch.no_grad():
        h = net[0](x)
        m = bn.momentum
        bn.running_mean.mul_(1 - m).add_(m * h.mean(0))
        bn.running_var.mul_(1 - m).add_(m * h.var(0, unbiased=True))
        bn.num_batches_tracked += 1


def _pgd(net: nn.Sequential, x, y, radius: float, attack: TrainingAttack):
    """PGD from the box's centre with the running statistics (eval mode), keeping the
    worst point visited."""
    bn = net[1]
    lower, upper = (x - radius).clamp(0, 1), (x + radius).clamp(0, 1)
    scale, shift = _affine(net, bn.running_mean, bn.running_var)

    def logits(p):
        return net[3](torch.relu(net[0](p) * scale + shift))

    point, best, best_loss = x.clone(), x.clone(), torch.full((len(x),), -torch.inf)
    for i in range(attack.steps):
        point = point.detach().requires_grad_(True)
        loss = F.cross_entropy(logits(point), y, reduction="none")
        (grad,) = torch.autograd.grad(loss.sum(), point)
        keep = loss.detach() >= best_loss
        best[keep], best_loss[keep] = point.detach()[keep], loss.detach()[keep]
        decay = 0.1 ** sum(i >= math.ceil(f * attack.steps) for f in attack.decay_at)
        point = point.detach() + decay * attack.step_size * (upper - lower) / 2 * grad.sign()
        point = torch.min(torch.max(point, lower), upper)
    with torch.no_grad():
        loss = F.cross_entropy(logits(point), y, reduction="none")
    keep = loss >= best_loss
    best[keep] = point[keep]
    return best.detach()


def _interval_margins(net: nn.Sequential, lower, upper, scale, shift, y):
    """This file's interval pass: lower bounds of the margins over [lower, upper]."""
    centre, radius = (upper + lower) / 2, (upper - lower) / 2
    c1, r1 = net[0](centre), radius @ net[0].weight.abs().T
    c2, r2 = c1 * scale + shift, r1 * scale.abs()
    lo, hi = torch.relu(c2 - r2), torch.relu(c2 + r2)
    spec = margin_matrix(y, 3)
    folded = spec @ net[3].weight  # the margins' weights on the last hidden layer
    mid, half = (hi + lo) / 2, (hi - lo) / 2
    return (
        torch.einsum("nkh,nh->nk", folded, mid)
        - torch.einsum("nkh,nh->nk", folded.abs(), half)
        + spec @ net[3].bias
    )


def _robust_ce(margins):
    return torch.logsumexp(torch.cat([torch.zeros_like(margins[:, :1]), -margins], 1), 1).mean()


def _reference(net: nn.Sequential, x, y, method: Method, attack: TrainingAttack):
    """An expressive loss from its formula: the clean pass, PGD in eval mode, then the
    logits and IBP's bounds with the adversarial batch's statistics (which also enter
    the running ones)."""
    _clean_pass(net, x)
    adv = _pgd(net, x, y, EPS, attack)
    h = net[0](adv)
    mean, var = h.mean(0), h.var(0, unbiased=False)
    _clean_pass(net, adv)  # the train-mode pass at the adversarial points
    scale, shift = _affine(net, mean, var)
    adv_logits = net[3](torch.relu(h * scale + shift))
    lower, upper = (x - EPS).clamp(0, 1), (x + EPS).clamp(0, 1)
    ibp_lower = _interval_margins(net, lower, upper, scale, shift, y)
    adv_margins = torch.einsum("nkc,nc->nk", margin_matrix(y, 3), adv_logits)
    l_ibp, l_adv = _robust_ce(ibp_lower), F.cross_entropy(adv_logits, y)
    if method is Method.MTL_IBP:
        return COEF * l_ibp + (1 - COEF) * l_adv
    if method is Method.CC_IBP:
        return _robust_ce(COEF * ibp_lower + (1 - COEF) * adv_margins)
    return l_ibp**COEF * l_adv ** (1 - COEF)


def _sabr_reference(net: nn.Sequential, x, y, ratio: float, attack: TrainingAttack):
    """SABR's loss from its formula: the clean pass, PGD in the eps-ball in eval mode,
    its point moved tau = ratio x eps inside the ball, IBP over the box of radius tau
    with the clean batch's statistics (the running ones left as the clean pass left
    them)."""
    _clean_pass(net, x)
    adv = _pgd(net, x, y, EPS, attack)
    tau = ratio * EPS
    lower, upper = (x - EPS).clamp(0, 1), (x + EPS).clamp(0, 1)
    centre = torch.where(adv > upper - tau, upper - tau, adv)
    centre = torch.where(centre < lower + tau, lower + tau, centre)
    small_lower = torch.max(centre - tau, lower)
    small_upper = torch.min(centre + tau, upper)
    assert ((small_upper - small_lower) <= 2 * tau + 1e-12).all()
    h = net[0](x)
    scale, shift = _affine(net, h.mean(0), h.var(0, unbiased=False))
    return _robust_ce(_interval_margins(net, small_lower, small_upper, scale, shift, y))


def _same_step(mine: nn.Sequential, theirs: nn.Sequential, loss, expected) -> None:
    """The same loss, the same gradients (none through the attack: a gradient through
    the adversarial point would change them) and the same running statistics."""
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)
    loss.backward()
    expected.backward()
    for a, b in zip(mine.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-12)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(mine[1], name), getattr(theirs[1], name))


@pytest.mark.parametrize("method", EXPRESSIVE)
def test_each_expressive_loss_equals_its_formula(float64, method: Method) -> None:
    x, y = _batch()
    attack = TrainingAttack(steps=3, step_size=0.5, random_start=False)
    mine, theirs = _tiny(), _tiny()
    objective = ExpressiveLoss(method, COEF, attack)
    config = StepConfig(method, max_eps=EPS, num_classes=3, objective=objective)
    loss = chunk_loss(mine, IBPBounder(mine), x, y, EPS, False, config, Meter())
    _same_step(mine, theirs, loss, _reference(theirs, x, y, method, attack))


@pytest.mark.parametrize("ratio", [0.3, 0.8])
def test_sabr_loss_equals_its_formula(float64, ratio: float) -> None:
    """0.8: the ball, clipped to [0, 1], is narrower than the small box at some pixels."""
    x, y = _batch()
    attack = TrainingAttack(steps=4, step_size=0.5, random_start=False, decay_at=(0.5,))
    mine, theirs = _tiny(), _tiny()
    config = StepConfig(Method.SABR, max_eps=EPS, num_classes=3, objective=SabrLoss(ratio, attack))
    loss = chunk_loss(mine, IBPBounder(mine), x, y, EPS, False, config, Meter())
    _same_step(mine, theirs, loss, _sabr_reference(theirs, x, y, ratio, attack))


def test_coefficient_zero_and_one_are_the_two_losses_it_mixes(float64) -> None:
    x, y = _batch()
    attack = TrainingAttack(steps=2, step_size=0.5, random_start=False)
    values = {}
    for method in EXPRESSIVE:
        for coef in (0.0, 1.0):
            net = _tiny()
            objective = ExpressiveLoss(method, coef, attack)
            config = StepConfig(method, max_eps=EPS, num_classes=3, objective=objective)
            meter = Meter()
            loss = chunk_loss(net, IBPBounder(net), x, y, EPS, False, config, meter)
            values[method, coef] = (loss.item(), meter.mean("robust_ce"), meter.mean("adv_ce"))
    for method in EXPRESSIVE:
        loss, ibp, adv = values[method, 1.0]
        assert loss == pytest.approx(ibp, rel=1e-12)
        loss, ibp, adv = values[method, 0.0]
        assert loss == pytest.approx(adv, rel=1e-12)
        assert ibp > adv  # IBP's bound lies above the loss at any point of the ball


def test_published_settings_follow_the_paper() -> None:
    cifar2 = published_settings(Method.CC_IBP, Dataset.CIFAR, 2 / 255)
    assert (cifar2.coef, cifar2.attack.steps, cifar2.attack.step_size) == (1e-2, 8, 0.25)
    assert cifar2.attack_eps_factor == 2.1
    assert published_settings(Method.MTL_IBP, Dataset.CIFAR, 8 / 255).coef == 0.5
    # An eps between published ones takes the nearest by ratio.
    assert published_settings(Method.EXP_IBP, Dataset.CIFAR, 3 / 255).coef == 9.5e-2
    config = TrainConfig("mnist", ".", ".", method=Method.MTL_IBP, eps=0.3, attack_steps=4)
    objective = config.objective()
    assert isinstance(objective, ExpressiveLoss)
    assert (objective.coef, objective.attack.steps, objective.attack.step_size) == (8e-2, 4, 10.0)
    sabr = TrainConfig("cifar", ".", ".", method=Method.SABR, eps=8 / 255).objective()
    assert isinstance(sabr, SabrLoss) and sabr.ratio == 0.7 and sabr.attack.steps == 8


@pytest.mark.slow
@pytest.mark.parametrize("method", [*EXPRESSIVE, Method.SABR])
def test_a_short_run_lowers_the_methods_own_loss(shared_data: Path, method: Method) -> None:
    images = load_split("mnist", shared_data, "train", 0, 320)
    model = NormalizedModel(
        create_model("cnn_4layer", 1, 28, 10, width=8, linear_size=32), (0.0,), (1.0,)
    )
    ibp_init(model, torch.Generator().manual_seed(0))
    bounder = IBPBounder(model)
    attack = TrainingAttack(steps=1, step_size=10.0, random_start=False)
    objective = (
        SabrLoss(0.4, attack) if method is Method.SABR else ExpressiveLoss(method, 0.5, attack)
    )
    config = StepConfig(method, max_eps=0.1, num_classes=10, objective=objective)
    held_x, held_y = images.images[256:], images.labels[256:]

    def own_loss() -> float:
        probe = copy.deepcopy(model)  # the loss's passes move running statistics
        return chunk_loss(
            probe, IBPBounder(probe), held_x, held_y, 0.1, False, config, Meter()
        ).item()

    before = own_loss()
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    schedule = EpsSchedule(0.1, start=1, length=0, epoch_length=4)
    split = Split(images.images[:256], images.labels[:256])
    generator = torch.Generator().manual_seed(0)
    for epoch in (1, 2, 3):
        data = batches(split, 64, generator, Augmentation())
        train_epoch(model, bounder, optimizer, data, schedule, epoch, config, torch.device("cpu"))
    assert own_loss() < 0.9 * before


@pytest.mark.slow
@pytest.mark.parametrize(
    "method, stored",
    [
        ("cc-ibp", {"ibp_coef": 0.1, "attack_steps": 1, "attack_step_size": 10.0}),
        ("staps", {"sabr_ratio": 0.4, "taps_head_layers": 4, "taps_grad_scale": 5.0}),
    ],
)
def test_certify_train_runs_a_method_with_an_attack_end_to_end(
    shared_data: Path, tmp_path: Path, method: str, stored: dict
) -> None:
    """The run stores the paper's settings for MNIST 0.1 that it trained with."""
    out = tmp_path / "run"
    args = [
        "train", "--dataset", "mnist", "--data-dir", str(shared_data), "--out-dir", str(out),
        "--method", method, "--eps", "0.1", "--epochs", "2", "--batch-size", "32",
        "--num-train", "160", "--val-size", "32", "--schedule-length", "1",
        "--test-samples", "16", "--eval-methods", "ibp,crown", "--device", "cpu",
    ]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    checkpoint = read_checkpoint(out / "last.pth")
    assert checkpoint["method"] == method and checkpoint["epoch"] == 2
    assert {k: checkpoint["train_args"][k] for k in stored} == stored
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(row["num_samples"] == "16" for row in rows)


def test_published_presets_take_each_papers_schedule() -> None:
    """The values the papers' own commands use (typed here from their scripts)."""
    from training.presets import resolve_config

    sabr = resolve_config("cifar8", out_dir="r", method="sabr")
    assert (sabr.epochs, sabr.lr_milestones, sabr.sabr_ratio) == (180, (140, 160), 0.7)
    assert (sabr.batch_size, sabr.schedule_start, sabr.schedule_length) == (128, 2, 80)
    mtl = resolve_config("cifar8", out_dir="r", method="mtl-ibp")
    assert (mtl.epochs, mtl.lr_milestones, mtl.ibp_coef) == (260, (180, 220), 0.5)
    cc = resolve_config("cifar2", out_dir="r", method="cc-ibp")
    assert (cc.epochs, cc.ibp_coef, cc.attack_steps, cc.attack_eps_factor) == (160, 0.01, 8, 2.1)
    taps = resolve_config("tinyimagenet1", out_dir="r", method="taps")
    assert (taps.epochs, taps.lr_milestones, taps.reg_lambda, taps.schedule_length) == (
        80, (60, 70), 0.1, 20
    )  # fmt: skip
    staps = resolve_config("cifar2", out_dir="r", method="staps")
    assert (staps.taps_grad_scale, staps.taps_head_layers, staps.sabr_ratio) == (2.0, 4, 0.1)
    # A flag still wins over the method's schedule.
    assert resolve_config("cifar8", out_dir="r", method="sabr", epochs=3).epochs == 3


@pytest.mark.slow
@pytest.mark.parametrize("method", ["sabr"])
def test_a_published_preset_trains_on_the_shared_cifar_images(
    shared_data: Path, tmp_path: Path, method: str
) -> None:
    """``certify train --preset cifar2 --method ...`` on a few real CIFAR-10 images, with
    the seed's CNN7, through the final evaluation."""
    out = tmp_path / "run"
    args = [
        "train", "--preset", "cifar2", "--method", method, "--data-dir", str(shared_data),
        "--out-dir", str(out), "--num-train", "40", "--val-size", "8", "--batch-size", "16",
        "--epochs", "2", "--schedule-start", "1", "--schedule-length", "1",
        "--test-samples", "4", "--eval-methods", "ibp", "--device", "cpu",
    ]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    checkpoint = read_checkpoint(out / "last.pth")
    assert checkpoint["arch"] == "cnn" and checkpoint["method"] == method
    assert (out / "results.csv").exists()
