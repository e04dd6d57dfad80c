"""Verified lower bounds of classification margins: what evaluation asks of the bounds.

For each image with true class y, the margin specification (:func:`margin_matrix`) asks
for a lower bound of ``z_y - z_j`` for every other class j over the L_inf ball of radius
eps around the image, clipped to the pixel box [0, 1]. A sample is verified when every
such lower bound is positive.

:class:`MarginBounder` bounds a twin of the model with BatchNorm folded
(:mod:`certify.bounds.fusion`) and the ReLU units that are dead on every image removed
(:mod:`certify.bounds.pruning`): the same function on [0, 1], less work. IBP on models
made of common layers goes through the hand-written interval pass
(:class:`~certify.bounds.bounder.IntervalBounder`), used only where it gives auto_LiRPA's
IBP bounds on a probe batch; other models, and CROWN-IBP and CROWN always, use
auto_LiRPA (:class:`~certify.bounds.bounder.LirpaBounder`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

import torch
from torch import nn

from certify.bounds.bab import BabOptions, branch_and_bound
from certify.bounds.bab.beta_crown import SplitBounder
from certify.bounds.bounder import (
    AlphaCrownBounder,
    AlphaCrownOptions,
    Bounder,
    BoundMethod,
    IntervalBounder,
    LirpaBounder,
)
from certify.bounds.fusion import fold_batchnorm
from certify.bounds.interval import IntervalNetwork
from certify.bounds.interval_values import IntervalResult
from certify.bounds.lirpa import EVALUATION_OPTIONS, bounded_module
from certify.bounds.methods import Bounding, parse_methods
from certify.bounds.pruning import prune_dead_units
from certify.core.errors import ModelError, first_line

__all__ = ["AlphaCrownOptions", "BoundMethod", "MarginBounder", "margin_matrix", "parse_methods"]

log = logging.getLogger(__name__)


def margin_matrix(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Specification C of shape (N, K-1, K): row j maps logits to z_y - z_(j-th other)."""
    n = len(labels)
    eye = torch.eye(num_classes, device=labels.device)
    true_rows = eye[labels].unsqueeze(1)  # N x 1 x K
    others = torch.arange(num_classes, device=labels.device).expand(n, -1)
    keep = others != labels[:, None]
    other_rows = eye[others[keep].view(n, num_classes - 1)]  # N x K-1 x K
    return true_rows - other_rows


class MarginBounder:
    """Wraps a model once and bounds margins for any batch, eps and method."""

    def __init__(
        self,
        model: nn.Module,
        input_shape: tuple[int, ...],
        device: torch.device,
        hand_ibp: bool = True,
        alpha: AlphaCrownOptions | None = None,
        bab: BabOptions | None = None,
    ) -> None:
        self.device = device
        self.input_shape = input_shape
        self._split_bounder: SplitBounder | None = None
        self._alpha = alpha or AlphaCrownOptions()
        _refuse_unsupported_layers(model)
        # Bounds are taken on a twin with BatchNorm folded and units that are dead on
        # every image removed: the same function on [0, 1], fewer layers and channels.
        model = prune_dead_units(fold_batchnorm(model.eval()), input_shape).to(device)
        self.twin = model
        self.module = bounded_module(model, input_shape, device, EVALUATION_OPTIONS)
        self.module.eval()
        with torch.no_grad():
            dummy = torch.zeros(1, *input_shape, device=device)
            self.num_classes = int(self.module(dummy).shape[-1])
        build: dict[Bounding, Callable[[BoundMethod], Bounder]] = {
            # IBP by auto_LiRPA, replaced below by the hand-written pass where it matches.
            Bounding.INTERVAL: lambda method: LirpaBounder(self.module, method),
            Bounding.LIRPA: lambda method: LirpaBounder(self.module, method),
            Bounding.OPTIMIZED: lambda _: AlphaCrownBounder(self.module, self._alpha),
            Bounding.BRANCH_AND_BOUND: lambda _: _BabBounder(self, bab or BabOptions()),
        }
        self._bounders: dict[BoundMethod, Bounder] = {
            method: build[method.info.bounding](method) for method in BoundMethod
        }
        interval = self._checked_interval_network(model, input_shape) if hand_ibp else None
        if interval is not None:
            for method in BoundMethod:
                if method.info.bounding is Bounding.INTERVAL:
                    self._bounders[method] = IntervalBounder(interval)

    def split_bounder(self) -> SplitBounder:
        """beta-CROWN on subdomains, for branch and bound: on a module of its own, since
        it leaves its slopes and multipliers on auto_LiRPA's ReLUs."""
        if self._split_bounder is None:
            module = bounded_module(self.twin, self.input_shape, self.device, EVALUATION_OPTIONS)
            self._split_bounder = SplitBounder(module)
        return self._split_bounder

    def margin_spec(self, labels: torch.Tensor) -> torch.Tensor:
        return margin_matrix(labels.to(self.device), self.num_classes)

    @property
    def hand_ibp(self) -> bool:
        """Whether IBP bounds come from the hand-written interval pass."""
        return isinstance(self._bounders[BoundMethod.IBP], IntervalBounder)

    def lower_bounds(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        eps: float | torch.Tensor,
        method: BoundMethod,
    ) -> torch.Tensor:
        """Lower bounds of the K-1 margins of each image, shape (N, K-1); ``eps`` is one
        radius, or a tensor broadcast against the images (one radius per image)."""
        images = images.to(self.device)
        if isinstance(eps, torch.Tensor):
            eps = eps.to(self.device, images.dtype)
        spec = margin_matrix(labels.to(self.device), self.num_classes)
        return self._bounders[method].bounds(images, eps, spec).lower

    def probe_memory(
        self, images: torch.Tensor, labels: torch.Tensor, eps: float, method: BoundMethod
    ) -> None:
        """Run ``method`` far enough to reach its peak memory: the whole method, except
        alpha-CROWN, whose steps all take the same memory once Adam holds its state: three
        steps (the second is the first with that state, the third has no gradient)."""
        if method.info.bounding is not Bounding.OPTIMIZED:
            self.lower_bounds(images, labels, eps, method)
            return
        short = AlphaCrownBounder(self.module, replace(self._alpha, iterations=3))
        short.bounds(images.to(self.device), eps, self.margin_spec(labels))

    def _checked_interval_network(
        self, model: nn.Module, input_shape: tuple[int, ...]
    ) -> IntervalNetwork | None:
        """The hand-written IBP of the model if it covers every layer and gives
        auto_LiRPA's IBP bounds on a probe batch; otherwise None, and auto_LiRPA bounds
        IBP too (custom layers, operators the pass does not know)."""
        generator = torch.Generator().manual_seed(0)
        probe = torch.rand(2, *input_shape, generator=generator).to(self.device)
        spec = margin_matrix(torch.tensor([0, 1], device=self.device), self.num_classes)
        try:
            network = IntervalNetwork(model)
            hand = IntervalBounder(network).bounds(probe, _PROBE_EPS, spec).lower
        except (ModelError, RuntimeError, TypeError) as exc:
            log.debug("IBP through auto_LiRPA: %s", first_line(exc))
            return None
        reference = self._bounders[BoundMethod.IBP].bounds(probe, _PROBE_EPS, spec).lower
        tolerance = 1e-4 * (1.0 + reference.abs().max().item())
        if not torch.allclose(hand, reference, rtol=0.0, atol=tolerance):
            log.warning("hand-written IBP differs from auto_LiRPA's here; using auto_LiRPA")
            return None
        return network


_PROBE_EPS = 0.05
# Subdomains bounded at once by branch and bound where the caller does not say.
DEFAULT_BAB_BATCH = 64


class _BabBounder:
    """Branch and bound image by image, without a counterexample search: the margin
    bounds it returns are the smallest over all subdomains, open or proven, when the
    search ends (verified, or at a limit). Evaluation runs the search itself, with
    counterexamples (certify.evaluation.images)."""

    def __init__(self, owner: MarginBounder, options: BabOptions) -> None:
        self.owner, self.options = owner, options

    def bounds(
        self, x: torch.Tensor, eps: float | torch.Tensor, spec: torch.Tensor
    ) -> IntervalResult:
        split = self.owner.split_bounder()
        rows = []
        for i in range(len(x)):
            # A tensor eps holds one radius per image; a search takes one number.
            radius = float(eps[i]) if isinstance(eps, torch.Tensor) else eps
            outcome = branch_and_bound(
                split, x[i : i + 1], radius, spec[i : i + 1], _no_counterexamples,
                branching=self.options.branching, limits=self.options.limits,
                batch=self.options.batch or DEFAULT_BAB_BATCH,
            )  # fmt: skip
            rows.append(outcome.margins.to(x.device))
        return IntervalResult(None, torch.stack(rows), None)


def _no_counterexamples(points: torch.Tensor, round_: int) -> None:
    return None


def _refuse_unsupported_layers(model: nn.Module) -> None:
    """auto_LiRPA 0.3 ignores dilation in its convolution bounds: refuse rather than
    report bounds that may be wrong."""
    dilated = [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d) and any(d != 1 for d in m.dilation)
    ]
    if dilated:
        raise ModelError(
            f"dilated convolutions cannot be bounded soundly by auto_LiRPA 0.3 "
            f"(layers: {', '.join(dilated[:5])})"
        )
