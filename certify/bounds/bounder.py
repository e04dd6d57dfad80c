"""What a bounder is, and the three that evaluation picks from per bound method.

A :class:`Bounder` takes a batch of images, eps and a specification ``C`` (N x M x K)
and returns an :class:`~certify.bounds.interval_values.IntervalResult` whose ``lower``
bounds ``C @ logits`` over the L_inf ball of radius eps around each image, clipped to
the pixel box [0, 1]. Evaluation asks for lower bounds only: IBP by the hand-written
interval pass (:class:`IntervalBounder`), auto_LiRPA's methods (:class:`LirpaBounder`)
and alpha-CROWN (:class:`AlphaCrownBounder`), chosen in :mod:`certify.bounds.margins`;
training also reads the clean logits and the pre-ReLU intervals, and switches BatchNorm
between train and eval mode (:class:`TrainingBounder`, in
:mod:`certify.bounds.training_bounders`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Protocol

import torch
from torch import Tensor

from certify.bounds.alpha_crown import optimized_margins
from certify.bounds.interval import IntervalNetwork
from certify.bounds.interval_values import IntervalResult
from certify.bounds.lirpa import bound_failure, interval_reference, perturbed
from certify.bounds.methods import BoundMethod
from certify.bounds.options import AlphaCrownOptions
from certify.core.devices import exact_float32
from certify.core.errors import CertifyError


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
        with _one_line_errors(self.method):
            lower = _lirpa_lower(self.module, x, eps, spec, self.method.lirpa_name)
        return IntervalResult(None, lower, None)


def _lirpa_lower(module: Any, x: Tensor, eps: float, spec: Tensor, method: str) -> Tensor:
    with torch.no_grad(), exact_float32():
        # CROWN's intermediate bounds, each intersected with the neuron's IBP bound: at
        # least as tight as either, and still each image's own.
        reference = interval_reference(module, x, eps, spec) if method == "CROWN" else None
        lower, _ = module.compute_bounds(
            x=(perturbed(x, eps),), C=spec, method=method, bound_upper=False,
            reference_bounds=reference,
        )  # fmt: skip
    return lower.detach()


class AlphaCrownBounder:
    """alpha-CROWN: CROWN with the lower slope of every unstable ReLU optimized per image
    and per margin (auto_LiRPA's ``CROWN-Optimized``), never below plain CROWN.

    Both bounds are sound, so each margin takes the larger. The optimization is made
    batch-independent: a fixed number of steps (auto_LiRPA would stop early once no image
    of the batch improves), and Adam and the best-so-far bookkeeping work per element.
    """

    def __init__(self, module: Any, options: AlphaCrownOptions) -> None:
        self.module = module
        self.options = options

    def bounds(self, x: Tensor, eps: float, spec: Tensor) -> IntervalResult:
        with _one_line_errors(BoundMethod.ALPHA_CROWN):
            with torch.no_grad(), exact_float32():
                reference = interval_reference(self.module, x, eps, spec)
            lower, crown = optimized_margins(
                self.module, perturbed(x, eps), spec, reference,
                self.options.iterations, self.options.lr,
            )  # fmt: skip
        return IntervalResult(None, torch.maximum(lower, crown), None)


@contextlib.contextmanager
def _one_line_errors(method: BoundMethod) -> Iterator[None]:
    """auto_LiRPA raises bare exceptions from deep inside; the user gets one line. Running
    out of GPU memory passes through, for the caller to halve the chunk."""
    try:
        yield
    except (torch.OutOfMemoryError, CertifyError):
        raise
    except Exception as exc:
        raise bound_failure(exc, method.value) from exc
