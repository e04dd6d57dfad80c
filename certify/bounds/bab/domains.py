"""The open subdomains of one image's branch and bound, held as batched tensors.

Each subdomain has, for every ReLU layer ``i``, the bounds of its pre-activations
(``lower[i]``, ``upper[i]``, flattened to (B, n_i)) with the split neurons pinned at 0,
the split constraints (``split_loc[i]``: the flat neuron index, ``split_sign[i]``: +1 for
"active" (z >= 0), -1 for "inactive" (z <= 0), 0 for padding), beta-CROWN's multipliers
of those constraints (``beta[i]``), alpha-CROWN's lower slopes (``alpha[i]``, margins x B
x n_i) and the lower bound of every margin found so far (``lb``, B x margins). Children
inherit their parent's slopes and multipliers, the new constraint starting at 0: the warm
start of beta-CROWN.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class Domains:
    lower: list[Tensor]
    upper: list[Tensor]
    alpha: list[Tensor]
    split_loc: list[Tensor]
    split_sign: list[Tensor]
    beta: list[Tensor]
    lb: Tensor
    # Bounds of the other nodes auto_LiRPA needs bounds of (inputs of nonlinear operators
    # other than the split ReLUs), by node name: the root's, shared by every subdomain.
    fixed: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.lb)

    @property
    def worst(self) -> Tensor:
        """The smallest margin lower bound of each subdomain."""
        return self.lb.min(dim=1).values

    def unstable(self) -> list[Tensor]:
        """Per ReLU layer, which neurons of each subdomain are still unstable."""
        return [(lo < 0) & (up > 0) for lo, up in zip(self.lower, self.upper, strict=True)]

    def select(self, rows: Tensor) -> Domains:
        return Domains(
            lower=[t[rows] for t in self.lower],
            upper=[t[rows] for t in self.upper],
            alpha=[t[:, rows] for t in self.alpha],
            split_loc=[t[rows] for t in self.split_loc],
            split_sign=[t[rows] for t in self.split_sign],
            beta=[t[rows] for t in self.beta],
            lb=self.lb[rows],
            fixed=self.fixed,
        )

    @staticmethod
    def concatenate(parts: list[Domains]) -> Domains:
        parts = [p for p in parts if len(p)] or parts[:1]
        layers = range(len(parts[0].lower))

        def cat(field: str, dim: int = 0) -> list[Tensor]:
            return [torch.cat([getattr(p, field)[i] for p in parts], dim=dim) for i in layers]

        return Domains(
            lower=cat("lower"),
            upper=cat("upper"),
            alpha=cat("alpha", dim=1),
            split_loc=_padded_cat([p.split_loc for p in parts], layers, 0),
            split_sign=_padded_cat([p.split_sign for p in parts], layers, 0.0),
            beta=_padded_cat([p.beta for p in parts], layers, 0.0),
            lb=torch.cat([p.lb for p in parts]),
            fixed=parts[0].fixed,
        )

    def margins(self, keep: Tensor) -> Domains:
        """The same subdomains with only the margins ``keep`` (a mask over margins)."""
        return Domains(
            lower=self.lower,
            upper=self.upper,
            alpha=[a[keep] for a in self.alpha],
            split_loc=self.split_loc,
            split_sign=self.split_sign,
            beta=self.beta,
            lb=self.lb[:, keep],
            fixed=self.fixed,
        )

    def split(self, layer: Tensor, neuron: Tensor) -> Domains:
        """Two children per subdomain, split on neuron ``neuron[b]`` of ReLU layer
        ``layer[b]``: first every "active" child (z >= 0), then every "inactive" one."""
        b = len(self)
        rows = torch.arange(b, device=self.lb.device)
        lower, upper, loc, sign, beta = [], [], [], [], []
        for i in range(len(self.lower)):
            here = layer == i
            lo_on, up_off = self.lower[i].clone(), self.upper[i].clone()
            lo_on[rows[here], neuron[here]] = 0.0
            up_off[rows[here], neuron[here]] = 0.0
            lower.append(torch.cat([lo_on, self.lower[i]]))
            upper.append(torch.cat([self.upper[i], up_off]))
            # One more column of constraints where some subdomain splits in this layer.
            if here.any():
                new_loc = torch.where(here, neuron, 0)[:, None]
                new_sign = here.to(self.lb.dtype)[:, None]
                loc_i = torch.cat([self.split_loc[i], new_loc], dim=1)
                sign_i = torch.cat([self.split_sign[i], new_sign], dim=1)
                beta_i = torch.cat([self.beta[i], torch.zeros_like(new_sign)], dim=1)
                sign.append(torch.cat([sign_i, torch.cat([self.split_sign[i], -new_sign], 1)]))
            else:
                loc_i, beta_i = self.split_loc[i], self.beta[i]
                sign.append(torch.cat([self.split_sign[i], self.split_sign[i]]))
            loc.append(torch.cat([loc_i, loc_i]))
            beta.append(torch.cat([beta_i, beta_i]))
        return Domains(
            lower=lower,
            upper=upper,
            alpha=[torch.cat([a, a], dim=1) for a in self.alpha],
            split_loc=loc,
            split_sign=sign,
            beta=beta,
            lb=torch.cat([self.lb, self.lb]),
            fixed=self.fixed,
        )


def _padded_cat(tables: list[list[Tensor]], layers: range, fill: float) -> list[Tensor]:
    """Row-wise concatenation of (B_k, d_k) tables with different d_k, padded with
    ``fill`` (padding constraints have sign 0: they change no bound)."""
    out = []
    for i in layers:
        width = max(t[i].shape[1] for t in tables)
        padded = [
            torch.nn.functional.pad(t[i], (0, width - t[i].shape[1]), value=fill) for t in tables
        ]
        out.append(torch.cat(padded))
    return out
