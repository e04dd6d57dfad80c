"""The one place that builds auto_LiRPA's ``BoundedModule`` and its perturbed inputs.

Evaluation and training both bound through auto_LiRPA; building the module here gives
them the same handling: auto_LiRPA comes patched from :mod:`certify.bounds.lirpa_compat`,
its tracer warnings and log lines are kept from the user, and a model it cannot bound
becomes one :class:`~certify.core.errors.ModelError` that names every unsupported
operator (auto_LiRPA names them only in its log, one line each).
"""

from __future__ import annotations

import contextlib
import logging
import types
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

from certify.bounds.lirpa_compat import load_auto_lirpa
from certify.core.eps_box import eps_box
from certify.core.errors import ModelError, first_line

# auto_LiRPA's default "sparse intermediate bounds" computes CROWN bounds only for the
# neurons that IBP finds unstable in *some* image of the batch and keeps IBP bounds for
# the rest, so an image's CROWN bound would depend on the other images in its batch.
# Every intermediate bound by CROWN, as the method is defined, gives each image the same
# bounds in any batch.
#
# alpha-CROWN keeps one slope per neuron and image. 0.3's sparse variants keep slopes
# only for neurons unstable in some image of the batch, and index them with masks that do
# not fit strided convolutions in patches mode (a shape mismatch inside auto_LiRPA): the
# dense slopes are exact and per image. For the bounds of a convolution's neurons the
# slopes are shared per output channel (0.3's own choice above 512 unstable neurons): one
# set per neuron multiplies alpha-CROWN's time and memory for hardly tighter bounds (the
# figures are in docs/notes.md).
EVALUATION_OPTIONS: Mapping[str, Any] = {
    "conv_mode": "patches",
    "sparse_intermediate_bounds": False,
    "sparse_features_alpha": False,
    "sparse_spec_alpha": False,
    "use_full_conv_alpha": False,
}
# CROWN-IBP takes its intermediate bounds by IBP, so sparsity changes nothing there.
TRAINING_OPTIONS: Mapping[str, Any] = {"conv_mode": "patches"}


def bounded_module(
    model: nn.Module,
    input_shape: tuple[int, ...],
    device: torch.device,
    options: Mapping[str, Any] = EVALUATION_OPTIONS,
) -> Any:
    """auto_LiRPA's ``BoundedModule`` of ``model`` for inputs of ``input_shape`` (one
    image), traced on a zero image; raises :class:`ModelError` naming what it cannot bound."""
    lirpa = load_auto_lirpa()
    dummy = torch.zeros(1, *input_shape, device=device)
    with _captured_lirpa_log() as records, warnings.catch_warnings():
        # auto_LiRPA traces the model with torch.jit; its tracer warnings about shape
        # arithmetic in converted ONNX graphs are noise to the user.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        try:
            return lirpa.BoundedModule(model, dummy, bound_opts=dict(options), device=device)
        except Exception as exc:  # auto_LiRPA raises bare exceptions
            raise ModelError(_cannot_bound(exc, records)) from exc


def perturbed(images: torch.Tensor, eps: float) -> Any:
    """``images`` as auto_LiRPA's ``BoundedTensor`` over the L_inf ball of radius ``eps``
    clipped to the pixel box [0, 1]."""
    lirpa: types.ModuleType = load_auto_lirpa()
    lower, upper = eps_box(images, eps)
    ptb = lirpa.PerturbationLpNorm(norm=float("inf"), eps=eps, x_L=lower, x_U=upper)
    return lirpa.BoundedTensor(images, ptb)


def interval_reference(module: Any, x: torch.Tensor, eps: float, spec: torch.Tensor) -> dict:
    """Every bounded node's IBP interval on the eps-ball of ``x``: auto_LiRPA's
    ``reference_bounds``, which it intersects with the CROWN bounds it computes."""
    module.compute_bounds(x=(perturbed(x, eps),), C=spec, method="IBP", bound_upper=False)
    return {
        node.name: (node.lower.detach(), node.upper.detach())
        for node in module._modules.values()
        if getattr(node, "perturbed", False)
        and isinstance(getattr(node, "lower", None), torch.Tensor)
        and isinstance(getattr(node, "upper", None), torch.Tensor)
    }


@contextlib.contextmanager
def _captured_lirpa_log() -> Iterator[list[str]]:
    """Collect what auto_LiRPA logs instead of letting it print."""
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


def bound_failure(exc: BaseException, method: str) -> ModelError:
    """The one-line error for an exception raised inside auto_LiRPA while ``method``
    bounded a batch: the method, the operator being bounded when it is known, and what
    the user can do instead."""
    operator = _failing_operator(exc)
    where = f" at {operator}" if operator else ""
    return ModelError(
        f"{method} failed inside auto_LiRPA{where} ({type(exc).__name__}: {first_line(exc)}); "
        "use another bound method, or a smaller `crown_batch_size` if memory ran out"
    )


def _failing_operator(exc: BaseException) -> str | None:
    """The innermost auto_LiRPA operator node (a ``Bound*`` module) on the traceback."""
    found = None
    frame = exc.__traceback__
    while frame is not None:
        owner = frame.tb_frame.f_locals.get("self")
        if type(owner).__module__.startswith("auto_LiRPA.operators"):
            found = f"{type(owner).__name__} ({getattr(owner, 'name', '?')})"
        frame = frame.tb_next
    return found
