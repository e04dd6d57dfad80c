"""Interval arithmetic of single layers, on :class:`~certify.bounds.interval_values.Bounds`.

Affine maps take centre and radius as ``W c + b`` and ``|W| r``; BatchNorm in eval mode
is an affine map per channel, in train mode it normalizes with the clean batch's
statistics (:class:`~certify.bounds.interval_autograd.IntervalBatchNorm`); sums,
products with constants and concatenations follow. The last Linear layer can be merged
with a margin specification, which gives tighter margin bounds than subtracting bounds
of logits. :mod:`certify.bounds.interval` calls these for each node of the graph.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from certify.bounds.interval_autograd import IntervalBatchNorm
from certify.bounds.interval_values import Bounds, maybe
from certify.core.errors import ModelError
from model_zoo.normalization import Normalize


def affine(
    v: Bounds, op: Callable, weight: Tensor, bias: Tensor | None, abs_weight: Tensor | None = None
) -> Bounds:
    return Bounds(
        maybe(lambda x: op(x, weight, bias), v.x),
        op(v.center, weight, bias),
        op(v.radius, weight.abs() if abs_weight is None else abs_weight, None),
    )


def affine_call(fn: Callable, args: tuple, kwargs: dict) -> Bounds:
    """``F.linear``/``F.conv*`` called in a forward as (input, weight, bias, ...)."""
    kwargs = dict(kwargs)
    weight = kwargs.pop("weight", args[1] if len(args) > 1 else None)
    bias = kwargs.pop("bias", args[2] if len(args) > 2 else None)
    if isinstance(weight, Bounds) or isinstance(bias, Bounds):
        raise ModelError("interval bounds do not support weights that depend on the input")

    def op(t: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        return fn(t, w, b, *args[3:], **kwargs)

    return affine(args[0], op, weight, bias)


def folded_linear(weight: Tensor, bias: Tensor | None, v: Any, spec: Tensor) -> Bounds:
    """The last Linear layer merged with the specification: weights ``C W`` per sample."""
    if not isinstance(v, Bounds):
        raise ModelError("the last layer's input does not depend on the model input")
    merged = spec @ weight  # N x M x in
    # C (W c + b) is C W c + C b; through the K logits it is far cheaper than through
    # the per-sample matrix C W. The radius needs |C W| itself. A product and a sum
    # beat einsum's batched matrix-vector products by 3x on a CPU.
    center = per_sample_matmul(spec, F.linear(v.center, weight, bias))
    radius = (merged.abs() * v.radius.unsqueeze(1)).sum(2)
    spec_x = maybe(lambda x: per_sample_matmul(spec, F.linear(x, weight, bias)), v.x)
    return Bounds(spec_x, center, radius)


def per_sample_matmul(spec: Tensor, values: Tensor) -> Tensor:
    """``spec @ values`` per sample: (N x M x K) times (N x K) gives N x M."""
    return (spec * values.unsqueeze(1)).sum(2)


def apply_spec(v: Bounds, spec: Tensor) -> Bounds:
    return Bounds(
        maybe(lambda x: per_sample_matmul(spec, x), v.x),
        per_sample_matmul(spec, v.center),
        per_sample_matmul(spec.abs(), v.radius),
    )


def normalize(module: Normalize, v: Bounds) -> Bounds:
    return Bounds(maybe(module, v.x), module(v.center), v.radius / module.std)


def batch_norm(
    module: nn.modules.batchnorm._BatchNorm, v: Bounds, update_running: bool = True
) -> Bounds:
    """BatchNorm of an interval: in train mode with the statistics of the clean values
    ``v.x`` (updating the running ones unless not ``update_running``), else with the
    running statistics."""
    x = v.x
    shape = (1, -1) + (1,) * (v.center.ndim - 2)
    if module.training or module.running_mean is None:
        if x is None:
            raise ModelError("BatchNorm with batch statistics needs the clean values")
        x, center, radius, mean, var = IntervalBatchNorm.apply(
            x, v.center, v.radius, module.weight, module.bias, module.eps
        )
        if module.training and module.track_running_stats and update_running:
            update_running_stats(module, mean, var, x.numel() // mean.numel())
        return Bounds(x, center, radius)
    scale = torch.rsqrt(module.running_var + module.eps)
    if module.weight is not None:
        scale = scale * module.weight
    shift = -module.running_mean * scale
    if module.bias is not None:
        shift = shift + module.bias
    scale, shift = scale.view(shape), shift.view(shape)
    # t * scale + shift; see IntervalBatchNorm for why not addcmul.
    return Bounds(
        maybe(lambda t: t.mul(scale).add_(shift), x),
        v.center.mul(scale).add_(shift),
        v.radius * scale.abs(),
    )


@torch.no_grad()
def update_running_stats(
    module: nn.modules.batchnorm._BatchNorm, mean: Tensor, var: Tensor, count: int
) -> None:
    """What ``nn.BatchNorm`` does in a training forward, from statistics already at hand
    (computing them once serves the clean output and the interval alike)."""
    if count < 2:
        raise ModelError("BatchNorm in training needs more than one value per channel")
    module.num_batches_tracked.add_(1)
    # momentum=None means a cumulative average over all batches, as in nn.BatchNorm.
    if module.momentum is None:
        factor: Tensor | float = 1.0 / module.num_batches_tracked
    else:
        factor = module.momentum
    module.running_mean.lerp_(mean.detach(), factor)
    module.running_var.lerp_(var.detach() * (count / (count - 1)), factor)


def add(a: Any, b: Any) -> Bounds:
    if isinstance(a, Bounds) and isinstance(b, Bounds):
        x = None if a.x is None or b.x is None else a.x + b.x
        return Bounds(x, a.center + b.center, a.radius + b.radius)
    if isinstance(b, Bounds):
        a, b = b, a
    return Bounds(maybe(lambda x: x + b, a.x), a.center + b, a.radius)


def neg(a: Any) -> Any:
    if isinstance(a, Bounds):
        return Bounds(maybe(torch.neg, a.x), -a.center, a.radius)
    return -a


def scale(a: Any, b: Any) -> Bounds:
    if isinstance(a, Bounds) and isinstance(b, Bounds):
        raise ModelError("interval bounds do not support products of two activations")
    if isinstance(b, Bounds):
        a, b = b, a
    magnitude = b.abs() if isinstance(b, Tensor) else abs(b)
    return Bounds(maybe(lambda x: x * b, a.x), a.center * b, a.radius * magnitude)


def cat(args: tuple, kwargs: dict) -> Bounds:
    parts = args[0]
    dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    if not all(isinstance(p, Bounds) for p in parts):
        raise ModelError("interval bounds cannot concatenate bounds with constants")
    xs = [p.x for p in parts]
    return Bounds(
        None if any(x is None for x in xs) else torch.cat(xs, dim),
        torch.cat([p.center for p in parts], dim),
        torch.cat([p.radius for p in parts], dim),
    )


def relu_bounds_only(v: Bounds) -> Bounds:
    """The interval ReLU of :class:`IntervalReLU`'s forward, for evaluation: two new
    tensors, everything else computed in place in them (without autograd nothing else
    holds them; on a CPU a new activation-sized tensor costs several passes)."""
    lower = torch.sub(v.center, v.radius).relu_()
    upper = torch.add(v.center, v.radius).relu_()
    radius = upper.sub_(lower).mul_(0.5)
    return Bounds(None, lower.add_(radius), radius)
