"""Patches of alpha-CROWN's gradients through ReLU.

alpha-CROWN optimizes the slopes of the ReLU relaxations by gradient steps. Current torch
gives clamp no gradient at the ends of its interval, where every slope starts, so the
slopes would never move; and auto_LiRPA 0.3 computes every gradient of its sign-split
product whether autograd asks for it or not.
"""

from __future__ import annotations

import types
from typing import Any

from certify.bounds.lirpa_compat.registry import bound_ops, clamped_multiplication, patch


def _clamp_gradient_probe() -> bool:
    """alpha-CROWN starts every ReLU slope at exactly 0 or 1 and clamps the slopes to
    [0, 1] in each bound computation: the gradient must pass at the bounds. torch 2.14's
    clamp gives it 0 there, so the slopes never move and alpha-CROWN silently returns
    CROWN's bound."""
    import torch

    alpha = torch.tensor([[0.0, 1.0]], requires_grad=True)
    lower, upper = torch.full((1, 2), -1.0), torch.ones(1, 2)
    slope, _, _ = bound_ops().BoundRelu._relu_mask_alpha(lower, upper, alpha, None)
    slope.sum().backward()
    return bool((alpha.grad == 1).all())


def clamp_unit_passing_gradient(x: Any) -> Any:
    """``clamp(x, 0, 1)`` whose gradient is 1 inside [0, 1] and at its ends: the gradient
    torch gave before 2.14. Outside the interval too, which never matters for the slopes,
    as auto_LiRPA clips them into [0, 1] after every step."""
    return x + (x.clamp(0.0, 1.0) - x).detach()


@patch("alpha_clamp_gradient", probe=_clamp_gradient_probe)
def _clamp_gradient_apply() -> None:
    """BoundRelu._relu_mask_alpha clamps alpha-CROWN's slopes with torch.clamp, whose
    gradient at exactly 0 and 1 is 0 from torch 2.14 on, where every slope starts: the
    same mask with a clamp that passes the gradient at its ends."""

    def _relu_mask_alpha(lower: Any, upper: Any, lb_lower_d: Any, ub_lower_d: Any) -> Any:
        lower_mask = (lower >= 0).requires_grad_(False).to(lower.dtype)
        upper_mask = (upper <= 0).requires_grad_(False)
        zero_coeffs = upper_mask.all()
        no_mask = (1.0 - lower_mask) * (1.0 - upper_mask.to(upper.dtype))
        if lb_lower_d is not None:
            lb_lower_d = clamp_unit_passing_gradient(lb_lower_d) * no_mask + lower_mask
        if ub_lower_d is not None:
            ub_lower_d = clamp_unit_passing_gradient(ub_lower_d) * no_mask + lower_mask
        return lb_lower_d, ub_lower_d, zero_coeffs

    bound_ops().BoundRelu._relu_mask_alpha = staticmethod(_relu_mask_alpha)


def _clampmult_gradients_probe() -> bool:
    """The backward of auto_LiRPA's sign-split product ``A+ * d_pos + A- * d_neg`` (the
    step of every backward bound through a ReLU) returns only the gradients autograd asks
    for: asked for none of A's, it returns None there."""
    import torch

    a, d = torch.ones(1, 1, 2), torch.ones(1, 1, 2)
    ctx = types.SimpleNamespace(
        saved_tensors=(a, d, d, None, None),
        patches_mode=False,
        needs_input_grad=(False, True, True, False, False, False),
    )
    grads = clamped_multiplication().backward(ctx, torch.ones(1, 1, 2), None)
    return grads[0] is None


@patch("clampmult_gradients", probe=_clampmult_gradients_probe)
def _clampmult_gradients_apply() -> None:
    """alpha-CROWN spends a fifth of its time in the backward of this product: 0.3
    computes all five gradients (of A, both slopes and both offsets) whatever autograd
    needs, through float masks, some twenty passes over tensors of the size of A. The
    same gradients, only those asked for, in about half the passes (``torch.where`` is
    avoided: on a CPU it costs several times a multiplication)."""
    import torch

    def backward(ctx: Any, grad_a: Any, grad_bias: Any) -> tuple[Any, ...]:
        a, d_pos, d_neg, b_pos, b_neg = ctx.saved_tensors
        need = ctx.needs_input_grad
        if grad_bias is not None:
            grad_bias = grad_bias.view(grad_bias.shape + (1,) * (a.ndim - grad_bias.ndim))
        has_bias = grad_bias is not None and (b_pos is not None or b_neg is not None)
        g_a = g_d_pos = g_d_neg = g_b_pos = g_b_neg = None
        if need[0]:
            # 1 where A >= 0, else 0; lerp picks the slope (and offset) of A's sign exactly.
            positive = (a >= 0).to(a.dtype)
            g_a = torch.lerp(d_neg, d_pos, positive) * grad_a
            if has_bias:
                if b_pos is not None and b_neg is not None:
                    offset = torch.lerp(b_neg, b_pos, positive)
                elif b_pos is not None:
                    offset = b_pos * positive
                else:
                    offset = b_neg * (1 - positive)
                g_a = g_a + offset * grad_bias
        want_b_pos = has_bias and b_pos is not None and need[3]
        want_b_neg = has_bias and b_neg is not None and need[4]
        if need[1] or want_b_pos:
            a_pos = a.clamp(min=0)
            g_d_pos = a_pos * grad_a if need[1] else None
            g_b_pos = a_pos * grad_bias if want_b_pos else None
        if need[2] or want_b_neg:
            a_neg = a.clamp(max=0)
            g_d_neg = a_neg * grad_a if need[2] else None
            g_b_neg = a_neg * grad_bias if want_b_neg else None
        return g_a, g_d_pos, g_d_neg, g_b_pos, g_b_neg, None

    clamped_multiplication().backward = staticmethod(backward)
