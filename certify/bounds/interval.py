"""Interval bound propagation (IBP), written by hand over the model's fx graph: the
interpreter that walks the graph (traced by :mod:`certify.bounds.graph`) and calls the
arithmetic of each layer (:mod:`certify.bounds.interval_arithmetic`,
:mod:`certify.bounds.interval_autograd`, :mod:`certify.bounds.interval_onnx`) on the
values of :mod:`certify.bounds.interval_values`. Training bounds its loss with it, and
evaluation takes IBP bounds from it where it agrees with auto_LiRPA.

One pass carries the clean activations and the interval of every activation over the
L_inf ball (clipped to the pixel box [0, 1]) through the network. Carrying the clean
values along gives the clean logits in the same pass, and lets BatchNorm in train mode
normalize the interval with the statistics of the clean batch, as auto_LiRPA does in
training. Intervals travel as centre and radius: affine layers map them as
``W c + b`` and ``|W| r``; ReLU maps the two ends. ReLU and train-mode BatchNorm of an
interval are autograd functions with hand-written backward passes (the same derivative
in fewer passes over the activations; tests check them against autograd).

When a margin specification ``C`` is given and the network ends in a Linear layer, C
is folded into that layer's weights before bounding (as auto_LiRPA does), which gives
tighter margin bounds than subtracting bounds of logits.

Supported: Conv1d/Conv2d (any groups, padding mode), Linear, BatchNorm1d/2d, ReLU,
Flatten and reshapes, average and max pooling, :class:`Normalize`, additions (residual
joins) and products with constants, and the same operations as onnx2torch writes them
in converted ONNX graphs (Add, Sub, Mul, Div, Reshape, Flatten, Transpose). Anything
else raises :class:`ModelError`.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from certify.bounds.graph import ADD_TARGETS, trace
from certify.bounds.interval_arithmetic import (
    add,
    affine,
    affine_call,
    apply_spec,
    batch_norm,
    cat,
    folded_linear,
    neg,
    normalize,
    relu_bounds_only,
    scale,
)
from certify.bounds.interval_autograd import IntervalReLU
from certify.bounds.interval_onnx import onnx_operator
from certify.bounds.interval_values import Bounds, IntervalResult, PreActivation
from certify.core.eps_box import eps_box
from certify.core.errors import ModelError
from model_zoo.normalization import Normalize

__all__ = ["Bounds", "IntervalNetwork", "IntervalResult", "PreActivation"]


_LEAVES = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Linear,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.ReLU,
    nn.Flatten,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.MaxPool2d,
    nn.Identity,
    nn.Dropout,
    Normalize,
)
_SHAPE_METHODS = {
    "view",
    "reshape",
    "flatten",
    "contiguous",
    "permute",
    "transpose",
    "squeeze",
    "unsqueeze",
    "__getitem__",
}
_LINEAR_FUNCTIONS: dict[Any, Callable] = {
    torch.flatten: torch.flatten,
    torch.reshape: torch.reshape,
    operator.getitem: operator.getitem,
    F.avg_pool2d: F.avg_pool2d,
    F.adaptive_avg_pool2d: F.adaptive_avg_pool2d,
    torch.squeeze: torch.squeeze,
    torch.unsqueeze: torch.unsqueeze,
}
_AFFINE_FUNCTIONS = (F.linear, F.conv1d, F.conv2d)
_RELU_FUNCTIONS = (F.relu, torch.relu)


class IntervalNetwork:
    """Bounds a fixed model by IBP for any batch and eps; the model's mode decides how
    BatchNorm behaves (train: clean batch statistics, updating the running ones as a
    clean step would; eval: running statistics)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.graph = trace(model)
        self._check_supported()
        output = next(n for n in self.graph.nodes if n.op == "output")
        last = output.args[0]
        is_linear = (
            isinstance(last, fx.Node)
            and last.op == "call_module"
            and isinstance(model.get_submodule(last.target), nn.Linear)
        )
        self._final_linear = last if is_linear else None
        # |W| of each weight for bounds_only, kept while the weight is unchanged:
        # id -> (weight, its version counter, |weight|).
        self._abs_weights: dict[int, tuple[Tensor, int, Tensor]] = {}

    def _check_supported(self) -> None:
        bad = set()
        for node in self.graph.nodes:
            if node.op == "call_module":
                module = self.model.get_submodule(node.target)
                if not isinstance(module, _LEAVES) and onnx_operator(module) is None:
                    bad.add(type(module).__name__)
        if bad:
            raise ModelError(
                f"interval bounds do not support layers {sorted(bad)}; supported are "
                "Conv, Linear, BatchNorm, ReLU, Flatten, pooling, Normalize and additions"
            )

    def __call__(self, x: Tensor, eps: float, spec: Tensor | None = None) -> IntervalResult:
        """Clean logits and IBP bounds over ``[x - eps, x + eps] ∩ [0, 1]``.

        ``spec`` (N x M x K) asks for bounds of ``spec @ logits`` instead of the logits.
        """
        return self.box_bounds(x, *eps_box(x, eps), spec)

    def box_bounds(
        self,
        points: Tensor,
        lower: Tensor,
        upper: Tensor,
        spec: Tensor | None = None,
        update_running: bool = True,
    ) -> IntervalResult:
        """Logits at ``points`` and IBP bounds over the box ``[lower, upper]`` (taken as
        given). In train mode BatchNorm normalizes both with the statistics of
        ``points``, which need not lie in the box (a training loss may want the
        statistics of another batch than the box's centres), and updates its running
        statistics with them unless not ``update_running``."""
        box = Bounds.from_box(points, lower, upper)
        run = _IntervalPass(self.model, spec, self._final_linear, update_running=update_running)
        return run.execute(self.graph, box)

    @torch.no_grad()
    def bounds_only(
        self, x: Tensor, eps: float, spec: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Lower and upper IBP bounds as in ``__call__``, for evaluation: no clean pass,
        no gradient, no pre-ReLU record, and intermediate intervals updated in place."""
        lower, upper = eps_box(x, eps)
        radius = upper.sub_(lower).mul_(0.5)
        box = Bounds(None, lower.add_(radius), radius)
        run = _IntervalPass(self.model, spec, self._final_linear, abs_weights=self._abs_weights)
        result = run.execute(self.graph, box)
        return result.lower, result.upper

    @torch.no_grad()
    def node_bounds(self, lower: Tensor, upper: Tensor) -> dict[str, Bounds]:
        """The interval of every graph node's value over the box ``[lower, upper]``
        (taken as given, not clipped), by node name; for analysing a model in eval mode
        (in train mode BatchNorm would normalize with, and record, the box's centre)."""
        record: dict[str, Bounds] = {}
        box = Bounds.from_box(None, lower, upper)
        box.x = box.center  # any point of the box: the pass needs clean values
        _IntervalPass(self.model, None, None).execute(self.graph, box, record)
        return record


class _IntervalPass:
    """The state of one pass over the graph."""

    def __init__(
        self,
        model: nn.Module,
        spec: Tensor | None,
        final: fx.Node | None,
        abs_weights: dict[int, tuple[Tensor, int, Tensor]] | None = None,
        update_running: bool = True,
    ) -> None:
        self.model = model
        self.update_running = update_running
        self.spec = spec
        self.final = final
        # A bounds-only run (no clean values, no gradient) is the one that caches |W|.
        self.abs_weights = abs_weights
        self.bounds_only = abs_weights is not None
        self.spec_folded = False  # the spec merged into the last Linear layer
        self.pre_relu: list[PreActivation] = []
        self.input_bounds: Bounds | None = None
        self.logits: Tensor | None = None

    def execute(
        self, graph: fx.Graph, box: Bounds, record: dict[str, Bounds] | None = None
    ) -> IntervalResult:
        """Runs the graph on ``box``; ``record``, when given, receives the interval of
        every node by name."""
        env: dict[fx.Node, Any] = {}
        out: Any = None
        for node in graph.nodes:
            if node.op == "placeholder":
                if env:
                    raise ModelError("interval bounds need a model with a single input")
                env[node] = box
            elif node.op == "output":
                out = env[node.args[0]]
            else:
                args = fx.node.map_arg(node.args, lambda n: env[n])
                kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n])
                env[node] = self._node(node, args, kwargs)
            if record is not None and isinstance(env.get(node), Bounds):
                record[node.name] = env[node]
        if not isinstance(out, Bounds):
            raise ModelError("the model's output does not depend on its input")
        if self.spec is not None and not self.spec_folded:
            self.logits = out.x
            out = apply_spec(out, self.spec)
        logits = out.x if self.logits is None else self.logits
        # In a bounds-only run the logits are None, which only bounds_only() sees.
        return IntervalResult(
            logits,  # type: ignore[arg-type]
            out.lower,
            out.upper,
            self.pre_relu,
            self.input_bounds or box,
        )

    def _node(self, node: fx.Node, args: tuple, kwargs: dict) -> Any:
        if node.op == "get_attr":
            value: Any = self.model
            for part in node.target.split("."):
                value = getattr(value, part)
            return value
        if node.op == "call_module":
            module = self.model.get_submodule(node.target)
            operation = onnx_operator(module)
            if operation is not None:
                return self._onnx(operation, args, kwargs)
            if node is self.final and self.spec is not None:
                if not self.bounds_only:
                    self.logits = F.linear(args[0].x, module.weight, module.bias)
                self.spec_folded = True
                return folded_linear(module.weight, module.bias, args[0], self.spec)
            return self._module(module, args[0])
        if node.op == "call_function":
            return self._function(node.target, args, kwargs)
        if node.op == "call_method":
            return self._method(node.target, args, kwargs)
        raise ModelError(f"unsupported graph node {node.op} {node.target}")

    def _relu(self, v: Bounds) -> Bounds:
        if self.bounds_only:
            return relu_bounds_only(v)
        center, radius, lower, upper, active, inactive = IntervalReLU.apply(v.center, v.radius)
        masks = (active.flatten(), inactive.flatten())
        self.pre_relu.append(PreActivation(lower, upper, v.center, v.radius, masks))
        return Bounds(torch.relu(v.x), center, radius)

    def _module(self, module: nn.Module, v: Any) -> Any:
        if not isinstance(v, Bounds):
            return module(v)
        if isinstance(module, nn.ReLU):
            return self._relu(v)
        if isinstance(module, nn.Conv1d | nn.Conv2d):
            # _conv_forward honours padding modes other than zeros.
            return affine(
                v, module._conv_forward, module.weight, module.bias, self._abs(module.weight)
            )
        if isinstance(module, nn.Linear):
            return affine(v, F.linear, module.weight, module.bias, self._abs(module.weight))
        if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
            return batch_norm(module, v, self.update_running)
        if isinstance(module, Normalize):
            out = normalize(module, v)
            if self.input_bounds is None:
                self.input_bounds = out
            return out
        if isinstance(module, nn.MaxPool2d):
            return v.monotone(module)
        if isinstance(module, nn.Dropout) and module.training and module.p > 0:
            raise ModelError("interval bounds in training do not support Dropout with p > 0")
        # Flatten, average pooling, Identity, inactive Dropout.
        return v.linear(module)

    def _onnx(self, operator_: tuple[str, Callable], args: tuple, kwargs: dict) -> Any:
        kind, fn = operator_
        if kind == "math":
            return self._function(fn, args, kwargs)
        if not isinstance(args[0], Bounds):
            return fn(*args, **kwargs)
        # Reshapes and transposes move values without mixing them: centre to centre,
        # radius to radius.
        return args[0].linear(lambda t: fn(t, *args[1:], **kwargs))

    def _abs(self, weight: Tensor) -> Tensor:
        """|weight|, from the cache of bounds_only runs while the weight is unchanged."""
        if self.abs_weights is None:
            return weight.abs()
        cached = self.abs_weights.get(id(weight))
        if cached is None or cached[0] is not weight or cached[1] != weight._version:
            cached = (weight, weight._version, weight.abs())
            self.abs_weights[id(weight)] = cached
        return cached[2]

    def _function(self, target: Any, args: tuple, kwargs: dict) -> Any:
        if not any(isinstance(a, Bounds) for a in args):
            if target is torch.cat and any(isinstance(a, Bounds) for a in args[0]):
                return cat(args, kwargs)
            return target(*args, **kwargs)
        if target in ADD_TARGETS:
            return add(args[0], args[1])
        if target in (operator.sub, torch.sub):
            return add(args[0], neg(args[1]))
        if target is operator.neg:
            return neg(args[0])
        if target in (operator.mul, torch.mul):
            return scale(args[0], args[1])
        if target in (operator.truediv, torch.div) and not isinstance(args[1], Bounds):
            return scale(args[0], 1.0 / args[1])
        if target in _AFFINE_FUNCTIONS and isinstance(args[0], Bounds):
            return affine_call(target, args, kwargs)
        if target in _RELU_FUNCTIONS:
            return self._relu(args[0])
        if target is F.max_pool2d:
            return args[0].monotone(lambda t: F.max_pool2d(t, *args[1:], **kwargs))
        if target is getattr:
            return getattr(args[0].center, args[1])
        if target in _LINEAR_FUNCTIONS:
            fn = _LINEAR_FUNCTIONS[target]
            return args[0].linear(lambda t: fn(t, *args[1:], **kwargs))
        raise ModelError(f"interval bounds do not support the function {target}")

    def _method(self, name: str, args: tuple, kwargs: dict) -> Any:
        v, rest = args[0], args[1:]
        if not isinstance(v, Bounds):
            return getattr(v, name)(*rest, **kwargs)
        if name in ("size", "dim"):
            return getattr(v.center, name)(*rest, **kwargs)
        if name in ("add", "add_", "__add__"):
            return add(v, rest[0])
        if name == "relu":
            return self._relu(v)
        if name == "mean" or name in _SHAPE_METHODS:
            return v.linear(lambda t: getattr(t, name)(*rest, **kwargs))
        raise ModelError(f"interval bounds do not support the tensor method {name}")
