"""Unit tests of the training building blocks: schedules, IBP initialization, the
warmup regularizers, the losses and the hand-written interval propagation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from certify.bounds.interval import IntervalNetwork, PreActivation
from certify.bounds.margins import margin_matrix
from certify.bounds.training_bounders import crown_ibp_mix
from certify.core.errors import ModelError, UsageError
from model_zoo import create_model
from model_zoo.normalization import NormalizedModel
from training.init import ibp_init, ibp_sigma
from training.losses import robust_cross_entropy
from training.regularizers import (
    regularizer_weight,
    relu_balance_loss,
    relu_states,
    tightness_loss,
)
from training.schedulers import EpsSchedule, ScheduleKind, parse_schedule_kind

# --- schedules ---------------------------------------------------------------------


def test_smoothed_schedule_known_values() -> None:
    # start=2, length=4, 10 batches: ramp over global steps 10..50, switch at step 20.
    # alpha = 1 / (30 * 4 * 10^3 + 10 * 10^3) = 1 / 130000, value at the switch 1/13.
    s = EpsSchedule(max_eps=1.0, start=2, length=4, epoch_length=10)
    assert s.eps(1, 0) == 0.0
    assert s.eps(1, 9) == 0.0
    assert s.eps(2, 0) == 0.0  # the ramp begins after the first batch of epoch `start`
    assert s.eps(2, 5) == pytest.approx(5**4 / 130000)
    assert s.eps(3, 0) == pytest.approx(1 / 13)
    assert s.eps(4, 5) == pytest.approx(7 / 13)
    assert s.eps(5, 9) == pytest.approx(1 / 13 + 12 / 13 * 29 / 30)
    assert s.eps(6, 0) == 1.0
    assert s.eps(60, 3) == 1.0
    assert s.last_warmup_epoch == 5


def test_smoothed_schedule_is_continuous_with_continuous_slope() -> None:
    s = EpsSchedule(max_eps=0.4, start=1, length=20, epoch_length=20)
    values = [s.eps(1 + k // 20, k % 20) for k in range(21 * 20)]
    steps = [b - a for a, b in zip(values, values[1:], strict=False)]
    assert all(d >= 0 for d in steps)
    mid = int(400 * 0.25)
    # The step just before and after the switch to the linear part agree closely.
    assert steps[mid - 1] == pytest.approx(steps[mid], rel=0.02)
    assert values[-1] == pytest.approx(0.4)


def test_linear_schedule_known_values() -> None:
    s = EpsSchedule(1.0, start=2, length=4, epoch_length=10, kind=ScheduleKind.LINEAR)
    assert s.eps(1, 7) == 0.0
    assert s.eps(2, 0) == 0.0
    assert s.eps(2, 5) == pytest.approx(0.125)
    assert s.eps(3, 0) == pytest.approx(0.25)
    assert s.eps(5, 9) == pytest.approx(0.75 + 0.25 * 0.9)
    assert s.eps(6, 0) == 1.0


def test_short_smoothed_ramp_does_not_divide_by_zero() -> None:
    s = EpsSchedule(1.0, start=1, length=1, epoch_length=2)
    assert [s.eps(1, 0), s.eps(1, 1), s.eps(2, 0)] == [0.0, 0.5, 1.0]
    assert EpsSchedule(1.0, start=3, length=0, epoch_length=5).eps(3, 0) == 1.0


def test_schedule_rejects_bad_values() -> None:
    with pytest.raises(UsageError):
        EpsSchedule(1.0, start=0, length=3, epoch_length=5)
    with pytest.raises(UsageError):
        parse_schedule_kind("cosine")
    assert parse_schedule_kind("SmoothedScheduler") is ScheduleKind.SMOOTHED


# --- IBP initialization ----------------------------------------------------------


def test_ibp_init_statistics() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 64, 3, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64 * 8 * 8, 256),
        nn.ReLU(),
        nn.Linear(256, 10),
    )
    last_before = model[6].weight.detach().clone()
    bias_before = model[0].bias.detach().clone()
    bn_before = model[1].weight.detach().clone()
    report = ibp_init(model, torch.Generator().manual_seed(1))
    assert report.reinitialized == ("0", "4") and report.kept_last == "6"
    conv_w, fc_w = model[0].weight, model[4].weight
    assert ibp_sigma(conv_w) == pytest.approx(math.sqrt(2 * math.pi) / 27)
    assert conv_w.std().item() == pytest.approx(math.sqrt(2 * math.pi) / 27, rel=0.05)
    assert fc_w.std().item() == pytest.approx(math.sqrt(2 * math.pi) / 4096, rel=0.02)
    assert abs(fc_w.mean().item()) < 3 * fc_w.std().item() / math.sqrt(fc_w.numel())
    assert torch.equal(model[6].weight, last_before)
    assert torch.equal(model[0].bias, bias_before)
    assert torch.equal(model[1].weight, bn_before)


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(16, 16)
        self.b = nn.Linear(16, 16)
        self.after = nn.Linear(16, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))
        h = torch.relu(self.b(h) + h)
        return self.head(torch.relu(self.after(h)))


def test_ibp_init_halves_layers_after_a_residual_sum() -> None:
    model = _Residual()
    report = ibp_init(model, torch.Generator().manual_seed(0))
    assert report.halved == ("after",)
    sigma = math.sqrt(2 * math.pi) / 16
    # 256 draws: the halved layer's std is near sigma / 2, the others near sigma.
    assert model.after.weight.std().item() == pytest.approx(sigma / 2, rel=0.2)
    assert model.b.weight.std().item() == pytest.approx(sigma, rel=0.2)


# --- regularizers ------------------------------------------------------------------


def _hand_case() -> tuple[torch.Tensor, list[PreActivation]]:
    input_radius = torch.full((1, 2), 0.1)  # d0 = 0.1
    layer1 = PreActivation.from_box(
        torch.tensor([[-1.0, 1.0, -3.0, 2.0]]), torch.tensor([[1.0, 3.0, -1.0, 4.0]])
    )
    layer2 = PreActivation.from_box(torch.tensor([[1.0, 1.0]]), torch.tensor([[3.0, 5.0]]))
    return input_radius, [layer1, layer2]  # layer 2 is all active


def test_tightness_loss_hand_computed() -> None:
    inputs, layers = _hand_case()
    # Layer 1: d = 1, d0/d = 0.1 -> (0.5 - 0.1) / 0.5 = 0.8.
    # Layer 2: d = 1.5, d0/d = 1/15 -> (0.5 - 1/15) / 0.5 = 13/15.
    expected = (0.8 + 13 / 15) / 2
    assert tightness_loss(inputs, layers, 0.5).item() == pytest.approx(expected)


def test_relu_loss_hand_computed() -> None:
    _, layers = _hand_case()
    # Layer 1: centres [0, 2, -2, 3]; r_mean = (5/4) / (2/4) = 2.5 -> 0.4, term 0.2.
    # Spread around 0.75: active 1.5625 + 5.0625, inactive 7.5625: r_var = 0.876 > 0.5.
    # Layer 2 has no inactive neuron: its ratio is infinite and the term is skipped.
    assert relu_balance_loss(layers, 0.5).item() == pytest.approx(0.2 / 2)
    assert relu_balance_loss(layers[:1], 0.5).item() == pytest.approx(0.2)


def test_relu_loss_is_differentiable_and_states() -> None:
    lower = torch.tensor([[-1.0, 1.0, -3.0, 2.0]], requires_grad=True)
    upper = torch.tensor([[1.0, 3.0, -1.0, 4.0]], requires_grad=True)
    layer = PreActivation.from_box(lower, upper)
    relu_balance_loss([layer], 0.5).backward()
    assert lower.grad is not None and torch.isfinite(lower.grad).all()
    assert upper.grad.abs().sum() > 0
    assert relu_states([layer]) == (0.5, 0.25)
    # A skipped layer (all neurons active) must not poison the gradient with 0 * inf.
    lower2 = torch.tensor([[1.0, 2.0]], requires_grad=True)
    skipped = PreActivation.from_box(lower2, lower2 + 1)
    relu_balance_loss(
        [PreActivation.from_box(lower.detach(), upper.detach()), skipped], 0.5
    ).backward()
    assert torch.equal(lower2.grad, torch.zeros(1, 2))


def test_regularizer_weight() -> None:
    assert regularizer_weight(0.5, 0.0, 0.4) == 0.5
    assert regularizer_weight(0.5, 0.1, 0.4) == pytest.approx(0.375)
    assert regularizer_weight(0.5, 0.4, 0.4) == 0.0


# --- losses ------------------------------------------------------------------------


def test_margin_matrix_rows() -> None:
    """Rows e_y - e_j for every other class j, in class order (the true class is the
    robust loss's index 0)."""
    spec = margin_matrix(torch.tensor([1, 0]), 3)
    assert spec.tolist() == [
        [[-1.0, 1.0, 0.0], [0.0, 1.0, -1.0]],
        [[1.0, -1.0, 0.0], [1.0, 0.0, -1.0]],
    ]


def test_robust_cross_entropy_hand_computed() -> None:
    lower = torch.tensor([[1.0, 2.0]])
    expected = math.log(1 + math.exp(-1) + math.exp(-2))
    assert robust_cross_entropy(lower).item() == pytest.approx(expected)
    assert robust_cross_entropy(torch.zeros(4, 9)).item() == pytest.approx(math.log(10))


def test_crown_ibp_mix() -> None:
    ibp, crown = torch.tensor([[-2.0]]), torch.tensor([[0.0]])
    assert crown_ibp_mix(ibp, crown, 0.0, 0.4).item() == 0.0
    assert crown_ibp_mix(ibp, crown, 0.1, 0.4).item() == pytest.approx(-0.5)
    assert crown_ibp_mix(ibp, crown, 0.4, 0.4).item() == -2.0


# --- interval propagation ----------------------------------------------------------


def test_interval_exact_on_a_linear_layer() -> None:
    layer = nn.Linear(2, 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[2.0, -3.0]]))
        layer.bias.fill_(0.5)
    x = torch.tensor([[0.5, 0.5]])
    result = IntervalNetwork(layer)(x, 0.1)
    # 2*[0.4, 0.6] - 3*[0.4, 0.6] + 0.5 = [0.8 - 1.8 + 0.5, 1.2 - 1.2 + 0.5]
    assert result.lower.item() == pytest.approx(-0.5)
    assert result.upper.item() == pytest.approx(0.5)
    assert result.logits.item() == pytest.approx(0.0)


class _TinyResNet(nn.Module):
    """Every layer type of the registered architectures, small: grouped convs, BatchNorm,
    a residual addition, average pooling and a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=4)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.AvgPool2d(2)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * 6 * 6, 16), nn.BatchNorm1d(16),
                                  nn.ReLU(), nn.Linear(16, 10))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        h = torch.relu(self.bn(self.grouped(h)) + h)
        return self.head(self.pool(h))


@pytest.mark.parametrize("name", ["cnn_4layer", "tiny_resnet"])
@pytest.mark.parametrize("train_mode", [True, False])
def test_interval_bounds_contain_sampled_outputs(name: str, train_mode: bool) -> None:
    size = 28 if name == "cnn_4layer" else 12
    network = create_model(name, 1, 28, 10) if name == "cnn_4layer" else _TinyResNet()
    model = NormalizedModel(network, (0.13,), (0.31,))
    ibp_init(model)
    x = torch.rand(16, 1, size, size)
    spec = margin_matrix(torch.randint(0, 10, (16,)), 10)
    model.train(train_mode)
    with torch.no_grad():
        result = IntervalNetwork(model)(x, 0.02, spec)
        if train_mode:
            _freeze_batch_stats(model, x)  # sample with the statistics the bounds used
        model.eval()
        for _ in range(20):
            noisy = (x + torch.empty_like(x).uniform_(-0.02, 0.02)).clamp(0, 1)
            margins = torch.einsum("nmk,nk->nm", spec, model(noisy))
            assert (margins >= result.lower - 1e-4).all()
            assert (margins <= result.upper + 1e-4).all()
        assert (result.lower <= result.upper).all()


def _freeze_batch_stats(model: nn.Module, x: torch.Tensor) -> None:
    """Set running statistics to the (biased) batch statistics of the clean batch ``x``,
    which is what BatchNorm in train mode normalizes with."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d)]
    seen: dict[nn.Module, torch.Tensor] = {}
    hooks = [
        m.register_forward_pre_hook(lambda m, args: seen.setdefault(m, args[0])) for m in norms
    ]
    model.train()
    model(x)
    for h in hooks:
        h.remove()
    for m in norms:
        inp = seen[m]
        dims = [0] + list(range(2, inp.ndim))
        m.running_mean.copy_(inp.mean(dims))
        m.running_var.copy_(inp.var(dims, unbiased=False))


def test_interval_rejects_unsupported_layers() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
    with pytest.raises(ModelError, match="Tanh"):
        IntervalNetwork(model)


@pytest.mark.parametrize("kind", [ScheduleKind.SMOOTHED, ScheduleKind.LINEAR])
def test_schedules_equal_auto_lirpa(kind: ScheduleKind) -> None:
    import importlib

    from certify.bounds.lirpa_compat import load_auto_lirpa

    load_auto_lirpa()  # the package imports only after the compatibility patches
    schedulers = importlib.import_module("auto_LiRPA.eps_scheduler")
    cls = (
        schedulers.SmoothedScheduler
        if kind is ScheduleKind.SMOOTHED
        else schedulers.LinearScheduler
    )
    reference = cls(0.3, "start=2,length=5")
    reference.set_epoch_length(7)
    mine = EpsSchedule(0.3, start=2, length=5, epoch_length=7, kind=kind)
    for epoch in range(1, 10):
        reference.train()
        reference.step_epoch(
            verbose=False
        ) if kind is ScheduleKind.LINEAR else reference.step_epoch()
        for batch in range(7):
            reference.step_batch()
            assert mine.eps(epoch, batch) == pytest.approx(reference.get_eps(), abs=1e-12)


# --- hand-written backward of the interval pass --------------------------------------


def _reference_relu(center: torch.Tensor, radius: torch.Tensor) -> tuple[torch.Tensor, ...]:
    lower, upper = torch.relu(center - radius), torch.relu(center + radius)
    new_center = torch.lerp(lower, upper, 0.5)
    return new_center, new_center - lower


def _reference_batch_norm(x, center, radius, weight, bias, eps):  # type: ignore[no-untyped-def]
    dims = [0, *range(2, x.ndim)]
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean = x.mean(dims)
    var = ((x * x).mean(dims) - mean * mean).clamp(min=0.0)
    scale = torch.rsqrt(var + eps) * (weight if weight is not None else 1.0)
    shift = -mean * scale + (bias if bias is not None else 0.0)
    s, t = scale.view(shape), shift.view(shape)
    return x * s + t, center * s + t, radius * s.abs()


def test_interval_relu_gradient_matches_autograd() -> None:
    from certify.bounds.interval_autograd import IntervalReLU as _IntervalReLU

    torch.manual_seed(0)
    center = torch.randn(16, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    radius = torch.rand(16, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    new_center, new_radius, lower, upper, active, inactive = _IntervalReLU.apply(center, radius)
    ref_center, ref_radius = _reference_relu(center, radius)
    assert torch.equal(new_center, ref_center) and torch.equal(new_radius, ref_radius)
    assert torch.equal(active, (lower > 0).double()) and torch.equal(inactive, (upper < 0).double())
    g_c, g_r = torch.randn_like(center), torch.randn_like(center)
    mine = torch.autograd.grad((new_center * g_c + new_radius * g_r).sum(), (center, radius))
    ref = torch.autograd.grad((ref_center * g_c + ref_radius * g_r).sum(), (center, radius))
    for a, b in zip(mine, ref, strict=True):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)
    # Only one output used (the other's gradient is None).
    (g,) = torch.autograd.grad(_IntervalReLU.apply(center, radius)[1].sum(), (radius,))
    (g_ref,) = torch.autograd.grad(_reference_relu(center, radius)[1].sum(), (radius,))
    assert torch.allclose(g, g_ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", [(12, 4, 3, 3), (12, 5)])
def test_interval_batch_norm_gradient_matches_autograd(affine: bool, shape: tuple) -> None:
    from certify.bounds.interval_autograd import IntervalBatchNorm as _IntervalBatchNorm

    torch.manual_seed(1)

    def leaf(t: torch.Tensor) -> torch.Tensor:
        return t.double().requires_grad_()

    x, center, radius = (
        leaf(torch.randn(shape) * 2 + 1),
        leaf(torch.randn(shape)),
        leaf(torch.rand(shape)),
    )
    weight = leaf(torch.randn(shape[1])) if affine else None
    bias = leaf(torch.randn(shape[1])) if affine else None
    inputs = [t for t in (x, center, radius, weight, bias) if t is not None]
    mine = _IntervalBatchNorm.apply(x, center, radius, weight, bias, 1e-5)[:3]
    ref = _reference_batch_norm(x, center, radius, weight, bias, 1e-5)
    grads = [torch.randn_like(t) for t in ref]
    for a, b in zip(mine, ref, strict=True):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)

    def loss(outputs: tuple) -> torch.Tensor:
        return sum((a * g).sum() for a, g in zip(outputs, grads, strict=True))

    mine_g = torch.autograd.grad(loss(mine), inputs)
    ref_g = torch.autograd.grad(loss(ref), inputs)
    for a, b in zip(mine_g, ref_g, strict=True):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-10)
    # Gradient through the radius alone (the clean output unused, as in a robust loss).
    (g,) = torch.autograd.grad(
        _IntervalBatchNorm.apply(x, center, radius, weight, bias, 1e-5)[2].sum(), (x,)
    )
    (g_ref,) = torch.autograd.grad(
        _reference_batch_norm(x, center, radius, weight, bias, 1e-5)[2].sum(), (x,)
    )
    assert torch.allclose(g, g_ref, rtol=1e-9, atol=1e-10)


def test_selection_takes_the_lowest_verified_then_clean_error_at_eps_max() -> None:
    from training.selection import Best, is_candidate, select

    assert not is_candidate(0.05, 0.1) and is_candidate(0.1, 0.1)
    best = Best()
    assert select(best, 3, False, (0.1, 0.1)) is None  # still in the ramp
    best = select(best, 4, True, (0.5, 0.2))
    assert best == Best(4, 0.5, 0.2)
    assert select(best, 5, True, (0.5, 0.3)) is None  # same verified, worse clean
    assert select(best, 6, True, (0.5, 0.1)) == Best(6, 0.5, 0.1)
    assert select(best, 7, True, (0.6, 0.0)) is None
    # Without a validation split every epoch at eps_max wins: the last one stays.
    chosen = select(Best(4, float("nan"), float("nan")), 8, True, None)
    assert chosen is not None and chosen.epoch == 8
