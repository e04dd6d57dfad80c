"""Linear bounds of sigmoid and tanh on an interval: the relaxation CROWN needs of them.

For each neuron with pre-activation bounds [l, u], :func:`s_shaped_relaxation` picks a
lower and an upper line from tangents and chords by where [l, u] lies with respect to the
inflection point, in float64, and rounds them outwards so that they stay on their side of
the function in the bounds' dtype. :mod:`certify.bounds.lirpa_compat` puts these lines in
place of auto-LiRPA 0.3's (see its ``s_shaped_relaxation`` patch).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

#: f(0) of the S-shaped functions certify relaxes itself: both are point-symmetric about
#: (0, f(0)), their inflection point, convex left of it and concave right of it.
_CENTRE = {"sigmoid": 0.5, "tanh": 0.0}


def s_shaped_function(name: str) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    """f and f' of ``name``, in forms that stay accurate far from 0 (1 - tanh(x)^2 is 0
    in floating point long before sech(x)^2 is)."""
    if name == "sigmoid":
        return torch.sigmoid, lambda x: torch.sigmoid(x) * torch.sigmoid(-x)

    def dtanh(x: Any) -> Any:
        t = torch.exp(-2.0 * x.abs())
        return 4.0 * t / (1.0 + t) ** 2

    return torch.tanh, dtanh


def _lower_line(lower: Any, upper: Any, name: str) -> tuple[Any, Any, Any, Any]:
    """The lower line k*x + b of f on [lower, upper] (float64, finite, lower <= upper),
    chosen by where the interval lies with respect to the inflection point 0:

    * u <= 0, f convex: the tangent at the midpoint (of all tangents, the one with the
      largest area under it);
    * l >= 0, f concave: the chord;
    * l < 0 < u: the chord if it stays below f (f'(l) >= its slope); otherwise a
      tangent at a point d <= 0: it is valid exactly when it passes below (u, f(u))
      (f minus the tangent is convex and >= 0 left of 0, concave right of it), which
      holds for every d up to the d* found by bisection. Of those, the midpoint (when it
      is one) has the largest area; else d* itself.

    Returns (k, b, direct, limit): ``direct`` marks the crossing intervals that take the
    chord, ``limit`` is d* (the largest valid tangent point of a crossing interval, for
    alpha-CROWN's tangent points), ``lower`` elsewhere.
    """
    f, df = s_shaped_function(name)
    width = upper - lower
    mid = lower + width / 2
    f_l, f_u = f(lower), f(upper)
    chord = torch.where(width > 0, (f_u - f_l) / torch.where(width > 0, width, 1.0), df(lower))
    crossing = (lower < 0) & (upper > 0)
    direct = crossing & (df(lower) >= chord)

    # Bisection on the intervals that need it keeps lo valid (its tangent passes below
    # (u, f(u))) and hi invalid (the tangent at 0 passes above f right of 0); 80 halvings
    # of [l, 0] reach float64 resolution for any |l| < 1e8, and lo stays valid beyond.
    search = crossing & ~direct
    limit = lower.detach().clone()
    u_search, f_search = upper.detach()[search], f_u.detach()[search]
    lo, hi = limit[search], torch.zeros_like(u_search)
    for _ in range(80):
        d = (lo + hi) / 2
        below = f(d) + df(d) * (u_search - d) <= f_search
        lo, hi = torch.where(below, d, lo), torch.where(below, hi, d)
    limit[search] = lo

    point = torch.where(crossing, torch.minimum(limit, mid), mid)
    tangent_k = df(point)
    tangent_b = f(point) - tangent_k * point
    use_chord = (lower >= 0) | direct
    k = torch.where(use_chord, chord, tangent_k)
    b = torch.where(use_chord, f_l - chord * lower, tangent_b)
    return k, b, direct, limit


def round_line(k: Any, b: Any, reach: Any, side: float, dtype: Any) -> tuple[Any, Any]:
    """The float64 line (k, b) in ``dtype``, its bias moved outwards (down for a lower
    line, side=-1, up for an upper one, side=+1) by what rounding k costs on |x| <= reach
    and by a margin for float64's own rounding of f, then rounded outwards: the line in
    ``dtype`` stays on its side of f. Gradients pass as through a plain cast."""
    k_out = k.to(dtype)
    with torch.no_grad():
        reach = torch.where(torch.isfinite(reach), reach, 0.0)
        slack = (k_out.double() - k).abs() * reach + 1e-12 * (1.0 + b.abs())
        target = b + side * slack
        rounded = target.to(dtype)
        away = torch.full_like(rounded, side * float("inf"))
        rounded = torch.where(
            (rounded.double() - target) * side < 0, torch.nextafter(rounded, away), rounded
        )
    if not b.requires_grad:
        return k_out, rounded
    b_cast = b.to(dtype)
    return k_out, rounded + (b_cast - b_cast.detach())  # the value of rounded, exactly


@dataclass(frozen=True)
class SShapedRelaxation:
    """Linear bounds lower_k*x + lower_b <= f(x) <= upper_k*x + upper_b of sigmoid or
    tanh on each neuron's [lower, upper], in the dtype of the bounds.

    ``direct_lower``/``direct_upper`` mark the intervals that contain 0 and take the chord
    on that side; ``lower_limit``/``upper_limit`` are, on the other intervals that contain
    0, the tangent points closest to 0 whose tangents are still valid (every tangent
    point below lower_limit gives a valid lower line, above upper_limit a valid upper
    one), rounded outwards; ``lower_point``/``upper_point`` the tangent points chosen.
    """

    lower_k: Any
    lower_b: Any
    upper_k: Any
    upper_b: Any
    direct_lower: Any
    direct_upper: Any
    lower_limit: Any
    upper_limit: Any
    lower_point: Any
    upper_point: Any
    finite: Any


def s_shaped_relaxation(lower: Any, upper: Any, name: str) -> SShapedRelaxation:
    """CROWN's linear relaxation of ``name`` ("sigmoid" or "tanh") on [lower, upper],
    computed in float64 without a lookup table or a range limit, then rounded so that the
    lines stay sound in the bounds' dtype. Neurons with an infinite bound get the
    constant lines f(lower) and f(upper).

    The upper line is the lower line of the point-reflected interval [-u, -l], reflected
    back: f(x) = 2 f(0) - f(-x).
    """
    f, _ = s_shaped_function(name)
    centre = _CENTRE[name]
    dtype = lower.dtype
    l64, u64 = lower.double(), upper.double()
    finite = torch.isfinite(l64) & torch.isfinite(u64)
    l_safe, u_safe = torch.where(finite, l64, 0.0), torch.where(finite, u64, 0.0)
    lk, lb, direct_lower, lower_limit = _lower_line(l_safe, u_safe, name)
    rk, rb, direct_upper, reflected_limit = _lower_line(-u_safe, -l_safe, name)
    uk, ub = rk, 2.0 * centre - rb
    lk, uk = torch.where(finite, lk, 0.0), torch.where(finite, uk, 0.0)
    lb, ub = torch.where(finite, lb, f(l64)), torch.where(finite, ub, f(u64))
    reach = torch.maximum(l64.abs(), u64.abs()).detach()
    lower_k, lower_b = round_line(lk, lb, reach, -1.0, dtype)
    upper_k, upper_b = round_line(uk, ub, reach, 1.0, dtype)
    mid = (l_safe + (u_safe - l_safe) / 2).detach()
    lower_point = torch.minimum(lower_limit, mid)
    upper_point = torch.maximum(-reflected_limit, mid)

    def outwards(value: Any, side: float) -> Any:
        rounded = value.to(dtype)
        away = torch.full_like(rounded, side * float("inf"))
        return torch.where(
            (rounded.double() - value) * side < 0, torch.nextafter(rounded, away), rounded
        )

    return SShapedRelaxation(
        lower_k, lower_b, upper_k, upper_b,
        direct_lower & finite, direct_upper & finite,
        outwards(lower_limit, -1.0), outwards(-reflected_limit, 1.0),
        outwards(lower_point, -1.0), outwards(upper_point, 1.0), finite,
    )  # fmt: skip
