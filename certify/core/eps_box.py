"""The L_inf ball of radius eps around an image, clipped to the pixel box [0, 1].

Every model certify bounds, attacks or trains takes images in pixel space, [0, 1]: the
normalization of a data set lives inside the model (its first layer). So the set of
inputs a perturbation can reach is the eps-ball intersected with the pixel box, and eps
is a radius in that pixel space. Bounds, attacks and training losses all take their box
from :func:`eps_box`, so that they agree on it to the last bit.
"""

from __future__ import annotations

from torch import Tensor


def eps_box(x: Tensor, eps: float | Tensor) -> tuple[Tensor, Tensor]:
    """(lower, upper): the box ``[x - eps, x + eps]`` clipped to ``[0, 1]``.

    ``eps`` is a number or a tensor that broadcasts against ``x`` (one radius per image,
    e.g. of shape N x 1 x 1 x 1, or one per pixel). Each end is clipped in place in the
    fresh tensor that ``x -/+ eps`` makes: the values and gradients are those of
    ``(x - eps).clamp(0.0, 1.0)``, without a second tensor of ``x``'s size when no
    gradient is recorded.
    """
    return (x - eps).clamp_(0.0, 1.0), (x + eps).clamp_(0.0, 1.0)
