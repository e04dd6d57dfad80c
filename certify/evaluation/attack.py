"""Projected gradient descent (PGD) under an L_inf ball clipped to the pixel box.

PGD gives an upper estimate of robust accuracy: a sample it attacks successfully can
never be verified, which the evaluation uses as a consistency check of the bounds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from certify.core.errors import UsageError


@dataclass(frozen=True)
class PGDConfig:
    steps: int = 100
    restarts: int = 1
    # Step size as a multiple of eps / steps: 2.5 lets a run cross the ball from one
    # side to the other with room to spare (Madry et al.).
    step_scale: float = 2.5

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise UsageError(f"{self.steps} steps: give 0 or more", param="pgd_steps")
        if self.restarts < 1:
            raise UsageError(f"{self.restarts} restarts: give at least 1", param="pgd_restarts")


def _worst_margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Best other logit minus the true logit; > 0 means misclassified."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.clone()
    others.scatter_(1, labels[:, None], float("-inf"))
    return others.max(dim=1).values - true


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
    ``seed``, its data set index ``indices[i]`` and the restart, so the outcome does not
    depend on how the data set is split into batches or processes.
    """
    if indices is None:
        indices = torch.arange(len(images))
    lower = (images - eps).clamp(0.0, 1.0)
    upper = (images + eps).clamp(0.0, 1.0)
    with torch.no_grad():
        found = _worst_margin(model(images), labels) > 0
    best = images.clone()
    if eps == 0 or config.steps == 0:
        return ~found, best
    step = config.step_scale * eps / config.steps
    for restart in range(config.restarts):
        todo = ~found
        if not todo.any():
            break
        start = _start_noise(images.shape[1:], indices[todo.cpu()], seed, restart)
        x = lower[todo] + start.to(images.device) * (upper[todo] - lower[todo])
        adv, hit = _pgd_run(model, x, labels[todo], lower[todo], upper[todo], step, config.steps)
        idx = todo.nonzero().squeeze(1)
        best[idx] = adv
        found[idx] = hit
    return ~found, best


def _start_noise(shape: torch.Size, indices: torch.Tensor, seed: int, restart: int) -> torch.Tensor:
    """Uniform noise in [0, 1) per image, drawn from a generator of its own."""
    noise = torch.empty(len(indices), *shape)
    for row, index in enumerate(indices.tolist()):
        key = (seed * 1_000_003 + index) * 101 + restart
        noise[row] = torch.rand(shape, generator=torch.Generator().manual_seed(key))
    return noise


def _pgd_run(
    model: nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor,
    lower: torch.Tensor,
    upper: torch.Tensor,
    step: float,
    steps: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Signed-gradient ascent on the worst margin, keeping the first hit per sample."""
    hit = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    keep = x.detach().clone()
    for i in range(steps + 1):
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            margin = _worst_margin(model(x), labels)
            newly = (margin > 0).detach() & ~hit
            keep[newly] = x.detach()[newly]
            hit |= newly
            if i == steps or hit.all():
                break
            (grad,) = torch.autograd.grad(margin.sum(), x)
        x = torch.min(torch.max(x.detach() + step * grad.sign(), lower), upper)
    keep[~hit] = x.detach()[~hit]
    return keep, hit
