"""Which unstable ReLU each subdomain splits on next.

- **BaBSR** (Bunel et al., "Branch and bound for piecewise linear neural network
  verification", JMLR 2020) scores every unstable neuron from the last bound alone: how
  much of the bound its relaxation costs (the intercept of the upper line, weighted by the
  neuron's coefficient in the bound), plus the part of the layer's bias that passes
  through the relaxed slope. No extra bounding.
- **FSB**, filtered smart branching (De Palma et al., "Improved branch and bound for neural
  network verification via Lagrangian decomposition", 2021): the best ``k`` neurons by
  BaBSR's score and the best ``k`` by the intercept alone are the candidates; both
  children of every candidate are bounded with one cheap pass (slopes and multipliers as
  they are), and the candidate whose worse child is best wins.

Scores are taken for the margins still unproven in each subdomain. A subdomain without an
unstable neuron gets layer -1.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from certify.bounds.bab.domains import Domains

# Candidates per heuristic in FSB (alpha-beta-CROWN's default is also a handful).
FSB_CANDIDATES = 3


def babsr_scores(
    domains: Domains, coefficients: list[Tensor | None], biases: list[Tensor | None]
) -> tuple[list[Tensor], list[Tensor]]:
    """Per layer, BaBSR's score and the intercept score of every neuron (B x n_i); -inf
    where the neuron is stable."""
    # Weigh the margins not yet proven in each subdomain equally.
    open_margins = (domains.lb <= 0).to(domains.lb.dtype)
    weights = open_margins / open_margins.sum(dim=1, keepdim=True).clamp(min=1.0)
    scores, intercepts = [], []
    for i, (lo, up) in enumerate(zip(domains.lower, domains.upper, strict=True)):
        unstable = (lo < 0) & (up > 0)
        a = coefficients[i]
        if a is None:
            a = torch.zeros(lo.shape[0], lo.shape[1], device=lo.device, dtype=lo.dtype)
        else:
            a = torch.einsum("sbn,bs->bn", a, weights)
        width = torch.where(unstable, up - lo, torch.ones_like(lo))
        slope = torch.where(unstable, up / width, torch.zeros_like(lo))
        # What the upper line's intercept (-u l / (u - l) >= 0) costs where the bound uses
        # that line (a negative coefficient).
        intercept = a.clamp(max=0.0).neg() * (-up * lo / width)
        bias = biases[i]
        through_bias = a * slope * bias if bias is not None else torch.zeros_like(lo)
        score = (through_bias + intercept).abs()
        scores.append(torch.where(unstable, score, torch.full_like(lo, -torch.inf)))
        intercepts.append(torch.where(unstable, intercept, torch.full_like(lo, -torch.inf)))
    return scores, intercepts


def best_of(scores: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """The layer, neuron and score of the best-scored neuron of each subdomain."""
    flat = torch.cat(scores, dim=1)
    value, where = flat.max(dim=1)
    offsets = torch.tensor([0] + [s.shape[1] for s in scores], device=flat.device).cumsum(0)
    layer = torch.searchsorted(offsets[1:], where, right=True)
    neuron = where - offsets[layer]
    return layer, neuron, value


def choose_babsr(
    domains: Domains, coefficients: list[Tensor | None], biases: list[Tensor | None]
) -> tuple[Tensor, Tensor]:
    scores, intercepts = babsr_scores(domains, coefficients, biases)
    layer, neuron, value = best_of(scores)
    # Where no neuron scores above zero (no coefficient reaches it), the widest relaxation.
    flat_layer, flat_neuron, _ = best_of(
        [torch.where(s > -torch.inf, up - lo, s)
         for s, lo, up in zip(scores, domains.lower, domains.upper, strict=True)]
    )  # fmt: skip
    weak = value <= 1e-12
    layer = torch.where(weak, flat_layer, layer)
    neuron = torch.where(weak, flat_neuron, neuron)
    return _mark_exhausted(domains, layer, neuron)


def choose_fsb(
    domains: Domains,
    coefficients: list[Tensor | None],
    biases: list[Tensor | None],
    bound_children: Callable[[Domains], Tensor],
    candidates: int = FSB_CANDIDATES,
) -> tuple[Tensor, Tensor]:
    """``bound_children`` bounds a batch of subdomains cheaply (worst margin each)."""
    scores, intercepts = babsr_scores(domains, coefficients, biases)
    picks: list[tuple[Tensor, Tensor]] = []
    for table in (scores, intercepts):
        flat = torch.cat(table, dim=1)
        k = min(candidates, flat.shape[1])
        _, where = flat.topk(k, dim=1)
        offsets = torch.tensor([0] + [s.shape[1] for s in table], device=flat.device).cumsum(0)
        for j in range(k):
            column = where[:, j].contiguous()
            layer = torch.searchsorted(offsets[1:], column, right=True)
            picks.append((layer, column - offsets[layer]))
    b = len(domains)
    unstable = domains.unstable()
    best_value = torch.full((b,), -torch.inf, device=domains.lb.device)
    best_layer, best_neuron = _mark_exhausted(domains, *choose_babsr(domains, coefficients, biases))
    for layer, neuron in picks:
        valid = _is_unstable(unstable, layer, neuron)
        children = domains.split(torch.where(valid, layer, -1), neuron)
        worst = bound_children(children)
        value = torch.minimum(worst[:b], worst[b:])
        take = valid & (value > best_value)
        best_value = torch.where(take, value, best_value)
        best_layer = torch.where(take, layer, best_layer)
        best_neuron = torch.where(take, neuron, best_neuron)
    return best_layer, best_neuron


def _is_unstable(unstable: list[Tensor], layer: Tensor, neuron: Tensor) -> Tensor:
    rows = torch.arange(len(layer), device=layer.device)
    found = torch.zeros(len(layer), dtype=torch.bool, device=layer.device)
    for i, table in enumerate(unstable):
        here = layer == i
        found[here] = table[rows[here], neuron[here]]
    return found


def _mark_exhausted(domains: Domains, layer: Tensor, neuron: Tensor) -> tuple[Tensor, Tensor]:
    valid = _is_unstable(domains.unstable(), layer, neuron)
    return torch.where(valid, layer, -1), torch.where(valid, neuron, 0)
