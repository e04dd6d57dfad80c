"""Interval bound propagation (IBP), written by hand over the model's fx graph.

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
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from certify.errors import ModelError
from model_zoo.normalization import Normalize
from training.graph import ADD_TARGETS, trace


def _maybe(fn: Callable[[Tensor], Tensor], x: Tensor | None) -> Tensor | None:
    """``fn(x)``, or None when the clean values are not carried (bounds only)."""
    return None if x is None else fn(x)


@dataclass
class Bounds:
    """Clean value (None when only bounds are wanted) and the interval of one
    activation, as centre and radius."""

    x: Tensor | None
    center: Tensor
    radius: Tensor

    @classmethod
    def from_box(cls, x: Tensor | None, lower: Tensor, upper: Tensor) -> Bounds:
        return cls(x, (upper + lower) * 0.5, (upper - lower) * 0.5)

    @property
    def lower(self) -> Tensor:
        return self.center - self.radius

    @property
    def upper(self) -> Tensor:
        return self.center + self.radius

    def linear(self, fn: Callable[[Tensor], Tensor]) -> Bounds:
        """Apply a map that is linear with non-negative weights (reshapes, average
        pooling): it takes centre to centre and radius to radius exactly."""
        return Bounds(_maybe(fn, self.x), fn(self.center), fn(self.radius))

    def monotone(self, fn: Callable[[Tensor], Tensor]) -> Bounds:
        """Apply an elementwise-increasing map (max pooling) to both ends."""
        return Bounds.from_box(_maybe(fn, self.x), fn(self.lower), fn(self.upper))


@dataclass
class PreActivation:
    """The interval of one ReLU's input, in both forms (the regularizers use both)."""

    lower: Tensor
    upper: Tensor
    center: Tensor
    radius: Tensor

    _masks: tuple[Tensor, Tensor] | None = field(default=None, repr=False)

    @classmethod
    def from_box(cls, lower: Tensor, upper: Tensor) -> PreActivation:
        return cls(lower, upper, (upper + lower) * 0.5, (upper - lower) * 0.5)

    def masks(self) -> tuple[Tensor, Tensor]:
        """Flat float masks of active (l > 0) and inactive (u < 0) neurons, computed once."""
        if self._masks is None:
            with torch.no_grad():
                active = (self.lower > 0).flatten().to(self.lower.dtype)
                inactive = (self.upper < 0).flatten().to(self.upper.dtype)
            self._masks = (active, inactive)
        return self._masks


@dataclass
class IntervalResult:
    """What one pass gives: clean logits, output bounds and the pre-ReLU bounds."""

    logits: Tensor
    lower: Tensor  # of C @ logits when a spec was given, else of the logits
    upper: Tensor
    # The input of every ReLU, in execution order.
    pre_relu: list[PreActivation] = field(default_factory=list)
    # The network's input after its normalization layer (the network proper sees
    # normalized images, as in the seed), or the pixel box when there is none.
    input_bounds: Bounds | None = None


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
                if not isinstance(module, _LEAVES) and _onnx_operator(module) is None:
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
        box = Bounds.from_box(x, (x - eps).clamp(0.0, 1.0), (x + eps).clamp(0.0, 1.0))
        return _Run(self.model, spec, self._final_linear).execute(self.graph, box)

    @torch.no_grad()
    def bounds_only(
        self, x: Tensor, eps: float, spec: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Lower and upper IBP bounds as in ``__call__``, for evaluation: no clean pass,
        no gradient, no pre-ReLU record, and intermediate intervals updated in place
        (2-2.7 clean forward passes on a CPU, against about 3 through auto_LiRPA)."""
        lower = (x - eps).clamp_(0.0, 1.0)
        radius = (x + eps).clamp_(0.0, 1.0).sub_(lower).mul_(0.5)
        box = Bounds(None, lower.add_(radius), radius)
        run = _Run(self.model, spec, self._final_linear, abs_weights=self._abs_weights)
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
        _Run(self.model, None, None).execute(self.graph, box, record)
        return record


class _Run:
    """The state of one pass over the graph."""

    def __init__(
        self,
        model: nn.Module,
        spec: Tensor | None,
        final: fx.Node | None,
        abs_weights: dict[int, tuple[Tensor, int, Tensor]] | None = None,
    ) -> None:
        self.model = model
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
            out = _apply_spec(out, self.spec)
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
            onnx_operator = _onnx_operator(module)
            if onnx_operator is not None:
                return self._onnx(onnx_operator, args, kwargs)
            if node is self.final and self.spec is not None:
                if not self.bounds_only:
                    self.logits = F.linear(args[0].x, module.weight, module.bias)
                self.spec_folded = True
                return _folded_linear(module.weight, module.bias, args[0], self.spec)
            return self._module(module, args[0])
        if node.op == "call_function":
            return self._function(node.target, args, kwargs)
        if node.op == "call_method":
            return self._method(node.target, args, kwargs)
        raise ModelError(f"unsupported graph node {node.op} {node.target}")

    def _relu(self, v: Bounds) -> Bounds:
        if self.bounds_only:
            return _relu_bounds_only(v)
        center, radius, lower, upper, active, inactive = _IntervalReLU.apply(v.center, v.radius)
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
            return _affine(
                v, module._conv_forward, module.weight, module.bias, self._abs(module.weight)
            )
        if isinstance(module, nn.Linear):
            return _affine(v, F.linear, module.weight, module.bias, self._abs(module.weight))
        if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
            return _batch_norm(module, v)
        if isinstance(module, Normalize):
            out = _normalize(module, v)
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
                return _cat(args, kwargs)
            return target(*args, **kwargs)
        if target in ADD_TARGETS:
            return _add(args[0], args[1])
        if target in (operator.sub, torch.sub):
            return _add(args[0], _neg(args[1]))
        if target is operator.neg:
            return _neg(args[0])
        if target in (operator.mul, torch.mul):
            return _scale(args[0], args[1])
        if target in (operator.truediv, torch.div) and not isinstance(args[1], Bounds):
            return _scale(args[0], 1.0 / args[1])
        if target in _AFFINE_FUNCTIONS and isinstance(args[0], Bounds):
            return _affine_call(target, args, kwargs)
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
            return _add(v, rest[0])
        if name == "relu":
            return self._relu(v)
        if name == "mean" or name in _SHAPE_METHODS:
            return v.linear(lambda t: getattr(t, name)(*rest, **kwargs))
        raise ModelError(f"interval bounds do not support the tensor method {name}")


def _onnx_operator(module: nn.Module) -> tuple[str, Callable] | None:
    """What an onnx2torch operator module computes, for the ones the pass covers:
    ("math", the torch function) or ("shape", the module, which only moves values);
    None otherwise."""
    name = type(module).__name__
    if not type(module).__module__.startswith("onnx2torch."):
        return None
    if name == "OnnxBinaryMathOperation" and getattr(module, "broadcast", None) != 1:
        function = _ONNX_MATH.get(getattr(module.math_op_function, "__name__", ""))
        return None if function is None else ("math", function)
    if name in ("OnnxReshape", "OnnxFlatten", "OnnxTranspose"):
        return "shape", module
    return None


# onnx2torch's element-wise operators by the name of the function they call (its
# division is a private wrapper: float division for float tensors).
_ONNX_MATH: dict[str, Callable] = {
    "add": torch.add,
    "sub": torch.sub,
    "mul": torch.mul,
    "_onnx_div": torch.div,
}


def _affine(
    v: Bounds, op: Callable, weight: Tensor, bias: Tensor | None, abs_weight: Tensor | None = None
) -> Bounds:
    return Bounds(
        _maybe(lambda x: op(x, weight, bias), v.x),
        op(v.center, weight, bias),
        op(v.radius, weight.abs() if abs_weight is None else abs_weight, None),
    )


def _affine_call(fn: Callable, args: tuple, kwargs: dict) -> Bounds:
    """``F.linear``/``F.conv*`` called in a forward as (input, weight, bias, ...)."""
    kwargs = dict(kwargs)
    weight = kwargs.pop("weight", args[1] if len(args) > 1 else None)
    bias = kwargs.pop("bias", args[2] if len(args) > 2 else None)
    if isinstance(weight, Bounds) or isinstance(bias, Bounds):
        raise ModelError("interval bounds do not support weights that depend on the input")

    def op(t: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        return fn(t, w, b, *args[3:], **kwargs)

    return _affine(args[0], op, weight, bias)


def _folded_linear(weight: Tensor, bias: Tensor | None, v: Any, spec: Tensor) -> Bounds:
    """The last Linear layer merged with the specification: weights ``C W`` per sample."""
    if not isinstance(v, Bounds):
        raise ModelError("the last layer's input does not depend on the model input")
    merged = spec @ weight  # N x M x in
    # C (W c + b) is C W c + C b; through the K logits it is far cheaper than through
    # the per-sample matrix C W. The radius needs |C W| itself. A product and a sum
    # beat einsum's batched matrix-vector products by 3x on a CPU.
    center = _per_sample_matmul(spec, F.linear(v.center, weight, bias))
    radius = (merged.abs() * v.radius.unsqueeze(1)).sum(2)
    spec_x = _maybe(lambda x: _per_sample_matmul(spec, F.linear(x, weight, bias)), v.x)
    return Bounds(spec_x, center, radius)


def _per_sample_matmul(spec: Tensor, values: Tensor) -> Tensor:
    """``spec @ values`` per sample: (N x M x K) times (N x K) gives N x M."""
    return (spec * values.unsqueeze(1)).sum(2)


def _apply_spec(v: Bounds, spec: Tensor) -> Bounds:
    return Bounds(
        _maybe(lambda x: _per_sample_matmul(spec, x), v.x),
        _per_sample_matmul(spec, v.center),
        _per_sample_matmul(spec.abs(), v.radius),
    )


def _normalize(module: Normalize, v: Bounds) -> Bounds:
    return Bounds(_maybe(module, v.x), module(v.center), v.radius / module.std)


def _batch_norm(module: nn.modules.batchnorm._BatchNorm, v: Bounds) -> Bounds:
    x = v.x
    shape = (1, -1) + (1,) * (v.center.ndim - 2)
    if module.training or module.running_mean is None:
        if x is None:
            raise ModelError("BatchNorm with batch statistics needs the clean values")
        x, center, radius, mean, var = _IntervalBatchNorm.apply(
            x, v.center, v.radius, module.weight, module.bias, module.eps
        )
        if module.training and module.track_running_stats:
            _update_running_stats(module, mean, var, x.numel() // mean.numel())
        return Bounds(x, center, radius)
    scale = torch.rsqrt(module.running_var + module.eps)
    if module.weight is not None:
        scale = scale * module.weight
    shift = -module.running_mean * scale
    if module.bias is not None:
        shift = shift + module.bias
    scale, shift = scale.view(shape), shift.view(shape)
    # t * scale + shift; see _IntervalBatchNorm for why not addcmul.
    return Bounds(
        _maybe(lambda t: t.mul(scale).add_(shift), x),
        v.center.mul(scale).add_(shift),
        v.radius * scale.abs(),
    )


@torch.no_grad()
def _update_running_stats(
    module: nn.modules.batchnorm._BatchNorm, mean: Tensor, var: Tensor, count: int
) -> None:
    """What ``nn.BatchNorm`` does in a training forward, from statistics already at hand
    (computing them once serves the clean output and the interval alike)."""
    if count < 2:
        raise ModelError("BatchNorm in training needs more than one value per channel")
    module.num_batches_tracked.add_(1)
    # momentum=None means a cumulative average over all batches, as in nn.BatchNorm.
    if module.momentum is None:
        factor: Tensor | float = 1.0 / module.num_batches_tracked
    else:
        factor = module.momentum
    module.running_mean.lerp_(mean.detach(), factor)
    module.running_var.lerp_(var.detach() * (count / (count - 1)), factor)


def _add(a: Any, b: Any) -> Bounds:
    if isinstance(a, Bounds) and isinstance(b, Bounds):
        x = None if a.x is None or b.x is None else a.x + b.x
        return Bounds(x, a.center + b.center, a.radius + b.radius)
    if isinstance(b, Bounds):
        a, b = b, a
    return Bounds(_maybe(lambda x: x + b, a.x), a.center + b, a.radius)


def _neg(a: Any) -> Any:
    if isinstance(a, Bounds):
        return Bounds(_maybe(torch.neg, a.x), -a.center, a.radius)
    return -a


def _scale(a: Any, b: Any) -> Bounds:
    if isinstance(a, Bounds) and isinstance(b, Bounds):
        raise ModelError("interval bounds do not support products of two activations")
    if isinstance(b, Bounds):
        a, b = b, a
    magnitude = b.abs() if isinstance(b, Tensor) else abs(b)
    return Bounds(_maybe(lambda x: x * b, a.x), a.center * b, a.radius * magnitude)


def _cat(args: tuple, kwargs: dict) -> Bounds:
    parts = args[0]
    dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    if not all(isinstance(p, Bounds) for p in parts):
        raise ModelError("interval bounds cannot concatenate bounds with constants")
    xs = [p.x for p in parts]
    return Bounds(
        None if any(x is None for x in xs) else torch.cat(xs, dim),
        torch.cat([p.center for p in parts], dim),
        torch.cat([p.radius for p in parts], dim),
    )


def _relu_bounds_only(v: Bounds) -> Bounds:
    """The interval ReLU of :class:`_IntervalReLU`'s forward, for evaluation: two new
    tensors, everything else computed in place in them (without autograd nothing else
    holds them; on a CPU a new activation-sized tensor costs several passes)."""
    lower = torch.sub(v.center, v.radius).relu_()
    upper = torch.add(v.center, v.radius).relu_()
    radius = upper.sub_(lower).mul_(0.5)
    return Bounds(None, lower.add_(radius), radius)


class _IntervalReLU(torch.autograd.Function):
    """ReLU of an interval given as centre and radius, with a hand-written backward.

    Forward: l = c - r, u = c + r, and the centre and radius of [relu(l), relu(u)];
    l, u and the float masks of active (l > 0) and inactive (u < 0) neurons come back
    too (not differentiable), for the regularizers and statistics. Backward is the
    derivative of exactly that composition: relu(u) receives (g_c + g_r) / 2 and relu(l)
    receives (g_c - g_r) / 2, so an active neuron passes g_c and g_r through, an unstable
    one (l <= 0 < u) gives (g_c + g_r) / 2 to both and a dead one (u <= 0) gives nothing.

    The masks are made with ``sign`` of the clipped bounds and applied by multiplying:
    on CPU a comparison costs several float passes and ``torch.where`` dozens.
    """

    @staticmethod
    def forward(ctx: Any, center: Tensor, radius: Tensor) -> tuple[Tensor, ...]:
        lower = center - radius
        upper = center + radius
        relu_lower, relu_upper = torch.relu(lower), torch.relu(upper)
        new_center = torch.lerp(relu_lower, relu_upper, 0.5)
        new_radius = new_center - relu_lower
        active = torch.sign(relu_lower)  # 1 where l > 0, else 0
        # (g_c + g_r) / 2 reaches both inputs of an unstable neuron: 1/2 where l <= 0 < u.
        half_unstable = torch.sign(relu_upper).sub_(active).mul_(0.5)
        inactive = torch.sign(upper).neg_().relu_()  # 1 where u < 0, else 0
        ctx.save_for_backward(active, half_unstable)
        ctx.mark_non_differentiable(lower, upper, active, inactive)
        # No zero gradients for the four non-differentiable outputs: they would cost
        # four full-size allocations and fills per layer in every backward.
        ctx.set_materialize_grads(False)
        return new_center, new_radius, lower, upper, active, inactive

    @staticmethod
    def backward(ctx: Any, g_center: Tensor | None, g_radius: Tensor | None, *_: Any):
        active, half_unstable = ctx.saved_tensors
        if g_center is None and g_radius is None:
            return None, None
        if g_center is None:
            g_center = torch.zeros_like(g_radius)
        if g_radius is None:
            g_radius = torch.zeros_like(g_center)
        unstable = (g_center + g_radius).mul_(half_unstable)
        return (
            torch.addcmul(unstable, g_center, active),
            torch.addcmul(unstable, g_radius, active),
        )


class _IntervalBatchNorm(torch.autograd.Function):
    """BatchNorm in train mode applied to the clean values and to an interval at once.

    The statistics are the clean batch's (mean and biased variance per channel,
    differentiable, as in auto_LiRPA): scale = w / sqrt(var + eps), shift = b - mean *
    scale; x and the centre map to x * scale + shift, the radius to r * |scale|. The
    backward is the derivative of exactly this, written out per channel so that it
    needs a dozen passes over the activations where autograd needs about twice as many.
    Also returns the (detached) mean and variance for the running statistics.

    The variance is E[x^2] - E[x]^2: two fast reductions where ``Tensor.var`` over the
    batch and spatial dimensions is several times slower on CPU; pre-BatchNorm
    activations have means of the order of their spread, so float32 loses nothing that
    matters here.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, center: Tensor, radius: Tensor, weight: Tensor | None,
                bias: Tensor | None, eps: float) -> tuple[Tensor, ...]:  # fmt: skip
        dims = [0, *range(2, x.ndim)]
        shape = (1, -1) + (1,) * (x.ndim - 2)
        mean = x.mean(dims)
        raw_var = (x * x).mean(dims) - mean * mean
        var = raw_var.clamp(min=0.0)
        invstd = torch.rsqrt(var + eps)
        scale = invstd * weight if weight is not None else invstd
        shift = -mean * scale
        if bias is not None:
            shift = shift + bias
        s, t = scale.view(shape), shift.view(shape)
        # x * s + t as a product and an in-place sum: on CPU, addcmul with the broadcast
        # (1, C, 1, 1) shift as its first argument is several times slower.
        x_out = x.mul(s).add_(t)
        center_out = center.mul(s).add_(t)
        radius_out = radius * s.abs()
        var_on = torch.sign(raw_var.sign().add_(1.0))  # 1 where the variance was not clamped
        ctx.save_for_backward(x, center, radius, mean, invstd, weight, scale, var_on)
        ctx.mark_non_differentiable(mean, var)
        ctx.set_materialize_grads(False)
        return x_out, center_out, radius_out, mean, var

    @staticmethod
    def backward(ctx: Any, g_x: Tensor | None, g_center: Tensor | None,
                 g_radius: Tensor | None, *_: Any):  # fmt: skip
        x, center, radius, mean, invstd, weight, scale, var_on = ctx.saved_tensors
        dims = [0, *range(2, x.ndim)]
        shape = (1, -1) + (1,) * (x.ndim - 2)
        s = scale.view(shape)
        zero = torch.zeros_like(scale)
        g_scale, g_shift = zero, zero
        if g_x is not None:
            g_scale = g_scale + (g_x * x).sum(dims)
            g_shift = g_shift + g_x.sum(dims)
        if g_center is not None:
            g_scale = g_scale + (g_center * center).sum(dims)
            g_shift = g_shift + g_center.sum(dims)
        if g_radius is not None:
            g_scale = g_scale + (g_radius * radius).sum(dims) * scale.sign()
        # shift = bias - mean * scale; scale = weight * invstd
        g_scale = g_scale - g_shift * mean
        g_mean = -g_shift * scale
        g_weight = g_scale * invstd if weight is not None else None
        g_invstd = g_scale * weight if weight is not None else g_scale
        # invstd = (var + eps)^(-1/2); var = E[x^2] - mean^2 (clamped at 0); mean = E[x]
        g_var = g_invstd * (-0.5) * invstd.pow(3) * var_on
        count = x.numel() // mean.numel()
        g_mean = g_mean - 2.0 * mean * g_var
        g_x_in = g_center_in = g_radius_in = None
        if ctx.needs_input_grad[0]:
            g_x_in = x.mul((2.0 * g_var / count).view(shape)).add_((g_mean / count).view(shape))
            if g_x is not None:
                g_x_in.addcmul_(g_x, s)
        if g_center is not None and ctx.needs_input_grad[1]:
            g_center_in = g_center * s
        if g_radius is not None and ctx.needs_input_grad[2]:
            g_radius_in = g_radius * s.abs()
        g_bias = g_shift if ctx.needs_input_grad[4] else None
        if not ctx.needs_input_grad[3]:
            g_weight = None
        return g_x_in, g_center_in, g_radius_in, g_weight, g_bias, None
