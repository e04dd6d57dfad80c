"""An exact verifier for small ReLU networks, written for the tests, independent of
certify's bounds: the network as a mixed-integer linear program (one binary per unstable
ReLU, big-M constraints from interval bounds taken in float64), solved with scipy's HiGHS.

:func:`exact_min_margin` returns the smallest ``z_label - z_j`` over every other class j
and every input in the eps-ball clipped to [0, 1]: positive means robust.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import Bounds, LinearConstraint, milp
from torch import nn


def affine_layers(model: nn.Sequential, input_shape: tuple[int, ...]) -> list[tuple]:
    """The network as (W, b) pairs with a ReLU between consecutive pairs, in float64
    (convolutions as dense matrices, by applying them to the unit basis)."""
    layers: list[tuple[np.ndarray, np.ndarray]] = []
    shape = input_shape
    for module in model:
        if isinstance(module, nn.Flatten | nn.ReLU):
            if isinstance(module, nn.Flatten):
                shape = (int(np.prod(shape)),)
            continue
        if isinstance(module, nn.Linear):
            w = module.weight.detach().double().numpy()
            b = module.bias.detach().double().numpy()
            shape = (w.shape[0],)
        elif isinstance(module, nn.Conv2d):
            size = int(np.prod(shape))
            basis = torch.eye(size, dtype=torch.float64).view(size, *shape)
            conv = nn.Conv2d(
                module.in_channels, module.out_channels, module.kernel_size,
                stride=module.stride, padding=module.padding, bias=False,
            ).double()  # fmt: skip
            conv.weight.data = module.weight.detach().double()
            with torch.no_grad():
                out = conv(basis)
            shape = tuple(out.shape[1:])
            w = out.reshape(size, -1).T.numpy()
            b = module.bias.detach().double()[:, None, None].expand(shape).reshape(-1).numpy()
        else:
            raise TypeError(f"the exact verifier does not know {type(module).__name__}")
        layers.append((w, b))
    return layers


def exact_min_margin(model: nn.Sequential, image: torch.Tensor, label: int, eps: float) -> float:
    x = image.double().flatten().numpy()
    lo_in, hi_in = np.clip(x - eps, 0, 1), np.clip(x + eps, 0, 1)
    layers = affine_layers(model, tuple(image.shape))
    # Variables: the input, then per hidden layer its pre-activations z, post-activations
    # h and one binary per neuron (fixed where the neuron is stable).
    l_box, u_box = lo_in, hi_in
    hidden = []
    for w, b in layers[:-1]:
        wp, wn = np.clip(w, 0, None), np.clip(w, None, 0)
        zl = wp @ l_box + wn @ u_box + b
        zu = wp @ u_box + wn @ l_box + b
        hidden.append((w, b, zl, zu))
        l_box, u_box = np.clip(zl, 0, None), np.clip(zu, 0, None)
    n = len(lo_in) + sum(3 * len(h[2]) for h in hidden)
    lower = np.concatenate(
        [lo_in]
        + [np.concatenate([h[2], np.maximum(h[2], 0) * 0, np.zeros(len(h[2]))]) for h in hidden]
    )
    upper = np.concatenate(
        [hi_in] + [np.concatenate([h[3], np.maximum(h[3], 0), np.ones(len(h[2]))]) for h in hidden]
    )
    rows, row_lo, row_hi = [], [], []
    integrality = np.zeros(n)
    prev, prev_size = 0, len(lo_in)
    pos = len(lo_in)
    for w, b, zl, zu in hidden:
        k = len(zl)
        z, h, d = pos, pos + k, pos + 2 * k
        integrality[d : d + k] = 1
        for j in range(k):
            # z_j = W_j . prev + b_j
            r = np.zeros(n)
            r[prev : prev + prev_size] = w[j]
            r[z + j] = -1
            rows.append(r), row_lo.append(-b[j]), row_hi.append(-b[j])
            if zl[j] >= 0:  # active: h = z
                r = np.zeros(n)
                r[h + j] = 1
                r[z + j] = -1
                rows.append(r), row_lo.append(0), row_hi.append(0)
                lower[d + j] = upper[d + j] = 1
            elif zu[j] <= 0:  # inactive: h = 0
                upper[h + j] = 0
                lower[d + j] = upper[d + j] = 0
            else:
                r = np.zeros(n)
                r[h + j] = 1
                r[z + j] = -1  # h >= z
                rows.append(r), row_lo.append(0), row_hi.append(np.inf)
                r = np.zeros(n)
                r[h + j] = 1
                r[d + j] = -zu[j]  # h <= u d
                rows.append(r), row_lo.append(-np.inf), row_hi.append(0)
                r = np.zeros(n)
                r[h + j] = 1
                r[z + j] = -1
                r[d + j] = -zl[j]  # h <= z - l (1 - d)
                rows.append(r), row_lo.append(-np.inf), row_hi.append(-zl[j])
        prev, prev_size = h, k
        pos += 3 * k
    w_out, b_out = layers[-1]
    constraints = LinearConstraint(np.array(rows), row_lo, row_hi) if rows else None
    worst = np.inf
    for other in range(w_out.shape[0]):
        if other == label:
            continue
        c = np.zeros(n)
        c[prev : prev + prev_size] = w_out[label] - w_out[other]
        result = milp(
            c, constraints=constraints, integrality=integrality, bounds=Bounds(lower, upper),
            options={"mip_rel_gap": 0},
        )  # fmt: skip
        assert result.success, result.message
        worst = min(worst, result.fun + b_out[label] - b_out[other])
    return float(worst)
