"""An exact verifier for small ReLU networks, written for the tests, independent of
certify's bounds: the network as a mixed-integer linear program (one binary per unstable
ReLU, big-M constraints from bounds taken in float64 by interval arithmetic and, from the
second hidden layer on, the LP relaxation of the layers before), solved with scipy's HiGHS.

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


# LP optima are feasible to HiGHS's tolerance; the LP bounds are widened by this much so
# that no input's true pre-activation is cut off.
_SLACK = 1e-6


def exact_min_margin(model: nn.Sequential, image: torch.Tensor, label: int, eps: float) -> float:
    x = image.double().flatten().numpy()
    box = (np.clip(x - eps, 0, 1), np.clip(x + eps, 0, 1))
    layers = affine_layers(model, tuple(image.shape))
    # Pre-activation bounds of each hidden layer: interval arithmetic, then (from the
    # second hidden layer on) the LP relaxation of the layers before it, which is far
    # tighter: small big-M constants keep the MILP's search short.
    bounds: list[tuple[np.ndarray, np.ndarray]] = []
    post = box
    for w, b in layers[:-1]:
        wp, wn = np.clip(w, 0, None), np.clip(w, None, 0)
        zl = wp @ post[0] + wn @ post[1] + b
        zu = wp @ post[1] + wn @ post[0] + b
        if bounds:
            program = _Program(box, layers, bounds)
            for j in np.nonzero((zl < 0) & (zu > 0))[0]:
                zl[j] = max(zl[j], program.minimum(w[j], relaxed=True) + b[j] - _SLACK)
                zu[j] = min(zu[j], -program.minimum(-w[j], relaxed=True) + b[j] + _SLACK)
        bounds.append((zl, zu))
        post = (np.clip(zl, 0, None), np.clip(zu, 0, None))
    program = _Program(box, layers, bounds)
    w_out, b_out = layers[-1]
    return float(min(
        program.minimum(w_out[label] - w_out[other]) + b_out[label] - b_out[other]
        for other in range(w_out.shape[0]) if other != label
    ))  # fmt: skip


class _Program:
    """The first ``len(bounds)`` hidden layers as a mixed-integer linear program over the
    input box. Variables: the input, then per hidden layer its pre-activations z,
    post-activations h and one binary per neuron (fixed where the neuron is stable)."""

    def __init__(self, box: tuple, layers: list[tuple], bounds: list[tuple]) -> None:
        lo_in, hi_in = box
        n = len(lo_in) + sum(3 * len(zl) for zl, _ in bounds)
        self.lower, self.upper = np.zeros(n), np.zeros(n)
        self.lower[: len(lo_in)], self.upper[: len(lo_in)] = lo_in, hi_in
        self.integrality = np.zeros(n)
        rows, row_lo, row_hi = [], [], []

        def row(entries: dict[int, float], lo: float, hi: float) -> None:
            r = np.zeros(n)
            for i, v in entries.items():
                r[i] = v
            rows.append(r), row_lo.append(lo), row_hi.append(hi)

        prev, prev_size, pos = 0, len(lo_in), len(lo_in)
        for (w, b), (zl, zu) in zip(layers, bounds, strict=False):
            k = len(zl)
            z, h, d = pos, pos + k, pos + 2 * k
            self.lower[z : z + k], self.upper[z : z + k] = zl, zu
            self.upper[h : h + k] = np.maximum(zu, 0)
            self.upper[d : d + k] = 1
            self.integrality[d : d + k] = 1
            for j in range(k):
                # z_j = W_j . prev + b_j
                r = np.zeros(n)
                r[prev : prev + prev_size] = w[j]
                r[z + j] = -1
                rows.append(r), row_lo.append(-b[j]), row_hi.append(-b[j])
                if zl[j] >= 0:  # active: h = z
                    row({h + j: 1, z + j: -1}, 0, 0)
                    self.lower[d + j] = 1
                elif zu[j] <= 0:  # inactive: h = 0
                    self.upper[h + j] = self.upper[d + j] = 0
                else:
                    row({h + j: 1, z + j: -1}, 0, np.inf)  # h >= z
                    row({h + j: 1, d + j: -zu[j]}, -np.inf, 0)  # h <= u d
                    row({h + j: 1, z + j: -1, d + j: -zl[j]}, -np.inf, -zl[j])  # h <= z - l (1 - d)
            prev, prev_size, pos = h, k, pos + 3 * k
        self.last = slice(prev, prev + prev_size)
        self.constraints = LinearConstraint(np.array(rows), row_lo, row_hi) if rows else None

    def minimum(self, c_last: np.ndarray, relaxed: bool = False) -> float:
        """min c_last . h over the program (its LP relaxation when ``relaxed``), h the
        post-activations of its last hidden layer."""
        c = np.zeros(len(self.lower))
        c[self.last] = c_last
        result = milp(
            c, constraints=self.constraints, bounds=Bounds(self.lower, self.upper),
            integrality=np.zeros_like(self.integrality) if relaxed else self.integrality,
            options={"mip_rel_gap": 0},
        )  # fmt: skip
        assert result.success, result.message
        return float(result.fun)
