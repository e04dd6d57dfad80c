"""The values the interval pass carries and returns.

:class:`Bounds` is the interval of one activation (as centre and radius, with the clean
value alongside when it is carried), :class:`PreActivation` the interval of one ReLU's
input as the training regularizers read it, and :class:`IntervalResult` what one pass of
:class:`~certify.bounds.interval.IntervalNetwork` gives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor


def maybe(fn: Callable[[Tensor], Tensor], x: Tensor | None) -> Tensor | None:
    """``fn(x)``, or None when the clean values are not carried (bounds only)."""
    return None if x is None else fn(x)


@dataclass
class Bounds:
    """Clean value (None when only bounds are wanted) and the interval of one
    activation, as centre and radius."""

    x: Tensor | None
    center: Tensor
    radius: Tensor

    @classmethod
    def from_box(cls, x: Tensor | None, lower: Tensor, upper: Tensor) -> Bounds:
        return cls(x, (upper + lower) * 0.5, (upper - lower) * 0.5)

    @property
    def lower(self) -> Tensor:
        return self.center - self.radius

    @property
    def upper(self) -> Tensor:
        return self.center + self.radius

    def linear(self, fn: Callable[[Tensor], Tensor]) -> Bounds:
        """Apply a map that is linear with non-negative weights (reshapes, average
        pooling): it takes centre to centre and radius to radius exactly."""
        return Bounds(maybe(fn, self.x), fn(self.center), fn(self.radius))

    def monotone(self, fn: Callable[[Tensor], Tensor]) -> Bounds:
        """Apply an elementwise-increasing map (max pooling) to both ends."""
        return Bounds.from_box(maybe(fn, self.x), fn(self.lower), fn(self.upper))


@dataclass
class PreActivation:
    """The interval of one ReLU's input, in both forms (the regularizers use both)."""

    lower: Tensor
    upper: Tensor
    center: Tensor
    radius: Tensor

    _masks: tuple[Tensor, Tensor] | None = field(default=None, repr=False)

    @classmethod
    def from_box(cls, lower: Tensor, upper: Tensor) -> PreActivation:
        return cls(lower, upper, (upper + lower) * 0.5, (upper - lower) * 0.5)

    def masks(self) -> tuple[Tensor, Tensor]:
        """Flat float masks of active (l > 0) and inactive (u < 0) neurons, computed once."""
        if self._masks is None:
            with torch.no_grad():
                active = (self.lower > 0).flatten().to(self.lower.dtype)
                inactive = (self.upper < 0).flatten().to(self.upper.dtype)
            self._masks = (active, inactive)
        return self._masks


@dataclass
class IntervalResult:
    """What one bound computation gives: clean logits, output bounds and the pre-ReLU bounds."""

    logits: Tensor | None  # None from bounders that take no clean pass
    lower: Tensor  # of C @ logits when a spec was given, else of the logits
    upper: Tensor | None  # None from bounders that take lower bounds only
    # The input of every ReLU, in execution order.
    pre_relu: list[PreActivation] = field(default_factory=list)
    # The network's input after its normalization layer (the network proper sees
    # normalized images, as in the seed), or the pixel box when there is none.
    input_bounds: Bounds | None = None
