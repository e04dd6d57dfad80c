"""SABR (Müller et al., "Certified Training: Small Boxes are All You Need", ICLR 2023).

IBP's loss over a small box inside the eps-ball instead of over the whole ball: PGD
finds a point x* in the ball B(x, eps) ∩ [0, 1] (network in eval mode), its centre is
moved to lie at least tau = ``ratio`` x eps inside the ball, and the loss is the robust
cross-entropy of IBP's margin bounds over the box of radius tau around it. As in the
authors' code, a clean train-mode pass comes first (its batch statistics enter
BatchNorm's running ones, which the attack then uses), and IBP normalizes with the
clean batch's statistics without moving the running ones again. The epoch loop adds
the seed's warmup regularizers over the small box's bounds, and the run starts from
IBP initialization.

Two departures from the authors' code, both kept small: the small box is also cut to
the ball (their projection leaves it partly outside where the ball, clipped to
[0, 1], is narrower than 2 tau), and the attack steps by a fraction of each pixel's
box half-width rather than of eps (they differ where [0, 1] clips the box).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from certify.bounds.training_bounders import IBPBounder
from certify.core.datasets import Dataset
from certify.core.eps_box import eps_box
from certify.core.errors import UsageError
from training.attack import TrainingAttack, adversarial_points, attack_starts, eval_mode
from training.losses import clean_errors, robust_cross_entropy, verified_errors
from training.methods import nearest_published
from training.objective import Terms


@dataclass(frozen=True)
class SabrLoss:
    """The small box's radius as a fraction of eps (lambda in the paper), and the
    attack that finds its centre."""

    ratio: float
    attack: TrainingAttack

    def __post_init__(self) -> None:
        if not 0 < self.ratio <= 1:
            raise UsageError(f"{self.ratio!r}: must be in (0, 1]", param="sabr_ratio")

    def settings(self) -> dict[str, float | int]:
        return {
            "sabr_ratio": self.ratio,
            **self.attack.settings(),
        }

    def check(self, model: nn.Module) -> None:
        """Any model: nothing to refuse."""

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
        starts = attack_starts(seeds, self.attack.restarts, tuple(x.shape[1:]))
        with torch.no_grad():
            model(x)  # the clean batch's statistics enter the running ones
        with eval_mode(model):
            points = adversarial_points(model, x, y, eps, self.attack, starts)
            with torch.no_grad():
                adv_logits = model(points)
        lower, upper = small_box(x, points, eps, self.ratio)
        result = bounder.bounds_at(x, lower, upper, spec, update_running=False)
        assert result.logits is not None
        loss = robust_cross_entropy(result.lower)
        stats = {
            "robust_ce": loss.item(),
            "verified_err": float(verified_errors(result.lower).float().mean()),
            "adv_err": float(clean_errors(adv_logits, y).float().mean()),
        }
        return Terms(loss, result, result.logits, stats)


def small_box(x: Tensor, points: Tensor, eps: float, ratio: float) -> tuple[Tensor, Tensor]:
    """The box of radius ``ratio`` x eps around ``points`` moved to lie inside the
    eps-ball of ``x`` clipped to [0, 1] (and cut to it where that ball is narrower)."""
    tau = ratio * eps
    lower, upper = eps_box(x, eps)
    centre = torch.max(torch.min(points, upper - tau), lower + tau)
    return torch.max(centre - tau, lower), torch.min(centre + tau, upper)


# The paper's settings (its README's commands for CNN7): lambda by data set and eps; the
# attack is its default, 8 steps of half the box's half-width, shrunk 10x from steps
# 4 and 7 on.
_RATIOS: dict[tuple[Dataset, float], float] = {
    (Dataset.MNIST, 0.1): 0.4,
    (Dataset.MNIST, 0.3): 0.6,
    (Dataset.CIFAR, 2 / 255): 0.1,
    (Dataset.CIFAR, 8 / 255): 0.7,
    (Dataset.TINYIMAGENET, 1 / 255): 0.4,
}
_ATTACK = TrainingAttack(steps=8, step_size=0.5, decay_at=(0.5, 0.8, 0.9), decay_factor=0.1)


def published_settings(dataset: Dataset, eps: float) -> SabrLoss:
    """The paper's lambda for ``dataset`` at the published eps nearest to ``eps`` (by
    ratio), with its attack."""
    return SabrLoss(nearest_published(_RATIOS, dataset, eps), _ATTACK)
