"""Patches for models whose weights are buffers, not parameters.

onnx2torch keeps the weights of MatMul and Add layers in buffers, and a torch module may
do the same and call F.linear or F.conv2d. auto_LiRPA 0.3 assumes weights are
parameters: it reads them as ``.param``, takes a buffer's first axis for the batch axis,
and takes the dtype of its specifications from the first parameter. These patches make
buffers behave as the parameters they stand for; models with parameters are untouched.
"""

from __future__ import annotations

import importlib
import types
from collections.abc import Iterator
from typing import Any

from certify.bounds.lirpa_compat.registry import bound_ops, patch


def _buffers_param_needed() -> bool:
    return not hasattr(bound_ops().BoundBuffers, "param")


@patch("buffers_param", needed=_buffers_param_needed)
def _buffers_param_apply() -> None:
    """BatchNorm's backward (and IBP with a spec matrix on a Linear) read the weights as
    ``inputs[i].param``, which only BoundParams has. Models whose weights are buffers (as
    onnx2torch makes them) become BoundBuffers nodes; let those answer ``param`` too."""
    bound_ops().BoundBuffers.param = property(lambda self: self.buffer)


def _buffer_batch_dim_probe() -> bool:
    import torch

    ops = bound_ops()
    x = types.SimpleNamespace(perturbed=True, batch_dim=0, output_shape=torch.Size([2, 3]))
    bias = ops.BoundBuffers("bias", torch.arange(3.0))
    # auto_LiRPA gives a node a batch dimension when it is "from the input".
    bias.batch_dim, bias.output_shape = (0 if bias.from_input else -1), torch.Size([3])
    add = ops.BoundAdd({}, [x, bias], 0, {})
    add.batch_dim, add.output_shape = 0, torch.Size([2, 3])
    last_a = torch.arange(6.0).view(1, 2, 3)  # (spec, batch, features)
    (_, (a_bias, _)), *_ = add.bound_backward(last_a, None, x, bias)
    # The bias reaches each image's bound through that image's own coefficients.
    return torch.equal(a_bias, last_a)


@patch("buffer_batch_dim", probe=_buffer_batch_dim_probe)
def _buffer_batch_dim_apply() -> None:
    """BoundBuffers inherits ``from_input = True`` from BoundInput (BoundParams resets
    it), so auto_LiRPA takes a buffer's first axis for the batch axis. That suits the
    (1, C, 1, 1) normalization constants of a torch model, but not an onnx2torch bias or
    weight such as the (128,) bias of a MatMul + Add layer (tf2onnx and torch's exporter
    write dense layers so): Add's backward then sums the coefficients of all images
    into one and concretize fails (CROWN-IBP: ``shape '[9, 100, -1]' is invalid``). A
    buffer with fewer axes than the output it is broadcast to has no batch axis
    (broadcasting aligns the last axes): treat it as batchless there, as a parameter."""
    import torch

    ops = bound_ops()
    original = ops.Bound.broadcast_backward

    def broadcast_backward(self: Any, A: Any, x: Any) -> Any:
        if (
            isinstance(A, torch.Tensor)
            and isinstance(x, ops.BoundBuffers)
            and x.batch_dim == 0
            and self.output_shape is not None
            and len(x.output_shape) < len(self.output_shape)
        ):
            x.batch_dim = -1
            try:
                return original(self, A, x)
            finally:
                x.batch_dim = 0
        return original(self, A, x)

    ops.Bound.broadcast_backward = broadcast_backward


def _parameterless_probe() -> bool:
    import torch

    bounded = importlib.import_module("auto_LiRPA.bound_general").BoundedModule
    inputs = [types.SimpleNamespace(perturbed=True), types.SimpleNamespace(perturbed=False)]
    add = bound_ops().BoundAdd({}, inputs, 0, {"conv_mode": "matrix"})
    add.output_shape = torch.Size([1, 3])
    buffers = [torch.zeros(1, dtype=torch.long), torch.zeros(3, dtype=torch.float64)]
    module = types.SimpleNamespace(
        bound_opts={}, batch_size=1, device="cpu",
        check_optimized_variable_sparsity=lambda node: None,
        parameters=lambda: iter([]), buffers=lambda: iter(buffers),
    )  # fmt: skip
    new_c, *_ = bounded.get_sparse_C(module, add, sparse_intermediate_bounds=False)
    # The identity specification, in the dtype of the weights it will be multiplied with.
    return new_c.dtype == torch.float64 and torch.equal(new_c, torch.eye(3).view(1, 3, 3).double())


class _WithValueDtype:
    """A BoundedModule seen through get_sparse_C: the same in every attribute, except
    that its ``parameters()`` yield one empty tensor of the dtype its values have."""

    def __init__(self, module: Any, marker: Any) -> None:
        self._module, self._marker = module, marker

    def __getattr__(self, name: str) -> Any:
        return getattr(self._module, name)

    def parameters(self) -> Iterator[Any]:
        return iter([self._marker])


def _value_dtype(module: Any) -> Any:
    """The dtype a parameterless model computes in: that of its first floating-point
    buffer (its weights, when a converter made them buffers), else of its inputs."""
    import torch

    for buffer in module.buffers():
        if buffer.is_floating_point():
            return buffer.dtype
    for name in getattr(module, "input_name", ()):
        value = getattr(module[name], "value", None)
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value.dtype
    return torch.get_default_dtype()


@patch("parameterless_model", probe=_parameterless_probe)
def _parameterless_apply() -> None:
    """get_sparse_C builds the identity specifications of CROWN's intermediate bounds
    (for an Add, a Sub or a convolution in matrix mode) in the dtype of
    ``list(self.parameters())[0]``: a model without parameters fails with IndexError
    (CROWN, alpha-CROWN). Such models are common: onnx2torch makes the weights of MatMul
    and Add layers buffers, and a torch module may keep its weights in buffers and call
    F.linear or F.conv2d. The dtype only has to match the weights the specification is
    multiplied with: for a model without parameters, take that of its first
    floating-point buffer (else of its inputs). Models with parameters are untouched."""
    import torch

    bounded = importlib.import_module("auto_LiRPA.bound_general").BoundedModule
    original = bounded.get_sparse_C

    def get_sparse_C(self: Any, node: Any, *args: Any, **kwargs: Any) -> Any:
        if next(iter(self.parameters()), None) is not None:
            return original(self, node, *args, **kwargs)
        marker = torch.empty(0, dtype=_value_dtype(self), device=self.device)
        return original(_WithValueDtype(self, marker), node, *args, **kwargs)

    bounded.get_sparse_C = get_sparse_C
