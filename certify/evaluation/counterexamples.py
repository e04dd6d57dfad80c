"""Counterexamples for branch and bound: PGD from the points the bounds point to, each
hit confirmed by a float64 forward pass of the original model.

An image is counted attacked by ``bab`` only with a point that is inside the eps-ball and
the [0, 1] box in float64 and that the original model, in float64, gives another label
than the true one (another logit strictly above the true one). :func:`save_counterexample`
writes it as a ``.pt`` file that ``torch.load(..., weights_only=True)`` reads back.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from certify.core.atomic_files import atomic_write
from certify.core.eps_box import eps_box
from certify.evaluation.attack import signed_gradient_ascent, worst_margin

log = logging.getLogger(__name__)

# PGD steps from each candidate point, and random starts per round.
_STEPS = 20
_RANDOM_STARTS = 4


class CounterexampleFinder:
    """The counterexample search of one image, called by the branch-and-bound loop with
    candidate points each round. Random starts depend on ``seed``, the image's data set
    ``index`` and the round only."""

    def __init__(
        self,
        model: nn.Module,
        model64: nn.Module | None,
        image: Tensor,
        label: int,
        eps: float,
        index: int,
        seed: int = 0,
    ) -> None:
        self.model, self.model64 = model, model64
        self.image, self.label, self.eps = image, label, eps
        self.index, self.seed = index, seed
        self.lower, self.upper = eps_box(image, eps)

    def __call__(self, points: Tensor, round_: int) -> Tensor | None:
        generator = torch.Generator().manual_seed(
            (self.seed * 1_000_003 + self.index) * 7919 + round_
        )
        noise = torch.rand(_RANDOM_STARTS, *self.image.shape[1:], generator=generator)
        starts = torch.cat([points.to(self.image.dtype), self.lower + noise.to(self.image.device)
                            * (self.upper - self.lower)])  # fmt: skip
        starts = torch.min(torch.max(starts, self.lower), self.upper)
        n = len(starts)
        labels = torch.full((n,), self.label, dtype=torch.long, device=self.image.device)
        step = 2.5 * self.eps / _STEPS
        candidates, hit = signed_gradient_ascent(
            self.model, starts, labels, self.lower.expand(n, *self.image.shape[1:]),
            self.upper.expand(n, *self.image.shape[1:]), step, _STEPS, worst_margin,
        )  # fmt: skip
        for point in candidates[hit]:
            confirmed = confirm_counterexample(
                self.model64 or self.model, self.image, self.label, self.eps, point
            )
            if confirmed is not None:
                return confirmed
        return None


def double_precision_twin(model: nn.Module, input_shape: tuple[int, ...]) -> nn.Module | None:
    """A float64 copy of ``model``, or None where the model does not run in float64."""
    try:
        twin = copy.deepcopy(model).double().eval()
        tensors = [*twin.parameters(), *twin.buffers()]
        device = tensors[0].device if tensors else torch.device("cpu")
        with torch.no_grad():
            twin(torch.zeros(1, *input_shape, dtype=torch.float64, device=device))
    except Exception as exc:  # any layer that refuses float64
        log.warning("counterexamples are checked in float32: %s", exc)
        return None
    return twin


def confirm_counterexample(
    model: nn.Module, image: Tensor, label: int, eps: float, point: Tensor
) -> Tensor | None:
    """``point`` as a float32 image inside the eps-ball and pixel box computed in float64,
    if ``model`` (float64 where it is) misclassifies it there; else None."""
    x = image.double()
    lower, upper = eps_box(x, eps)
    # The float32 box that lies inside the float64 one: its ends rounded inwards.
    lo32, up32 = lower.float(), upper.float()
    lo32 = torch.where(lo32.double() < lower, torch.nextafter(lo32, up32 + 1), lo32)
    up32 = torch.where(up32.double() > upper, torch.nextafter(up32, lo32 - 1), up32)
    inside = torch.min(torch.max(point.float().view_as(lo32), lo32), up32)
    tensors = [*model.parameters(), *model.buffers()]
    dtype = torch.float64 if tensors and tensors[0].dtype == torch.float64 else torch.float32
    with torch.no_grad():
        logits = model(inside.to(dtype))
    if float(worst_margin(logits, torch.tensor([label], device=logits.device))) > 0:
        return inside
    return None


@dataclass(frozen=True)
class Counterexample:
    """A confirmed counterexample of data set image ``index``: ``point`` (float32, the
    image's shape) is within eps of ``image`` and in [0, 1], and misclassified."""

    index: int
    image: Tensor
    point: Tensor
    label: int


def save_counterexample(folder: Path, found: Counterexample, eps: float) -> Path:
    """``folder/<index>.pt``: the image, the counterexample, the label and eps, as a
    dict that ``torch.load(path, weights_only=True)`` reads."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{found.index}.pt"
    record = {
        "index": found.index,
        "image": found.image.detach().cpu().clone(),
        "counterexample": found.point.detach().cpu().clone(),
        "label": found.label,
        "eps": eps,
    }
    atomic_write(path, lambda file: torch.save(record, file))
    return path
