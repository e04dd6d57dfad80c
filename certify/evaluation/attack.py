"""Projected gradient descent (PGD) under an L_inf ball clipped to the pixel box.

PGD gives an upper estimate of robust accuracy: an image it attacks successfully can
never be verified, which the evaluation uses as a consistency check of the bounds. Each
run starts at a random point of the ball and ascends the sign of the gradient of one
loss (the worst margin, or the cross-entropy, which finds other points); runs are
repeated for each loss and restart until the image is attacked. An image leaves the
batch as soon as a misclassified point is found, so the attack costs little on images
that fall quickly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import torch
import torch.nn.functional as F
from torch import nn

from certify.core.eps_box import eps_box
from certify.core.errors import UsageError


class AttackLoss(StrEnum):
    """What a PGD run ascends: the best other logit minus the true one, or the
    cross-entropy of the true class."""

    MARGIN = "margin"
    CE = "ce"


@dataclass(frozen=True)
class PGDConfig:
    steps: int = 100
    restarts: int = 1
    losses: tuple[AttackLoss, ...] = (AttackLoss.MARGIN,)
    # Step size as a multiple of eps / steps: 2.5 lets a run cross the ball from one
    # side to the other with room to spare (Madry et al.).
    step_scale: float = 2.5

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise UsageError(f"{self.steps} steps: give 0 or more", param="pgd_steps")
        if self.restarts < 1:
            raise UsageError(f"{self.restarts} restarts: give at least 1", param="pgd_restarts")
        if not self.losses:
            raise UsageError("give at least one loss", param="pgd_loss")
        object.__setattr__(self, "losses", tuple(AttackLoss(loss) for loss in self.losses))

    @property
    def runs(self) -> int:
        """Random starts per image at most: every restart of every loss."""
        return self.restarts * len(self.losses)


def parse_losses(text: str) -> tuple[AttackLoss, ...]:
    """``"margin"``, ``"ce"`` or ``"both"`` (also ``"margin,ce"``) as losses."""
    key = text.strip().lower()
    names = ("margin", "ce") if key == "both" else [n.strip() for n in key.split(",") if n]
    try:
        return tuple(AttackLoss(name) for name in names)
    except ValueError:
        raise UsageError(
            f"unknown loss {text!r}: use margin, ce or both", param="pgd_loss"
        ) from None


def worst_margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Best other logit minus the true logit; > 0 means misclassified."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.clone()
    others.scatter_(1, labels[:, None], float("-inf"))
    return others.max(dim=1).values - true


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels, reduction="none")


_LOSSES: dict[AttackLoss, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    AttackLoss.MARGIN: worst_margin,
    AttackLoss.CE: _cross_entropy,
}


def pgd_attack(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    config: PGDConfig = PGDConfig(),
    seed: int = 0,
    indices: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attack each image; return (robust, adversarial images).

    ``robust[i]`` is False when some point in the ball (the clean image included) is
    misclassified. The returned images are, per sample, the first misclassified point
    found, else the last iterate. The random start of image ``i`` depends only on
    ``seed``, its data set index ``indices[i]``, the loss and the restart, so the outcome
    does not depend on how the data set is split into batches or processes.
    """
    if indices is None:
        indices = torch.arange(len(images))
    lower, upper = eps_box(images, eps)
    with torch.no_grad():
        found = worst_margin(model(images), labels) > 0
    best = images.clone()
    if eps == 0 or config.steps == 0:
        return ~found, best
    step = config.step_scale * eps / config.steps
    for run in range(config.runs):
        loss = config.losses[run % len(config.losses)]
        todo = ~found
        if not todo.any():
            break
        start = _start_noise(images.shape[1:], indices[todo.cpu()], seed, run)
        x = lower[todo] + start.to(images.device) * (upper[todo] - lower[todo])
        adv, hit = signed_gradient_ascent(
            model, x, labels[todo], lower[todo], upper[todo], step, config.steps, _LOSSES[loss]
        )
        idx = todo.nonzero().squeeze(1)
        best[idx] = adv
        found[idx] = hit
    return ~found, best


def _start_noise(shape: torch.Size, indices: torch.Tensor, seed: int, run: int) -> torch.Tensor:
    """Uniform noise in [0, 1) per image, drawn from a generator of its own."""
    noise = torch.empty(len(indices), *shape)
    for row, index in enumerate(indices.tolist()):
        key = (seed * 1_000_003 + index) * 101 + run
        noise[row] = torch.rand(shape, generator=torch.Generator().manual_seed(key))
    return noise


def signed_gradient_ascent(
    model: nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor,
    lower: torch.Tensor,
    upper: torch.Tensor,
    step: float,
    steps: int,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Signed-gradient ascent on ``loss_fn``, keeping the first misclassified point per
    image; an image leaves the batch once it has one."""
    hit = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    keep = x.detach().clone()
    live = torch.arange(len(x), device=x.device)  # the images still in the batch
    for i in range(steps + 1):
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            logits = model(x)
            newly = (worst_margin(logits, labels[live]) > 0).detach()
            keep[live[newly]] = x.detach()[newly]
            hit[live[newly]] = True
            if i == steps or newly.all():
                break
            (grad,) = torch.autograd.grad(loss_fn(logits, labels[live]).sum(), x)
        stay = ~newly
        live, x, grad = live[stay], x.detach()[stay], grad[stay]
        x = torch.min(torch.max(x + step * grad.sign(), lower[live]), upper[live])
    keep[live[~hit[live]]] = x.detach()[~hit[live]]
    return keep, hit
