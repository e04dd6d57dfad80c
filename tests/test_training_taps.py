"""Fidelity of TAPS and STAPS (training/taps.py): the loss written out here from the
paper's formulas, with this file's own interval pass, PGD in the feature box, gradient
connector and gradient scale, on a tiny network with fixed weights and batch, must give
``chunk_loss``'s value, its gradients and its BatchNorm running statistics. A short run
of each lowers its own loss on real MNIST, and a network TAPS cannot split is refused."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from certify.bounds.margins import margin_matrix
from certify.bounds.training_bounders import IBPBounder
from certify.core.errors import UsageError
from certify.data import load_split
from model_zoo import create_model
from model_zoo.normalization import NormalizedModel
from training.attack import TrainingAttack, attack_starts, sample_noise
from training.config import TrainConfig
from training.data import Augmentation, Split, batches
from training.init import ibp_init
from training.loop import Meter, StepConfig, chunk_loss, train_epoch
from training.methods import Method
from training.schedulers import EpsSchedule
from training.taps import TapsLoss

EPS, SCALE, SLACK, TOL = 0.15, 3.0, 0.5, 1e-5


def _tiny() -> NormalizedModel:
    """Flatten, Linear, BN, ReLU | Linear, BN, ReLU, Linear: a head of 4 layers."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Flatten(), nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(),
        nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3),
    )  # fmt: skip
    with torch.no_grad():
        for bn in (net[2], net[5]):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    return NormalizedModel(net, (0.4,), (0.3,)).double().train()


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(8, 1, 2, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return x, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])


def _bn(layer: nn.BatchNorm1d, h, mean, var):
    return (h - mean) / torch.sqrt(var + layer.eps) * layer.weight + layer.bias


def _clean_stats(layer: nn.BatchNorm1d, h) -> tuple:
    """The batch statistics of ``h``; the running ones move with them, as one clean
    train-mode step would."""
    mean, var = h.mean(0), h.var(0, unbiased=False)
    with torch.no_grad():
        m = layer.momentum
        layer.running_mean.mul_(1 - m).add_(m * mean)
        layer.running_var.mul_(1 - m).add_(m * h.var(0, unbiased=True))
        layer.num_batches_tracked += 1
    return mean, var


def _interval_affine(linear: nn.Linear, lo, hi):
    mid, rad = (hi + lo) / 2, (hi - lo) / 2
    c, r = linear(mid), rad @ linear.weight.abs().T
    return c - r, c + r


def _interval_bn(layer, lo, hi, mean, var):
    scale = layer.weight / torch.sqrt(var + layer.eps)
    mid, rad = (hi + lo) / 2, (hi - lo) / 2
    c, r = _bn(layer, mid, mean, var), rad * scale.abs()
    return c - r, c + r


def _robust_ce(margins):
    return torch.logsumexp(torch.cat([torch.zeros_like(margins[:, :1]), -margins], 1), 1).mean()


class _Link(torch.autograd.Function):
    """This file's rectified linear gradient connector (N x J x features points)."""

    @staticmethod
    def forward(ctx, lo, hi, pts):
        ctx.save_for_backward(lo, hi, pts)
        return pts.clone()

    @staticmethod
    def backward(ctx, g):
        lo, hi, pts = ctx.saved_tensors
        lo, hi = lo[:, None], hi[:, None]
        s = SLACK * (hi - lo)
        up = torch.where(
            pts >= hi - s, g * (pts - (hi - s)).clamp(min=TOL / 2) / s.clamp(min=TOL), 0
        )
        down = torch.where(
            pts <= lo + s, g * (lo + s - pts).clamp(min=TOL / 2) / s.clamp(min=TOL), 0
        )
        return down.sum(1), up.sum(1), None


class _Scale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * SCALE


def _reference(model: NormalizedModel, x, y, steps: int, seeds, small_box=None, warmup=False):
    """TAPS (or STAPS with ``small_box`` = (ratio, attack)) written out."""
    net = model.model
    lower, upper = (x - EPS).clamp(0, 1), (x + EPS).clamp(0, 1)
    spec = margin_matrix(y, 3)

    def norm(t):
        return ((t - 0.4) / 0.3).flatten(1)

    # Clean statistics of every BatchNorm (the running ones move once, below).
    h1 = net[1](norm(x))
    mean1, var1 = h1.mean(0), h1.var(0, unbiased=False)
    f_clean = torch.relu(_bn(net[2], h1, mean1, var1))
    h2 = net[4](f_clean)
    mean2, var2 = h2.mean(0), h2.var(0, unbiased=False)

    def head(f):
        return net[7](torch.relu(_bn(net[5], net[4](f), mean2, var2)))

    def whole(t):
        return head(torch.relu(_bn(net[2], net[1](norm(t)), mean1, var1)))

    if small_box is not None:
        ratio, attack = small_box
        start = attack_starts(seeds, 1, tuple(x.shape[1:]))[0]
        point = lower + start * (upper - lower)
        best, best_loss = point.clone(), torch.full((len(x),), -torch.inf)
        step = attack.step_size * (upper - lower) / 2
        for i in range(attack.steps + 1):
            point = point.detach().requires_grad_(True)
            loss = torch.nn.functional.cross_entropy(whole(point), y, reduction="none")
            keep = loss.detach() >= best_loss
            best[keep], best_loss[keep] = point.detach()[keep], loss.detach()[keep]
            if i == attack.steps:
                break
            (grad,) = torch.autograd.grad(loss.sum(), point)
            point = torch.min(torch.max(point.detach() + step * grad.sign(), lower), upper)
        radius = (upper - lower) / 2 * ratio
        centre = torch.min(torch.max(best, lower + radius), upper - radius)
        lower, upper = centre - radius, centre + radius
    # The IBP passes: they move the running statistics once each.
    _clean_stats(net[2], h1)
    lo, hi = _interval_bn(net[2], *_interval_affine(net[1], norm(lower), norm(upper)), mean1, var1)
    lo, hi = torch.relu(lo), torch.relu(hi)
    _clean_stats(net[5], h2)
    blo, bhi = _interval_bn(net[5], *_interval_affine(net[4], lo, hi), mean2, var2)
    blo, bhi = torch.relu(blo), torch.relu(bhi)
    folded = spec @ net[7].weight
    mid, rad = (bhi + blo) / 2, (bhi - blo) / 2
    box = (
        torch.einsum("nkh,nh->nk", folded, mid)
        - torch.einsum("nkh,nh->nk", folded.abs(), rad)
        + spec @ net[7].bias
    )
    l_ibp = _robust_ce(box)
    if warmup:
        return l_ibp

    def estimate(pts):  # N x J x 6 -> z_j - z_y at point j
        logits = head(pts.reshape(-1, 6)).view(len(x), 2, 3)
        margins = torch.einsum("njk,nik->nij", spec, logits)
        return -torch.diagonal(margins, dim1=1, dim2=2)

    noise = sample_noise(seeds + 2**61, (1, 2, 6))[:, 0]  # the feature box's own stream
    width = (hi - lo).detach()[:, None]
    pts = lo.detach()[:, None] + width * noise
    best_pts, best_est = pts.clone(), torch.full((len(x), 2), -torch.inf)
    rate = max(0.2, 2 / steps)
    for i in range(steps + 1):
        pts = pts.detach().requires_grad_(True)
        est = estimate(pts)
        better = est.detach() > best_est
        best_est[better], best_pts[better] = est.detach()[better], pts.detach()[better]
        if i == steps:
            break
        if 20 <= steps <= 50 and i == int(0.7 * steps):
            rate *= 0.1
        (grad,) = torch.autograd.grad(est.sum(), pts)
        pts = torch.min(torch.max(pts.detach() + rate * width * grad.sign(), lo.detach()[:, None]),
                        hi.detach()[:, None])  # fmt: skip
    l_taps = _robust_ce(-estimate(_Link.apply(lo, hi, best_pts.detach())))
    return _Scale.apply(l_taps) * l_ibp


def _same_step(mine, theirs, loss, expected) -> None:
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)
    loss.backward()
    expected.backward()
    for (name, a), b in zip(mine.named_parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-8, atol=1e-11, msg=name)
    for a, b in zip(mine.buffers(), theirs.buffers(), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("steps", [3, 20])
@pytest.mark.parametrize("warmup", [False, True])
def test_taps_loss_equals_its_formula(float64, steps: int, warmup: bool) -> None:
    """20 steps: the step size decays after 14."""
    x, y = _batch()
    mine, theirs = _tiny(), _tiny()
    seeds = torch.arange(11, 19)
    # No regularizers: the loop would add them to the warmup's loss.
    config = StepConfig(Method.TAPS, EPS, 3, reg_lambda=0.0, objective=TapsLoss(SCALE, 4, steps))
    loss = chunk_loss(mine, IBPBounder(mine), x, y, EPS, warmup, config, Meter(), seeds)
    _same_step(mine, theirs, loss, _reference(theirs, x, y, steps, seeds, warmup=warmup))


@pytest.mark.parametrize("warmup", [False, True])
def test_staps_loss_equals_its_formula(float64, warmup: bool) -> None:
    x, y = _batch()
    mine, theirs = _tiny(), _tiny()
    seeds = torch.arange(3, 11)
    attack = TrainingAttack(steps=4, step_size=0.3)
    objective = TapsLoss(SCALE, 4, 5, small_box=(0.4, attack))
    config = StepConfig(Method.STAPS, EPS, 3, reg_lambda=0.0, objective=objective)
    loss = chunk_loss(mine, IBPBounder(mine), x, y, EPS, warmup, config, Meter(), seeds)
    expected = _reference(theirs, x, y, 5, seeds, small_box=(0.4, attack), warmup=warmup)
    _same_step(mine, theirs, loss, expected)


def test_a_network_taps_cannot_split_is_refused(tmp_path: Path) -> None:
    config = TrainConfig("mnist", tmp_path, tmp_path / "r", method=Method.TAPS, eps=0.1)
    objective = config.objective()
    with pytest.raises(UsageError) as info:
        objective.check(NormalizedModel(create_model("wide_resnet_8", 1, 28, 10), (0.0,), (1.0,)))
    assert info.value.param == "method"
    with pytest.raises(UsageError) as info:
        TapsLoss(5.0, 11, 20).check(
            NormalizedModel(create_model("cnn_4layer", 1, 28, 10), (0.0,), (1.0,))
        )
    assert info.value.param == "taps_head_layers"


@pytest.mark.slow
@pytest.mark.parametrize("method", [Method.TAPS, Method.STAPS])
def test_a_short_run_lowers_its_own_loss(shared_data: Path, method: Method) -> None:
    images = load_split("mnist", shared_data, "train", 0, 320)
    model = NormalizedModel(
        create_model("cnn_4layer", 1, 28, 10, width=8, linear_size=32), (0.0,), (1.0,)
    )
    ibp_init(model, torch.Generator().manual_seed(0))
    small = (0.4, TrainingAttack(steps=2, step_size=0.5)) if method is Method.STAPS else None
    objective = TapsLoss(5.0, 4, 5, small_box=small)
    config = StepConfig(method, max_eps=0.1, num_classes=10, objective=objective)
    held_x, held_y = images.images[256:], images.labels[256:]
    seeds = torch.arange(len(held_y))

    def own_loss() -> float:
        probe = copy.deepcopy(model)
        loss = chunk_loss(
            probe, IBPBounder(probe), held_x, held_y, 0.1, False, config, Meter(), seeds
        )
        return loss.item()

    before = own_loss()
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    schedule = EpsSchedule(0.1, start=1, length=0, epoch_length=4)
    split = Split(images.images[:256], images.labels[:256])
    generator = torch.Generator().manual_seed(0)
    bounder = IBPBounder(model)
    for epoch in (1, 2, 3):
        data = batches(split, 64, generator, Augmentation())
        train_epoch(model, bounder, optimizer, data, schedule, epoch, config, torch.device("cpu"))
    assert own_loss() < 0.9 * before
