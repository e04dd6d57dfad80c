"""The computation graph of a model, traced with ``torch.fx``.

Interval propagation and IBP initialization need to know how layers are wired
(residual additions, the last layer); tracing gives that for any ``forward`` without
data-dependent control flow. Library layers and :class:`Normalize` stay leaves, so the
graph names the modules that hold the parameters.
"""

from __future__ import annotations

import operator

import torch
from torch import fx, nn

from certify.core.errors import ModelError, first_line
from model_zoo.normalization import Normalize

ADD_TARGETS = (operator.add, operator.iadd, torch.add)


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        # onnx2torch's operator modules stay whole: some branch on their constant
        # inputs (Reshape's shape), which tracing into them cannot follow.
        return (
            isinstance(m, Normalize)
            or type(m).__module__.startswith("onnx2torch.")
            or super().is_leaf_module(m, module_qualified_name)
        )


def trace(model: nn.Module) -> fx.Graph:
    """The fx graph of ``model``; raises :class:`ModelError` for untraceable forwards."""
    try:
        return _Tracer().trace(model)
    except Exception as exc:  # fx raises many kinds for dynamic code
        raise ModelError(
            f"cannot trace {type(model).__name__} for interval bounds: {first_line(exc)}; "
            "its forward must not branch on data"
        ) from None


def is_residual_add(node: fx.Node) -> bool:
    """An addition of two computed values (not of a constant): a residual join."""
    if node.op == "call_function" and node.target in ADD_TARGETS:
        return sum(isinstance(a, fx.Node) for a in node.args[:2]) == 2
    if node.op == "call_method" and node.target in ("add", "add_", "__add__"):
        return sum(isinstance(a, fx.Node) for a in node.args[:2]) == 2
    return False


def layer_nodes(graph: fx.Graph, model: nn.Module) -> list[tuple[fx.Node, nn.Module]]:
    """Every call of a Conv or Linear module, in execution order."""
    found = []
    for node in graph.nodes:
        if node.op == "call_module":
            module = model.get_submodule(node.target)
            if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Linear):
                found.append((node, module))
    return found
