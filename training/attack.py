"""The adversarial attack inside a training step: PGD on the cross-entropy.

The methods that mix an attack with bounds (``mtl-ibp``, ``cc-ibp``, ``exp-ibp``,
``sabr``) ask it for the worst point it finds in a box around each input, clipped to the
pixel box [0, 1]. The point carries no gradient: the loss is differentiated at it, not
through the search. Random starts are drawn per image from a seed the epoch loop gives
each image of each batch (:func:`sample_noise`), so that a resumed run, or one split
over processes or chunks, starts from the same points as an uninterrupted single one.

Evaluation's PGD (:mod:`certify.evaluation.attack`) answers another question (is this
image attackable at all?) and stops at the first success; this one always runs its
steps, since the loss wants the worst point, not any misclassified one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from certify.core.eps_box import eps_box
from certify.core.errors import UsageError


class AttackStart(StrEnum):
    """Where each of the attack's restarts begins: a point drawn uniformly in the box
    (the papers'), or its centre (the input itself for a ball around it)."""

    RANDOM = "random"
    CENTRE = "centre"


@dataclass(frozen=True)
class TrainingAttack:
    """PGD's settings: ``steps`` signed-gradient steps of ``step_size`` times the box's
    half-width (per pixel, after clipping to [0, 1]), from ``restarts`` starts (uniform
    in the box, or its centre when not ``random_start``); of every point visited, the
    one with the highest loss is kept. The step shrinks by ``decay_factor`` from step
    ceil(f x steps) on, for each fraction f of ``decay_at``."""

    steps: int = 1
    step_size: float = 1.0
    restarts: int = 1
    random_start: bool = True
    decay_at: tuple[float, ...] = ()
    decay_factor: float = 0.1

    def settings(self) -> dict[str, float | int]:
        """Its options, by the names of :class:`~training.config.TrainConfig`'s fields."""
        return {
            "attack_steps": self.steps,
            "attack_step_size": self.step_size,
            "attack_restarts": self.restarts,
            "attack_start": AttackStart.RANDOM if self.random_start else AttackStart.CENTRE,
        }

    def step_scale(self, step: int) -> float:
        """The factor on the step size at ``step`` (from 0)."""
        passed = sum(step >= math.ceil(f * self.steps) for f in self.decay_at)
        return self.decay_factor**passed

    def __post_init__(self) -> None:
        checks = [
            ("attack_steps", self.steps, self.steps >= 1, "give at least 1"),
            ("attack_step_size", self.step_size, self.step_size > 0, "must be positive"),
            ("attack_restarts", self.restarts, self.restarts >= 1, "give at least 1"),
        ]
        for name, value, ok, reason in checks:
            if not ok:
                raise UsageError(f"{value!r}: {reason}", param=name)


def adversarial_points(
    model: Callable[[Tensor], Tensor],
    centre: Tensor,
    labels: Tensor,
    radius: float,
    attack: TrainingAttack,
    starts: Tensor | None = None,
) -> Tensor:
    """The point of highest cross-entropy that PGD visits in the L_inf box of ``radius``
    around each image of ``centre``, clipped to [0, 1]; detached. ``starts`` holds, per
    restart, uniform noise of the images' shape in [0, 1) that places the start in the
    box (needed when ``attack.random_start``). ``model`` runs as it is: the caller
    chooses its mode (or passes a network with frozen BatchNorm statistics)."""
    lower, upper = eps_box(centre, radius)
    step = attack.step_size * (upper - lower) * 0.5
    unseen = torch.full((len(centre),), -torch.inf, device=centre.device)
    best, best_loss = centre.detach(), unseen
    for restart in range(attack.restarts):
        if attack.random_start:
            if starts is None:
                raise ValueError("random starts need their noise")
            point = lower + starts[restart].to(centre) * (upper - lower)
        else:
            point = centre.detach().clone()
        run_best, run_loss = point, unseen
        for index in range(attack.steps):
            point = point.detach().requires_grad_(True)
            with torch.enable_grad():
                loss = F.cross_entropy(model(point), labels, reduction="none")
                (grad,) = torch.autograd.grad(loss.sum(), point)
            run_best, run_loss = _keep_worse(run_best, run_loss, point.detach(), loss.detach())
            moved = point.detach() + attack.step_scale(index) * step * grad.sign()
            point = torch.min(torch.max(moved, lower), upper)
        if attack.steps == 1 and attack.restarts == 1:
            # A single step's point is taken as it is (no forward pass to compare it
            # with its start), as in the expressive losses' reference code.
            return point.detach()
        with torch.no_grad():
            loss = F.cross_entropy(model(point), labels, reduction="none")
        if attack.steps == 1:
            run_best, run_loss = point, loss
        else:
            run_best, run_loss = _keep_worse(run_best, run_loss, point, loss)
        best, best_loss = _keep_worse(best, best_loss, run_best, run_loss)
    return best.detach()


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """The model in eval mode (BatchNorm on its running statistics, as the methods'
    attacks run), then back in its mode."""
    training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(training)


def _keep_worse(
    best: Tensor, best_loss: Tensor, point: Tensor, loss: Tensor
) -> tuple[Tensor, Tensor]:
    """Per image, ``point`` where its loss is at least the best so far."""
    worse = loss >= best_loss
    mask = worse.view(-1, *([1] * (point.dim() - 1)))
    return torch.where(mask, point, best), torch.where(worse, loss, best_loss)


def sample_noise(seeds: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Uniform noise in [0, 1), ``shape`` per image, drawn for each image from its own
    seed (``seeds``: one integer per image): ``(len(seeds), *shape)``."""
    generator = torch.Generator()
    draws = [torch.rand(shape, generator=generator.manual_seed(int(s))) for s in seeds]
    return torch.stack(draws) if draws else torch.empty(0, *shape)


def attack_starts(seeds: Tensor, restarts: int, image_shape: tuple[int, ...]) -> Tensor:
    """The noise of ``restarts`` random starts per image, as
    :func:`adversarial_points` takes it: ``(restarts, len(seeds), *image_shape)``."""
    return sample_noise(seeds, (restarts, *image_shape)).transpose(0, 1)
