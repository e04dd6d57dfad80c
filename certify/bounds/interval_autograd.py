"""ReLU and train-mode BatchNorm of an interval as autograd functions with hand-written
backward passes.

They compute the same derivative as autograd would through the forward's composition, in
fewer passes over the activations (tests check both against autograd). Training's
interval pass uses them; evaluation's bounds-only pass needs no gradient.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class IntervalReLU(torch.autograd.Function):
    """ReLU of an interval given as centre and radius, with a hand-written backward.

    Forward: l = c - r, u = c + r, and the centre and radius of [relu(l), relu(u)];
    l, u and the float masks of active (l > 0) and inactive (u < 0) neurons come back
    too (not differentiable), for the regularizers and statistics. Backward is the
    derivative of exactly that composition: relu(u) receives (g_c + g_r) / 2 and relu(l)
    receives (g_c - g_r) / 2, so an active neuron passes g_c and g_r through, an unstable
    one (l <= 0 < u) gives (g_c + g_r) / 2 to both and a dead one (u <= 0) gives nothing.

    The masks are made with ``sign`` of the clipped bounds and applied by multiplying:
    on CPU a comparison costs several float passes and ``torch.where`` dozens.
    """

    @staticmethod
    def forward(ctx: Any, center: Tensor, radius: Tensor) -> tuple[Tensor, ...]:
        lower = center - radius
        upper = center + radius
        relu_lower, relu_upper = torch.relu(lower), torch.relu(upper)
        new_center = torch.lerp(relu_lower, relu_upper, 0.5)
        new_radius = new_center - relu_lower
        active = torch.sign(relu_lower)  # 1 where l > 0, else 0
        # (g_c + g_r) / 2 reaches both inputs of an unstable neuron: 1/2 where l <= 0 < u.
        half_unstable = torch.sign(relu_upper).sub_(active).mul_(0.5)
        inactive = torch.sign(upper).neg_().relu_()  # 1 where u < 0, else 0
        ctx.save_for_backward(active, half_unstable)
        ctx.mark_non_differentiable(lower, upper, active, inactive)
        # No zero gradients for the four non-differentiable outputs: they would cost
        # four full-size allocations and fills per layer in every backward.
        ctx.set_materialize_grads(False)
        return new_center, new_radius, lower, upper, active, inactive

    @staticmethod
    def backward(ctx: Any, g_center: Tensor | None, g_radius: Tensor | None, *_: Any):
        active, half_unstable = ctx.saved_tensors
        if g_center is None and g_radius is None:
            return None, None
        if g_center is None:
            g_center = torch.zeros_like(g_radius)
        if g_radius is None:
            g_radius = torch.zeros_like(g_center)
        unstable = (g_center + g_radius).mul_(half_unstable)
        return (
            torch.addcmul(unstable, g_center, active),
            torch.addcmul(unstable, g_radius, active),
        )


class IntervalBatchNorm(torch.autograd.Function):
    """BatchNorm in train mode applied to the clean values and to an interval at once.

    The statistics are the clean batch's (mean and biased variance per channel,
    differentiable, as in auto_LiRPA): scale = w / sqrt(var + eps), shift = b - mean *
    scale; x and the centre map to x * scale + shift, the radius to r * |scale|. The
    backward is the derivative of exactly this, written out per channel so that it
    needs fewer passes over the activations than autograd's.
    Also returns the (detached) mean and variance for the running statistics.

    The variance is E[x^2] - E[x]^2: two plain reductions, where ``Tensor.var`` over the
    batch and spatial dimensions is slow on a CPU; pre-BatchNorm
    activations have means of the order of their spread, so float32 loses nothing that
    matters here.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, center: Tensor, radius: Tensor, weight: Tensor | None,
                bias: Tensor | None, eps: float) -> tuple[Tensor, ...]:  # fmt: skip
        dims = [0, *range(2, x.ndim)]
        shape = (1, -1) + (1,) * (x.ndim - 2)
        mean = x.mean(dims)
        raw_var = (x * x).mean(dims) - mean * mean
        var = raw_var.clamp(min=0.0)
        invstd = torch.rsqrt(var + eps)
        scale = invstd * weight if weight is not None else invstd
        shift = -mean * scale
        if bias is not None:
            shift = shift + bias
        s, t = scale.view(shape), shift.view(shape)
        # x * s + t as a product and an in-place sum: on CPU, addcmul with the broadcast
        # (1, C, 1, 1) shift as its first argument is several times slower.
        x_out = x.mul(s).add_(t)
        center_out = center.mul(s).add_(t)
        radius_out = radius * s.abs()
        var_on = torch.sign(raw_var.sign().add_(1.0))  # 1 where the variance was not clamped
        ctx.save_for_backward(x, center, radius, mean, invstd, weight, scale, var_on)
        ctx.mark_non_differentiable(mean, var)
        ctx.set_materialize_grads(False)
        return x_out, center_out, radius_out, mean, var

    @staticmethod
    def backward(ctx: Any, g_x: Tensor | None, g_center: Tensor | None,
                 g_radius: Tensor | None, *_: Any):  # fmt: skip
        x, center, radius, mean, invstd, weight, scale, var_on = ctx.saved_tensors
        dims = [0, *range(2, x.ndim)]
        shape = (1, -1) + (1,) * (x.ndim - 2)
        s = scale.view(shape)
        zero = torch.zeros_like(scale)
        g_scale, g_shift = zero, zero
        if g_x is not None:
            g_scale = g_scale + (g_x * x).sum(dims)
            g_shift = g_shift + g_x.sum(dims)
        if g_center is not None:
            g_scale = g_scale + (g_center * center).sum(dims)
            g_shift = g_shift + g_center.sum(dims)
        if g_radius is not None:
            g_scale = g_scale + (g_radius * radius).sum(dims) * scale.sign()
        # shift = bias - mean * scale; scale = weight * invstd
        g_scale = g_scale - g_shift * mean
        g_mean = -g_shift * scale
        g_weight = g_scale * invstd if weight is not None else None
        g_invstd = g_scale * weight if weight is not None else g_scale
        # invstd = (var + eps)^(-1/2); var = E[x^2] - mean^2 (clamped at 0); mean = E[x]
        g_var = g_invstd * (-0.5) * invstd.pow(3) * var_on
        count = x.numel() // mean.numel()
        g_mean = g_mean - 2.0 * mean * g_var
        g_x_in = g_center_in = g_radius_in = None
        if ctx.needs_input_grad[0]:
            g_x_in = x.mul((2.0 * g_var / count).view(shape)).add_((g_mean / count).view(shape))
            if g_x is not None:
                g_x_in.addcmul_(g_x, s)
        if g_center is not None and ctx.needs_input_grad[1]:
            g_center_in = g_center * s
        if g_radius is not None and ctx.needs_input_grad[2]:
            g_radius_in = g_radius * s.abs()
        g_bias = g_shift if ctx.needs_input_grad[4] else None
        if not ctx.needs_input_grad[3]:
            g_weight = None
        return g_x_in, g_center_in, g_radius_in, g_weight, g_bias, None
