"""Verified lower bounds of classification margins, computed with auto_LiRPA.

For each image with true class y, the margin specification asks for a lower bound of
``z_y - z_j`` for every other class j over the L_inf ball of radius eps around the
image, clipped to the pixel box [0, 1]. A sample is verified when every such lower
bound is positive.

Every method bounds a twin of the model with BatchNorm folded (:mod:`certify.fusion`)
and the ReLU units that are dead on every image removed (:mod:`certify.pruning`): the
same function on [0, 1], less work. IBP on models made of common layers goes through
the hand-written interval pass that training uses
(:meth:`training.interval.IntervalNetwork.bounds_only`): the same bounds as auto_LiRPA's
IBP (tests compare them) at about two clean forward passes instead of three. Other
models, and CROWN-IBP and CROWN always, use auto_LiRPA.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from enum import StrEnum
from typing import TYPE_CHECKING

import torch
from torch import nn

from certify.compat.lirpa import load_auto_lirpa
from certify.devices import exact_float32
from certify.errors import ModelError, UsageError, first_line
from certify.fusion import fold_batchnorm
from certify.pruning import prune_dead_units

if TYPE_CHECKING:
    from training.interval import IntervalNetwork

log = logging.getLogger(__name__)


class BoundMethod(StrEnum):
    IBP = "ibp"
    CROWN_IBP = "crown-ibp"
    CROWN = "crown"

    @property
    def lirpa_name(self) -> str:
        return {"ibp": "IBP", "crown-ibp": "CROWN-IBP", "crown": "CROWN"}[self.value]


def parse_methods(text: str | list[str]) -> list[BoundMethod]:
    """Parse ``"ibp,crown"`` (or a list) into methods, in the order given, no repeats."""
    names = text.split(",") if isinstance(text, str) else list(text)
    methods: list[BoundMethod] = []
    for name in names:
        key = name.strip().lower()
        if not key:
            continue
        try:
            method = BoundMethod(key)
        except ValueError:
            valid = ", ".join(m.value for m in BoundMethod)
            raise UsageError(f"unknown bound method {name!r}: use one of {valid}") from None
        if method not in methods:
            methods.append(method)
    if not methods:
        raise UsageError("--methods is empty: name at least one of ibp, crown-ibp, crown")
    return methods


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
    ) -> None:
        lirpa = load_auto_lirpa()
        self._lirpa = lirpa
        self.device = device
        _refuse_unsupported_layers(model)
        # Bounds are taken on a twin with BatchNorm folded and units that are dead on
        # every image removed: the same function on [0, 1], fewer layers and channels.
        model = prune_dead_units(fold_batchnorm(model.eval()), input_shape).to(device)
        self.twin = model
        dummy = torch.zeros(1, *input_shape, device=device)
        with _captured_lirpa_log() as records, warnings.catch_warnings():
            # auto_LiRPA traces the model with torch.jit; its tracer warnings about
            # shape arithmetic in converted ONNX graphs are noise to the user.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            try:
                self.module = lirpa.BoundedModule(
                    model, dummy, bound_opts=_BOUND_OPTS, device=device
                )
            except Exception as exc:  # auto_LiRPA raises bare exceptions
                raise ModelError(_cannot_bound(exc, records)) from exc
        self.module.eval()
        with torch.no_grad():
            self.num_classes = int(self.module(dummy).shape[-1])
        self._interval = self._checked_interval_network(model, input_shape) if hand_ibp else None

    @property
    def hand_ibp(self) -> bool:
        """Whether IBP bounds come from the hand-written interval pass."""
        return self._interval is not None

    def lower_bounds(
        self, images: torch.Tensor, labels: torch.Tensor, eps: float, method: BoundMethod
    ) -> torch.Tensor:
        """Lower bounds of the K-1 margins of each image, shape (N, K-1)."""
        images = images.to(self.device)
        labels = labels.to(self.device)
        spec = margin_matrix(labels, self.num_classes)
        if method is BoundMethod.IBP and self._interval is not None:
            with exact_float32():
                lower, _ = self._interval.bounds_only(images, eps, spec)
            return lower
        return self._lirpa_lower_bounds(images, spec, eps, method)

    def _lirpa_lower_bounds(
        self, images: torch.Tensor, spec: torch.Tensor, eps: float, method: BoundMethod
    ) -> torch.Tensor:
        x_lower = (images - eps).clamp(0.0, 1.0)
        x_upper = (images + eps).clamp(0.0, 1.0)
        ptb = self._lirpa.PerturbationLpNorm(norm=float("inf"), eps=eps, x_L=x_lower, x_U=x_upper)
        bounded = self._lirpa.BoundedTensor(images, ptb)
        with torch.no_grad(), exact_float32():
            lower, _ = self.module.compute_bounds(
                x=(bounded,), C=spec, method=method.lirpa_name, bound_upper=False
            )
        return lower.detach()

    def _checked_interval_network(
        self, model: nn.Module, input_shape: tuple[int, ...]
    ) -> IntervalNetwork | None:
        """The hand-written IBP of the model if it covers every layer and gives
        auto_LiRPA's IBP bounds on a probe batch; otherwise None, and auto_LiRPA bounds
        IBP too (custom layers, operators the pass does not know)."""
        from training.interval import IntervalNetwork

        generator = torch.Generator().manual_seed(0)
        probe = torch.rand(2, *input_shape, generator=generator).to(self.device)
        spec = margin_matrix(torch.tensor([0, 1], device=self.device), self.num_classes)
        try:
            network = IntervalNetwork(model)
            with exact_float32():
                hand, _ = network.bounds_only(probe, _PROBE_EPS, spec)
        except (ModelError, RuntimeError, TypeError) as exc:
            log.debug("IBP through auto_LiRPA: %s", first_line(exc))
            return None
        reference = self._lirpa_lower_bounds(probe, spec, _PROBE_EPS, BoundMethod.IBP)
        tolerance = 1e-4 * (1.0 + reference.abs().max().item())
        if not torch.allclose(hand, reference, rtol=0.0, atol=tolerance):
            log.warning("hand-written IBP differs from auto_LiRPA's here; using auto_LiRPA")
            return None
        return network


_PROBE_EPS = 0.05

# auto_LiRPA's default "sparse intermediate bounds" computes CROWN bounds only for the
# neurons that IBP finds unstable in *some* image of the batch and keeps IBP bounds for
# the rest, so an image's CROWN bound depends on the other images in its batch (on the
# bundled model one margin bound went from 3.28 alone to -0.20 in a batch of 256).
# Every intermediate bound by CROWN, as the method is defined, gives each image the same
# bounds in any batch, at about 15% more time.
_BOUND_OPTS = {"conv_mode": "patches", "sparse_intermediate_bounds": False}


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


@contextlib.contextmanager
def _captured_lirpa_log() -> Iterator[list[str]]:
    """Collect what auto_LiRPA logs instead of letting it print: it names unsupported
    operators only in its log, one line each, and raises a message without them."""
    logger = logging.getLogger("auto_LiRPA.utils")
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    saved = logger.propagate, logger.handlers[:]
    logger.handlers, logger.propagate = [handler], False
    try:
        yield records
    finally:
        logger.propagate, logger.handlers = saved[0], saved[1]


def _cannot_bound(exc: BaseException, records: list[str]) -> str:
    ops = sorted(
        {r.split(",")[0].removeprefix("Name: ") for r in records if r.startswith("Name: ")}
    )
    if ops:
        return f"auto_LiRPA cannot bound these operators: {', '.join(ops)}"
    return f"auto_LiRPA cannot bound this model: {first_line(exc)}"
