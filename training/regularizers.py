"""The two warmup regularizers of Shi et al. (2021), Section 3.3, from IBP bounds.

``L_tightness`` keeps the width of the bounds from growing across layers: with
d0 = mean((u0 - l0) / 2) at the network input and d_i the same at the input of the i-th
ReLU, it penalizes layers whose d0 / d_i falls below the tolerance tau.

``L_relu`` balances active (l > 0) and inactive (u < 0) ReLUs, which IBP training
otherwise drives towards dead ones: for the centres c = (u + l) / 2 it compares the
mean of c over active and inactive neurons, and the spread of c around its mean over
both, each ratio folded to min(r, 1/r) so that either imbalance counts.

Both are averaged over the ReLU layers; the loss adds them with weight
lambda * (1 - eps_t / eps_max) during the warmup only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from certify.bounds.interval import PreActivation

_TINY = 1e-12


@dataclass
class RegularizerTerms:
    tightness: Tensor
    relu: Tensor

    @property
    def total(self) -> Tensor:
        return self.tightness + self.relu


def tightness_loss(input_radius: Tensor, pre_relu: Sequence[PreActivation], tol: float) -> Tensor:
    """(1/L) sum_i relu(tol - d0 / d_i) / tol, with d the mean radius of the bounds."""
    d0 = input_radius.mean()
    if not pre_relu:
        return torch.zeros((), device=d0.device)
    # One stack of the per-layer means, then the formula once for all layers: a few
    # small ops instead of a few per layer (and as many again in the backward).
    d = torch.stack([layer.radius.mean() for layer in pre_relu])
    return (F.relu(tol - d0 / d.clamp(min=_TINY)) / tol).mean()


def relu_balance_loss(pre_relu: Sequence[PreActivation], tol: float) -> Tensor:
    """(1/L) sum_i (relu(tol - r_mean) + relu(tol - r_var)) / tol, non-finite layers skipped."""
    if not pre_relu:
        return torch.zeros(())
    # Rows per layer: mean_num, mean_den, var_num, var_den; the ratios of all layers are
    # then computed together.
    parts = torch.stack([_relu_layer_sums(layer) for layer in pre_relu])
    # A layer without active or without inactive neurons gives x/0: a term that carries
    # no signal and is skipped, as in the seed. Dividing by 1 there instead keeps the
    # gradient finite (0 * inf would poison it) and the loss a single graph.
    valid = torch.isfinite(parts).all(dim=1) & (parts[:, 1] != 0) & (parts[:, 3] != 0)
    numerators, denominators = parts[:, 0::2], parts[:, 1::2]
    ratios = numerators / torch.where(valid[:, None], denominators, 1.0)
    ratios = torch.minimum(ratios, 1 / ratios.clamp(min=_TINY))
    terms = F.relu(tol - ratios).sum(dim=1) / tol
    return torch.where(valid, terms, 0.0).sum() / len(pre_relu)


def _relu_layer_sums(layer: PreActivation) -> Tensor:
    active, inactive = layer.masks()
    return _MaskedSums.apply(layer.center.flatten(), active, inactive)


class _MaskedSums(torch.autograd.Function):
    """The four sums of one layer's ReLU term, with a hand-written backward.

    For the centres c, their deviations d = c - mean(c) and the active and inactive masks
    a and b: [c . a, -(c . b), d^2 . a, d^2 . b]. mean(c * active) / -mean(c * inactive)
    is a ratio of the first two (the counts cancel, so sums suffice); the spreads are
    the last two. Dot products with float masks are far cheaper on CPU than
    ``torch.where``; the backward, the exact derivative written out (d/dc_j of
    sum_i d_i^2 a_i is 2 d_j a_j - 2/n sum_i d_i a_i), takes about half the passes over
    the activations that autograd takes for the same formula.
    """

    @staticmethod
    def forward(ctx: Any, center: Tensor, active: Tensor, inactive: Tensor) -> Tensor:
        deviation = center - center.mean()
        spread = deviation.square()
        ctx.save_for_backward(deviation, active, inactive)
        return torch.stack(
            [
                torch.dot(center, active),
                -torch.dot(center, inactive),
                torch.dot(spread, active),
                torch.dot(spread, inactive),
            ]
        )

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        deviation, active, inactive = ctx.saved_tensors
        g_active, g_inactive, g_spread_active, g_spread_inactive = grad.unbind()
        # Through the mean: -2/n * (g2 * sum(d * a) + g3 * sum(d * b)), the same for all.
        through_mean = (2.0 / deviation.numel()) * (
            g_spread_active * torch.dot(deviation, active)
            + g_spread_inactive * torch.dot(deviation, inactive)
        )
        result = (deviation * (2.0 * g_spread_active)).add_(g_active).mul_(active)
        on_inactive = (deviation * (2.0 * g_spread_inactive)).sub_(g_inactive)
        return result.addcmul_(on_inactive, inactive).sub_(through_mean), None, None


def warmup_regularizers(
    input_radius: Tensor, pre_relu: Sequence[PreActivation], tol: float
) -> RegularizerTerms:
    return RegularizerTerms(
        tightness_loss(input_radius, pre_relu, tol), relu_balance_loss(pre_relu, tol)
    )


def regularizer_weight(reg_lambda: float, eps: float, max_eps: float) -> float:
    """lambda * (1 - eps_t / eps_max): strongest at the start of the warmup."""
    if max_eps <= 0:
        return reg_lambda
    return reg_lambda * (1.0 - eps / max_eps)


@torch.no_grad()
def relu_states(pre_relu: Sequence[PreActivation]) -> tuple[float, float]:
    """Shares of active and inactive ReLUs, averaged over the layers as in the seed."""
    if not pre_relu:
        return 0.0, 0.0
    shares = torch.stack([torch.stack([m.mean() for m in p.masks()]) for p in pre_relu])
    active, inactive = shares.mean(dim=0).tolist()
    return active, inactive
