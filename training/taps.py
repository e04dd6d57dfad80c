"""TAPS and STAPS (Mao et al., "Connecting Certified and Adversarial Training",
NeurIPS 2023).

The network (a Sequential one behind its normalization) is split into a feature
extractor and a head of its last ``head_layers`` layers. IBP bounds the features over
the input box; PGD then searches that feature box through the head, one point per
other class j, for the largest z_j - z_y; and the loss is the product of the robust
cross-entropy of those estimates (L_TAPS) and of IBP's bounds of the head over the
feature box (L_IBP). The points carry no gradient: a gradient connector passes the
gradient at each point to the feature bounds it lies near (the "rectified linear
link": linear in the point's distance to a bound within ``link_slack`` of the box's
width, none farther in), and L_TAPS's gradient is multiplied by ``grad_scale``.

STAPS takes the box of SABR instead of the eps-ball: PGD (on the whole network) finds
a point x*, and the box of half-width ``ratio`` times the ball's (per pixel) around x*,
moved inside the ball, is propagated. During the eps warmup both take IBP's loss over
their box (plain IBP for TAPS, SABR for STAPS), with the seed's regularizers.

BatchNorm takes the clean batch's statistics everywhere, the running ones moving once
per step: in the IBP passes, and, frozen, in the PGD searches and the estimates (as
the authors' TAPS code does; for STAPS's input attack as CTBench does, where the
authors' code let the extractor's layers recompute statistics at each PGD iterate).
CTRAIN bounds the extractor with statistics that are never updated (those of the
model when it was wrapped).
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from certify.bounds.interval import IntervalNetwork, IntervalResult
from certify.bounds.training_bounders import IBPBounder
from certify.core.datasets import Dataset
from certify.core.eps_box import eps_box
from certify.core.errors import UsageError
from training.attack import TrainingAttack, adversarial_points, attack_starts, sample_noise
from training.losses import clean_errors, robust_cross_entropy, verified_errors
from training.methods import nearest_published
from training.objective import Terms

# Added to an image's seed for its starts in the feature box, so that they are not drawn
# from the same stream as STAPS's starts in the input box.
FEATURE_SEEDS = 2**61


@dataclass(frozen=True)
class TapsLoss:
    """TAPS (``small_box`` None) or STAPS: the scale of L_TAPS's gradient, the head's
    layer count, the feature-space PGD's steps, and STAPS's box (its ratio and input
    attack)."""

    grad_scale: float
    head_layers: int
    steps: int
    small_box: tuple[float, TrainingAttack] | None = None
    restarts: int = 1
    link_slack: float = 0.5
    link_tol: float = 1e-5
    # The split of each model trained with it, built once.
    _splits: weakref.WeakKeyDictionary = field(
        default_factory=weakref.WeakKeyDictionary, compare=False, hash=False, repr=False
    )

    def __post_init__(self) -> None:
        checks = [
            ("taps_grad_scale", self.grad_scale, self.grad_scale > 0, "must be positive"),
            ("taps_head_layers", self.head_layers, self.head_layers >= 1, "give at least 1"),
            ("taps_steps", self.steps, self.steps >= 1, "give at least 1"),
        ]
        if self.small_box is not None:
            ratio = self.small_box[0]
            checks.append(("sabr_ratio", ratio, 0 < ratio < 1, "must be in (0, 1)"))
        for name, value, ok, reason in checks:
            if not ok:
                raise UsageError(f"{value!r}: {reason}", param=name)

    def settings(self) -> dict[str, float | int]:
        values: dict[str, float | int] = {
            "taps_grad_scale": self.grad_scale,
            "taps_head_layers": self.head_layers,
            "taps_steps": self.steps,
        }
        if self.small_box is not None:
            ratio, attack = self.small_box
            values.update(sabr_ratio=ratio, **attack.settings())
        return values

    def check(self, model: nn.Module) -> None:
        """Refuses a model this split does not fit, before any training."""
        self._split(model)

    def terms(
        self,
        model: nn.Module,
        bounder: IBPBounder,
        x: Tensor,
        y: Tensor,
        eps: float,
        spec: Tensor,
        seeds: Tensor,
        warmup: bool = False,
    ) -> Terms:
        lower, upper = eps_box(x, eps)
        split = self._split(model)
        stats: dict[str, float] = {}
        if self.small_box is not None:
            ratio, attack = self.small_box
            frozen = FrozenStatistics([split.normalize, *split.layers], x)
            starts = attack_starts(seeds, attack.restarts, tuple(x.shape[1:]))
            points = adversarial_points(frozen, x, y, eps, attack, starts)
            with torch.no_grad():
                stats["adv_err"] = float(clean_errors(frozen(points), y).float().mean())
            lower, upper = shrunk_box(points, lower, upper, ratio)
        if warmup:
            result = bounder.bounds_at(x, lower, upper, spec)
            assert result.logits is not None
            loss = robust_cross_entropy(result.lower)
            stats.update(
                robust_ce=loss.item(),
                verified_err=float(verified_errors(result.lower).float().mean()),
            )
            return Terms(loss, result, result.logits, stats)
        features = split.extractor.box_bounds(x, lower, upper)
        assert features.logits is not None
        head = split.head.box_bounds(features.logits, features.lower, features.upper, spec)
        assert head.logits is not None
        ibp = robust_cross_entropy(head.lower)
        estimates = self._estimates(split, features, spec, y, seeds)
        taps = robust_cross_entropy(-estimates)
        loss = _ScaledGradient.apply(taps, self.grad_scale) * ibp
        result = IntervalResult(
            head.logits,
            head.lower,
            head.upper,
            [*features.pre_relu, *head.pre_relu],
            features.input_bounds,
        )
        stats.update(
            robust_ce=ibp.item(),
            verified_err=float(verified_errors(head.lower).float().mean()),
            taps_ce=taps.item(),
        )
        return Terms(loss, result, head.logits, stats)

    def _estimates(
        self, split: _Split, features: IntervalResult, spec: Tensor, y: Tensor, seeds: Tensor
    ) -> Tensor:
        """Per image and other class j, z_j - z_y at the point PGD found for j in the
        feature box, with the gradient connector to the box's bounds."""
        assert features.logits is not None
        frozen = FrozenStatistics(split.head_layers, features.logits)
        lower, upper = features.lower, features.upper
        points = pivotal_points(
            frozen, lower.detach(), upper.detach(), spec, self.steps, self.restarts,
            sample_noise(seeds + FEATURE_SEEDS, (self.restarts, spec.shape[1], *lower.shape[1:])),
        )  # fmt: skip
        linked = _RectifiedLinearLink.apply(lower, upper, points, self.link_slack, self.link_tol)
        return estimate(frozen, linked, spec)

    def _split(self, model: nn.Module) -> _Split:
        found = self._splits.get(model)
        if found is None:
            found = self._splits[model] = _Split(model, self.head_layers)
        return found


class _Split:
    """A normalized Sequential network cut into feature extractor and head, with
    interval passes of both (built once per model)."""

    def __init__(self, model: nn.Module, head_layers: int) -> None:
        normalize, layers = getattr(model, "normalize", None), getattr(model, "model", None)
        if normalize is None or not isinstance(layers, nn.Sequential):
            raise UsageError(
                "taps and staps split a Sequential network behind its normalization; "
                f"{type(model).__name__} is not one: use another method",
                param="method",
            )
        if head_layers >= len(layers):
            raise UsageError(
                f"{head_layers}: the network has {len(layers)} layers; the head must "
                "leave at least one to the feature extractor",
                param="taps_head_layers",
            )
        self.normalize = normalize
        self.layers = list(layers)
        cut = len(layers) - head_layers
        self.head_layers = self.layers[cut:]
        self.extractor = IntervalNetwork(nn.Sequential(normalize, *self.layers[:cut]))
        self.head = IntervalNetwork(nn.Sequential(*self.head_layers))


class FrozenStatistics:
    """Passes through ``layers`` (modules applied in turn) in which every BatchNorm
    normalizes with the batch statistics of ``clean`` (computed once, with their
    gradient, as train mode would) and leaves its running statistics alone."""

    def __init__(self, layers: Sequence[nn.Module], clean: Tensor) -> None:
        self.layers = list(layers)
        self.statistics: dict[int, tuple[Tensor, Tensor]] = {}
        h = clean
        for i, layer in enumerate(self.layers):
            if isinstance(layer, nn.modules.batchnorm._BatchNorm) and layer.training:
                dims = [0, *range(2, h.dim())]
                self.statistics[i] = (h.mean(dims), h.var(dims, unbiased=False))
            h = self._layer(i, h)

    def __call__(self, x: Tensor) -> Tensor:
        for i in range(len(self.layers)):
            x = self._layer(i, x)
        return x

    def _layer(self, i: int, x: Tensor) -> Tensor:
        layer = self.layers[i]
        if i not in self.statistics:
            return layer(x)
        # Written out: F.batch_norm passes no gradient to given statistics.
        mean, var = self.statistics[i]
        shape = (1, -1, *[1] * (x.dim() - 2))
        out = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + layer.eps)
        if layer.weight is not None:
            out = out * layer.weight.view(shape) + layer.bias.view(shape)
        return out


def estimate(network: Callable[[Tensor], Tensor], points: Tensor, spec: Tensor) -> Tensor:
    """``points`` (N x J x features), one per margin row j of ``spec`` (N x J x K): the
    value of -(spec @ logits)_j = z_j - z_y at point j, as N x J."""
    n, j = points.shape[:2]
    logits = network(points.reshape(n * j, *points.shape[2:])).view(n, j, -1)
    margins = torch.einsum("njk,nik->nij", spec, logits)  # point i, margin row j
    return -torch.diagonal(margins, dim1=1, dim2=2)


def pivotal_points(
    network: Callable[[Tensor], Tensor],
    lower: Tensor,
    upper: Tensor,
    spec: Tensor,
    steps: int,
    restarts: int,
    noise: Tensor,
) -> Tensor:
    """For each image and margin row j, the point of the box [lower, upper] with the
    largest z_j - z_y that PGD visits: ``restarts`` uniform starts (``noise``: N x
    restarts x J x features in [0, 1)), ``steps`` signed steps of max(0.2, 2/steps)
    times the box's width, ten times smaller from step int(0.7 x steps) on (for 20 to
    50 steps, as TAPS's code), projected on the box. Detached: N x J x features."""
    width = (upper - lower).unsqueeze(1)
    low, high = lower.unsqueeze(1), upper.unsqueeze(1)
    decay_at = int(0.7 * steps) if 20 <= steps <= 50 else steps + 1
    best = torch.full(noise.shape[:1] + noise.shape[2:3], -math.inf, device=lower.device)
    best_points = low.expand(-1, noise.shape[2], *[-1] * (lower.dim() - 1)).clone()
    for restart in range(restarts):
        points = low + width * noise[:, restart].to(lower)
        rate = max(0.2, 2 / steps)
        for step in range(steps + 1):
            points = points.detach().requires_grad_(True)
            with torch.enable_grad():
                found = estimate(network, points, spec)
                grad = torch.autograd.grad(found.sum(), points)[0] if step < steps else None
            better = found.detach() > best
            best = torch.where(better, found.detach(), best)
            mask = better.view(*better.shape, *[1] * (points.dim() - 2))
            best_points = torch.where(mask, points.detach(), best_points)
            if grad is None:
                break
            if step == decay_at:
                rate *= 0.1
            points = torch.min(torch.max(points.detach() + rate * width * grad.sign(), low), high)
    return best_points.detach()


def shrunk_box(points: Tensor, lower: Tensor, upper: Tensor, ratio: float) -> tuple[Tensor, Tensor]:
    """STAPS's box: half-width ``ratio`` times the ball's (per pixel, after clipping to
    [0, 1]) around ``points``, moved inside [lower, upper]."""
    radius = (upper - lower) * 0.5 * ratio
    centre = torch.min(torch.max(points, lower + radius), upper - radius)
    return centre - radius, centre + radius


class _RectifiedLinearLink(torch.autograd.Function):
    """The identity on the points; backward, the gradient at each point reaches the
    box's upper bound in proportion to how far the point lies within ``slack`` times
    the box's width of it (and likewise the lower bound), summed over the points of an
    image; none reaches the points."""

    @staticmethod
    def forward(ctx, lower: Tensor, upper: Tensor, points: Tensor, slack: float, tol: float):  # type: ignore[override]
        ctx.save_for_backward(lower, upper, points)
        ctx.slack, ctx.tol = slack, tol
        return points.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        lower, upper, points = ctx.saved_tensors
        lower, upper = lower.unsqueeze(1), upper.unsqueeze(1)
        reach = (ctx.slack * (upper - lower)).clamp(min=ctx.tol)
        near_upper = points >= upper - ctx.slack * (upper - lower)
        near_lower = points <= lower + ctx.slack * (upper - lower)
        to_upper = (points - (upper - ctx.slack * (upper - lower))).clamp(min=0.5 * ctx.tol)
        to_lower = ((lower + ctx.slack * (upper - lower)) - points).clamp(min=0.5 * ctx.tol)
        grad_upper = (near_upper * grad * to_upper / reach).sum(1)
        grad_lower = (near_lower * grad * to_lower / reach).sum(1)
        return grad_lower, grad_upper, None, None, None


class _ScaledGradient(torch.autograd.Function):
    """The identity, whose gradient is multiplied by ``scale``."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return grad * ctx.scale, None


# The papers' settings (the TAPS scripts, CNN7): the head's layers, L_TAPS's gradient
# scale, PGD's steps in the feature box; for STAPS the box ratio, and its input attack
# (10 steps of 0.2).
_TAPS: dict[tuple[Dataset, float], tuple[int, float, int]] = {
    (Dataset.MNIST, 0.1): (4, 5.0, 20),
    (Dataset.MNIST, 0.3): (4, 5.0, 20),
    (Dataset.CIFAR, 2 / 255): (17, 5.0, 20),
    (Dataset.CIFAR, 8 / 255): (4, 5.0, 20),
    (Dataset.TINYIMAGENET, 1 / 255): (4, 5.0, 20),
}
_STAPS: dict[tuple[Dataset, float], tuple[int, float, int, float]] = {
    (Dataset.MNIST, 0.1): (4, 5.0, 20, 0.4),
    (Dataset.MNIST, 0.3): (4, 5.0, 20, 0.6),
    (Dataset.CIFAR, 2 / 255): (4, 2.0, 20, 0.1),
    (Dataset.CIFAR, 8 / 255): (4, 5.0, 20, 0.7),
    (Dataset.TINYIMAGENET, 1 / 255): (4, 5.0, 10, 0.6),
}
_STAPS_ATTACK = TrainingAttack(steps=10, step_size=0.2)


def published_taps(dataset: Dataset, eps: float) -> TapsLoss:
    """TAPS's settings for ``dataset`` at the published eps nearest to ``eps``."""
    head, scale, steps = nearest_published(_TAPS, dataset, eps)
    return TapsLoss(scale, head, steps)


def published_staps(dataset: Dataset, eps: float) -> TapsLoss:
    """STAPS's settings for ``dataset`` at the published eps nearest to ``eps``."""
    head, scale, steps, ratio = nearest_published(_STAPS, dataset, eps)
    return TapsLoss(scale, head, steps, small_box=(ratio, _STAPS_ATTACK))
