"""IBP initialization (Shi et al. 2021, Section 3.2).

With weights drawn from N(0, sigma^2), sigma = sqrt(2*pi) / fan_in, the expected width
of IBP bounds stays constant from layer to layer at initialization, instead of growing
exponentially as with Kaiming initialization. Every Conv/Linear weight except the last
layer's is redrawn; biases and BatchNorm parameters are left as they are. A layer that
reads a residual sum (directly or through one ReLU) gets half the weight, because the
sum of two paths doubles the width of the bounds reaching it.

``reinitialized`` in the report names the redrawn layers, ``halved`` the layers after a
residual sum (the classifier included, as in the seed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import fx, nn

from certify.bounds.graph import is_residual_add, layer_nodes, trace


@dataclass(frozen=True)
class InitReport:
    """What :func:`ibp_init` changed, for logging."""

    reinitialized: tuple[str, ...]
    halved: tuple[str, ...]
    kept_last: str | None


def ibp_sigma(weight: torch.Tensor) -> float:
    """sqrt(2*pi) / fan_in for a Conv or Linear weight."""
    fan_in, _ = nn.init._calculate_fan_in_and_fan_out(weight)
    return math.sqrt(2 * math.pi) / fan_in


def ibp_init(model: nn.Module, generator: torch.Generator | None = None) -> InitReport:
    """Redraw the weights of ``model`` in place; returns the names of what changed."""
    graph = trace(model)
    names = {id(m): name for name, m in model.named_modules()}
    layers = [m for m in model.modules() if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Linear)]
    if not layers:
        return InitReport((), (), None)
    # The last layer in definition order is the classifier, as in the seed.
    last = layers[-1]
    changed = []
    with torch.no_grad():
        for module in layers[:-1]:
            sigma = ibp_sigma(module.weight)
            module.weight.normal_(0.0, sigma, generator=generator)
            changed.append(names[id(module)])
        halved = []
        for node, module in layer_nodes(graph, model):
            if _reads_residual_sum(node):
                module.weight.div_(2)
                halved.append(names[id(module)])
    return InitReport(tuple(changed), tuple(halved), names[id(last)])


def _reads_residual_sum(node: fx.Node) -> bool:
    source = node.args[0] if node.args else None
    if not isinstance(source, fx.Node):
        return False
    if is_residual_add(source):
        return True
    # As the seed, look one node further back: conv(relu(a + b)) is halved too.
    parent = source.args[0] if source.args else None
    return isinstance(parent, fx.Node) and is_residual_add(parent)
