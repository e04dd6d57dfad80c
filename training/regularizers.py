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

import torch
import torch.nn.functional as F
from torch import Tensor

from training.interval import PreActivation

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
    total = torch.zeros((), device=d0.device)
    if not pre_relu:
        return total
    for layer in pre_relu:
        d = layer.radius.mean()
        total = total + F.relu(tol - d0 / d.clamp(min=_TINY)) / tol
    return total / len(pre_relu)


def relu_balance_loss(pre_relu: Sequence[PreActivation], tol: float) -> Tensor:
    """(1/L) sum_i (relu(tol - r_mean) + relu(tol - r_var)) / tol, non-finite layers skipped."""
    if not pre_relu:
        return torch.zeros(())
    total = torch.zeros((), device=pre_relu[0].center.device)
    for layer in pre_relu:
        total = total + _relu_layer_term(layer, tol)
    return total / len(pre_relu)


def _relu_layer_term(layer: PreActivation, tol: float) -> Tensor:
    center = layer.center.flatten()
    active, inactive = layer.masks()
    # mean(c * active) / -mean(c * inactive): the counts cancel, so sums suffice. Dot
    # products with float masks are far cheaper on CPU than torch.where.
    mean_num, mean_den = torch.dot(center, active), -torch.dot(center, inactive)
    spread = (center - center.mean()).square()
    var_num, var_den = torch.dot(spread, active), torch.dot(spread, inactive)
    # A layer without active or without inactive neurons gives x/0: a term that carries
    # no signal and is skipped, as in the seed. Dividing by 1 there instead keeps the
    # gradient finite (0 * inf would poison it) and the loss a single graph.
    parts = torch.stack([mean_num, mean_den, var_num, var_den])
    valid = torch.isfinite(parts).all() & (mean_den != 0) & (var_den != 0)
    one = torch.ones_like(mean_den)
    r_mean = mean_num / torch.where(valid, mean_den, one)
    r_var = var_num / torch.where(valid, var_den, one)
    r_mean = torch.minimum(r_mean, 1 / r_mean.clamp(min=_TINY))
    r_var = torch.minimum(r_var, 1 / r_var.clamp(min=_TINY))
    term = (F.relu(tol - r_mean) + F.relu(tol - r_var)) / tol
    return torch.where(valid, term, torch.zeros_like(term))


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
