"""What a bounder is, and the two that evaluation uses per bound method.

A :class:`Bounder` takes a batch of images, eps and a specification ``C`` (N x M x K)
and returns an :class:`~certify.bounds.interval_values.IntervalResult` whose ``lower``
bounds ``C @ logits`` over the L_inf ball of radius eps around each image, clipped to
the pixel box [0, 1]. Evaluation asks for lower bounds only
(:class:`IntervalBounder`, :class:`LirpaBounder`); training also reads the clean logits
and the pre-ReLU intervals, and switches BatchNorm between train and eval mode
(:class:`TrainingBounder`, in :mod:`certify.bounds.training_bounders`).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Protocol

import torch
from torch import Tensor

from certify.bounds.interval import IntervalNetwork
from certify.bounds.interval_values import IntervalResult
from certify.bounds.lirpa import perturbed
from certify.core.devices import exact_float32


class BoundMethod(StrEnum):
    IBP = "ibp"
    CROWN_IBP = "crown-ibp"
    CROWN = "crown"

    @property
    def lirpa_name(self) -> str:
        """The method's name in auto_LiRPA's ``compute_bounds``."""
        return {"ibp": "IBP", "crown-ibp": "CROWN-IBP", "crown": "CROWN"}[self.value]


class Bounder(Protocol):
    """Bounds of ``spec @ logits`` over the eps-ball of each image in [0, 1]."""

    def bounds(self, x: Tensor, eps: float, spec: Tensor) -> IntervalResult: ...


class TrainingBounder(Bounder, Protocol):
    """A bounder whose BatchNorm layers follow the model's train or eval mode."""

    def train(self, mode: bool = True) -> None: ...

    def sync(self) -> None:
        """Bring the model up to date with what bounding changed (BatchNorm statistics)."""


class IntervalBounder:
    """IBP by the hand-written interval pass, lower and upper bounds only (no clean
    logits, no gradient), in float32 with TF32 off."""

    def __init__(self, network: IntervalNetwork) -> None:
        self.network = network

    def bounds(self, x: Tensor, eps: float, spec: Tensor) -> IntervalResult:
        with exact_float32():
            lower, upper = self.network.bounds_only(x, eps, spec)
        return IntervalResult(None, lower, upper)


class LirpaBounder:
    """Lower bounds by one of auto_LiRPA's methods, in float32 with TF32 off."""

    def __init__(self, module: Any, method: BoundMethod) -> None:
        self.module = module
        self.method = method

    def bounds(self, x: Tensor, eps: float, spec: Tensor) -> IntervalResult:
        with torch.no_grad(), exact_float32():
            lower, _ = self.module.compute_bounds(
                x=(perturbed(x, eps),), C=spec, method=self.method.lirpa_name, bound_upper=False
            )
        return IntervalResult(None, lower.detach(), None)
