"""Patches of the sigmoid and tanh relaxations (CROWN and alpha-CROWN).

auto_LiRPA 0.3's lines for sigmoid and tanh are unsound past +-500 and loose on
intervals that contain 0, and its alpha-CROWN fails on a sigmoid or tanh whose bounds a
convolution's neurons in patches mode are computed from. The lines themselves are
:mod:`certify.bounds.s_shaped`'s; here they replace 0.3's inside auto_LiRPA.
"""

from __future__ import annotations

import types
from typing import TYPE_CHECKING, Any

from certify.bounds.lirpa_compat.registry import bound_ops, patch

if TYPE_CHECKING:
    from certify.bounds.s_shaped import SShapedRelaxation


def _relaxation_of(node: Any, x: Any, name: str) -> SShapedRelaxation:
    """s_shaped_relaxation of the node's input bounds, kept while they stay the same
    tensors: 0.3 relaxes an activation again for every later layer's backward pass.
    Bounds that carry a gradient (training, alpha-CROWN) are relaxed each time."""
    from certify.bounds.s_shaped import s_shaped_relaxation

    lower, upper = x.lower, x.upper
    if lower.requires_grad or upper.requires_grad:
        return s_shaped_relaxation(lower, upper, name)
    key = (name, lower._version, upper._version)
    cached = node.__dict__.get("_certify_s_shaped")
    if cached is not None and cached[0] is lower and cached[1] is upper and cached[2] == key:
        return cached[3]
    relaxation = s_shaped_relaxation(lower, upper, name)
    node.__dict__["_certify_s_shaped"] = (lower, upper, key, relaxation)
    return relaxation


def _s_shaped_probe() -> bool:
    """On [-600, 600] 0.3's sigmoid lines must hold at the ends (0.3 clamps the bounds to
    +-500 first, and its lower line passes 1.2 at 600); on [-10, 1] its lower line at -10
    must be no lower than the midpoint's tangent there (0.3 takes the tangent through
    (1, sigmoid(1)), at -1.25 instead of -0.05)."""
    import torch

    node = bound_ops().BoundSigmoid({}, [], 0, {})
    lower, upper = torch.tensor([[-600.0, -10.0]]), torch.tensor([[600.0, 1.0]])
    x = types.SimpleNamespace(lower=lower, upper=upper)
    node.init_linear_relaxation(x)
    node.bound_relax(x)
    lines = [t.double() for t in (node.lw, node.lb, node.uw, node.ub)]
    for end in (lower.double(), upper.double()):
        y = torch.sigmoid(end)
        if (lines[0] * end + lines[1] > y).any() or (lines[2] * end + lines[3] < y).any():
            return False
    m = torch.tensor(-4.5, dtype=torch.float64)
    tangent_at_l = torch.sigmoid(m) + torch.sigmoid(m) * torch.sigmoid(-m) * (-10.0 - m)
    return bool(lines[0][0, 1] * -10.0 + lines[1][0, 1] >= tangent_at_l - 1e-6)


@patch("s_shaped_relaxation", probe=_s_shaped_probe)
def _s_shaped_apply() -> None:
    """BoundTanh.bound_relax_impl (BoundSigmoid's too) relaxes from tables with 0.01
    steps and clamps the pre-activation bounds to +-500 first: beyond that its lines are
    unsound (on [-600, 600] sigmoid's lower line exceeds 1 at 600 by 0.2). On intervals
    that contain 0 it always takes the tangent through the far end, even when the
    midpoint's tangent is valid and lies higher (on [-10, 1]: -1.25 against -0.05 at
    -10), a loss that compounds over a deep network's layers. Relax with
    :func:`s_shaped_relaxation` instead (CROWN, and alpha-CROWN's starting point), and
    keep alpha-CROWN's optimized tangent points within its valid limits. Other S-shaped
    operators (arctan, tan) keep 0.3's relaxation."""
    import torch

    ops = bound_ops()
    original = ops.BoundTanh.bound_relax_impl
    names = {torch.sigmoid: "sigmoid", torch.tanh: "tanh"}

    def bound_relax_impl(self: Any, x: Any, func: Any, dfunc: Any) -> None:
        name = names.get(func)
        if name is None:
            return original(self, x, func, dfunc)
        relaxation = _relaxation_of(self, x, name)
        if self.opt_stage in ("opt", "reuse"):
            if not hasattr(self, "alpha"):
                self._no_bound_parameters()
            _optimized_s_shaped_lines(self, x, relaxation, name)
            return None
        if self.opt_stage == "init":
            self.tp_both_lower_init[self._start] = relaxation.lower_point.detach()
            self.tp_both_upper_init[self._start] = relaxation.upper_point.detach()
        self.lw, self.lb = relaxation.lower_k, relaxation.lower_b
        self.uw, self.ub = relaxation.upper_k, relaxation.upper_b
        return None

    ops.BoundTanh.bound_relax_impl = bound_relax_impl


def _optimized_s_shaped_lines(node: Any, x: Any, relaxation: SShapedRelaxation, name: str) -> None:
    """alpha-CROWN's lines: tangents at the optimized points alpha (shape (4, 2, spec,
    *bounds)) where a tangent is the relaxation's choice, the fixed lines elsewhere.
    Tangent points are kept where their tangents are valid: within the interval for
    intervals on one side of 0, below lower_limit (above upper_limit) for the lower
    (upper) line of an interval that contains 0."""
    import torch

    from certify.bounds.s_shaped import round_line, s_shaped_function

    f, df = s_shaped_function(name)
    alpha = node.alpha[node._start]
    lower, upper = x.lower.detach(), x.upper.detach()
    alpha.data[0] = torch.max(torch.min(alpha.data[0], upper), lower)  # upper, l >= 0
    alpha.data[1] = torch.max(torch.min(alpha.data[1], upper), lower)  # lower, u <= 0
    alpha.data[2] = torch.min(alpha.data[2], relaxation.lower_limit)  # lower, l < 0 < u
    alpha.data[3] = torch.max(alpha.data[3], relaxation.upper_limit)  # upper, l < 0 < u
    reach = torch.maximum(lower.abs(), upper.abs()).double()

    def tangent(point: Any, side: float) -> tuple[Any, Any]:
        p = point.double()
        k = df(p)
        return round_line(k, f(p) - k * p, reach, side, lower.dtype)

    finite, crossing = relaxation.finite, (lower < 0) & (upper > 0)
    lower_tangent = finite & ((upper <= 0) | (crossing & ~relaxation.direct_lower))
    upper_tangent = finite & ((lower >= 0) | (crossing & ~relaxation.direct_upper))
    points_l = torch.where(upper <= 0, alpha[1], alpha[2])
    points_u = torch.where(lower >= 0, alpha[0], alpha[3])
    (lk, lb), (uk, ub) = tangent(points_l, -1.0), tangent(points_u, 1.0)
    # contiguous(): in patches mode the lines are unfolded with .view, and torch.where
    # takes the layout of the bounds, which are often a transposed view.
    node.lw = torch.where(lower_tangent, lk, relaxation.lower_k).contiguous()
    node.lb = torch.where(lower_tangent, lb, relaxation.lower_b).contiguous()
    node.uw = torch.where(upper_tangent, uk, relaxation.upper_k).contiguous()
    node.ub = torch.where(upper_tangent, ub, relaxation.upper_b).contiguous()


def _s_shaped_conv_alpha_probe() -> bool:
    """The tangent points of a sigmoid whose bounds a convolution's neurons are computed
    from, in patches mode: one per neuron (out_c, out_h, out_w) of that convolution."""
    import torch

    lower, upper = torch.full((1, 2, 1, 1), -1.0), torch.full((1, 2, 1, 1), 3.0)
    node = bound_ops().BoundSigmoid({}, [types.SimpleNamespace(lower=lower, upper=upper)], 0, {})
    node.opt_init()
    node.tp_both_lower_init["conv"] = torch.full((1, 2, 1, 1), -2.0)
    node.tp_both_upper_init["conv"] = torch.full((1, 2, 1, 1), 0.5)
    node.init_opt_parameters([("conv", (3, 2, 2), None)])
    alpha = node.alpha["conv"]  # (4 kinds of point, lower/upper bound pass, spec, *bounds)
    expected = torch.tensor([1.0, 1.0, -2.0, 0.5]).view(4, 1, 1, 1, 1, 1, 1)
    return alpha.shape == (4, 2, 12, 1, 2, 1, 1) and torch.equal(alpha, expected.expand_as(alpha))


@patch("s_shaped_conv_alpha", probe=_s_shaped_conv_alpha_probe)
def _s_shaped_conv_alpha_apply() -> None:
    """alpha-CROWN keeps, for each neuron whose bounds pass back through a sigmoid or
    tanh, that activation's own tangent points. When those neurons are a convolution's
    in patches mode, 0.3 names their number as the (out_c, out_h, out_w) shape of the
    convolution's output (as for ReLU), and BoundTanh.init_opt_parameters (BoundSigmoid's
    too) multiplies out only a torch.Size, so it fails (``empty(): argument 'size'``).
    Give it the product: one tangent point per neuron of the convolution, as ReLU keeps
    one slope per neuron (maybe_unfold_patches then takes each neuron's own)."""
    import math

    import torch

    ops = bound_ops()
    original = ops.BoundTanh.init_opt_parameters

    def init_opt_parameters(self: Any, start_nodes: Any) -> Any:
        sized = [
            (name, math.prod(size) if isinstance(size, tuple | list | torch.Size) else size, idx)
            for name, size, idx in start_nodes
        ]
        return original(self, sized)

    ops.BoundTanh.init_opt_parameters = init_opt_parameters
