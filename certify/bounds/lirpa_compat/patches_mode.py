"""Patches for operators in ``conv_mode="patches"``, auto_LiRPA's default.

In patches mode the linear bounds of a convolutional network stay in the compact
Patches form (one kernel-sized A per output pixel) instead of dense matrices. Several
operators of auto_LiRPA 0.3 mishandle that form: average pooling, per-channel constants
(normalization), grouped convolutions, constant operands of Add and Sub, biases left
image-shaped once A turns dense, and Adds of dense layers taken for image layers. Each
patch here fixes one of them; matrix mode (``conv_mode="matrix"``) is the reference the
tests compare against.
"""

from __future__ import annotations

import importlib
import types
from collections.abc import Callable
from typing import Any

from certify.bounds.lirpa_compat.registry import bound_ops, patch, patches_class


def _avgpool_contiguous_probe() -> bool:
    import torch

    ops = bound_ops()
    pool = ops.BoundAveragePool({"kernel_shape": [2, 2], "strides": [2, 2]}, [], 0, {})
    pool.input_shape = torch.Size([1, 1, 4, 4])
    last_a = torch.ones(2, 2, 1, 2, 2).transpose(0, 1)  # (spec, batch, c, h, w), strided
    pool.bound_backward(last_a, None, None)
    return True


@patch("avgpool_contiguous", probe=_avgpool_contiguous_probe)
def _avgpool_contiguous_apply() -> None:
    """BoundAveragePool.bound_backward calls ``.view`` on the incoming A (tensor or
    patches), which fails when A is a non-contiguous view, as the expanded identity that a
    BatchNorm or a residual Add hands back. Give it contiguous copies."""
    ops = bound_ops()
    patches_cls = patches_class()
    original = ops.BoundAveragePool.bound_backward

    def contiguous(a: Any) -> Any:
        if isinstance(a, patches_cls) and a.patches is not None:
            return a.create_similar(a.patches.contiguous())
        return a.contiguous() if hasattr(a, "contiguous") else a

    def bound_backward(self: Any, last_lA: Any, last_uA: Any, *x: Any) -> Any:
        return original(self, contiguous(last_lA), contiguous(last_uA), *x)

    ops.BoundAveragePool.bound_backward = bound_backward


def _mul_channel_const_probe() -> bool:
    import torch

    ops = bound_ops()
    patches = torch.arange(12.0).view(1, 2, 1, 1, 3, 1, 2)  # (spec, batch, oh, ow, c, kh, kw)
    const = torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1)
    a = patches_class()(patches, 1, 0, patches.shape)
    got = ops.BoundMul._multiply_by_const(a, const).patches
    return torch.equal(got, patches * const.view(1, 1, 1, 1, 3, 1, 1))


@patch("mul_channel_const_patches", probe=_mul_channel_const_probe)
def _mul_channel_const_apply() -> None:
    """In patches mode BoundMul._multiply_by_const only accepts a per-channel constant
    whose batch size equals the batch of the patches, and asserts otherwise; so
    ``(x - mean) / std`` with a (1, C, 1, 1) std fails for batches > 1 (BoundDiv uses the
    same function with 1 / std). Multiply per channel whatever the constant's batch size
    (1 or the batch), and leave other constants to the original."""
    import torch

    ops = bound_ops()
    patches_cls = patches_class()
    original = ops.BoundMul._multiply_by_const

    def multiply_by_const(x: Any, const: Any) -> Any:
        if isinstance(x, patches_cls) and isinstance(const, torch.Tensor) and not x.identity:
            p = x.patches
            # Patches are (spec, batch, [out_h, out_w,] in_c, kh, kw).
            if const.numel() == 1:
                return x.create_similar(p * const.reshape(()))
            if p.ndim in (5, 7) and const.ndim == 4 and const.shape[2:] == (1, 1):
                batch, channels = const.shape[:2]
                if channels == p.shape[-3] and batch in (1, p.shape[1]):
                    shape = (1, batch) + (1,) * (p.ndim - 5) + (channels, 1, 1)
                    return x.create_similar(p * const.reshape(shape))
        return original(x, const)

    ops.BoundMul._multiply_by_const = staticmethod(multiply_by_const)


def _conv_groups_probe() -> bool:
    import torch

    ops = bound_ops()
    inputs = [types.SimpleNamespace(perturbed=True), types.SimpleNamespace(perturbed=False)]
    attr = {"pads": [0, 0, 0, 0], "strides": [1, 1], "dilations": [1, 1], "group": 2}
    conv = ops.BoundConv(attr, inputs, 0, {"conv_mode": "patches"})
    conv.input_shape, conv.output_shape = torch.Size([1, 2, 2, 2]), torch.Size([1, 2, 1, 1])
    conv.relu_followed = True  # skips the padding mask, irrelevant here
    weight = torch.arange(1.0, 9.0).view(2, 1, 2, 2)
    patches = torch.ones(1, 1, 1, 1, 2, 1, 1)
    last_a = patches_class()(patches, 1, 0, patches.shape, output_shape=[1, 2, 1, 1])
    (a, _), *_ = conv.bound_backward(last_a, None, None, types.SimpleNamespace(lower=weight))[0]
    # A spec of ones on both output channels sees each input channel through its own group.
    return torch.equal(a.patches.reshape(2, 2, 2), weight.reshape(2, 2, 2))


@patch("conv_groups_patches", probe=_conv_groups_probe)
def _conv_groups_apply() -> None:
    """BoundConv's patches backward uses conv_transpose2d without ``groups`` (and assumes
    an (out_c, in_c, kh, kw) weight in its identity shortcut), so a grouped convolution
    gives wrong shapes or bounds. In patches mode use the equivalent dense weight, zero
    outside each group; matrix mode already passes groups."""
    import torch

    ops = bound_ops()
    patches_cls = patches_class()
    original = ops.BoundConv.bound_backward

    def dense_weight(weight: torch.Tensor, groups: int) -> torch.Tensor:
        out_c, in_per_group = weight.shape[:2]
        blocks = weight.reshape(groups, out_c // groups, in_per_group, *weight.shape[2:])
        mask = torch.eye(groups, dtype=weight.dtype, device=weight.device)
        # dense[g, o, h, i] = blocks[g, o, i] if g == h else 0
        dense = torch.einsum("goi...,gh->gohi...", blocks, mask)
        return dense.reshape(out_c, groups * in_per_group, *weight.shape[2:])

    def bound_backward(self: Any, last_lA: Any, last_uA: Any, *x: Any) -> Any:
        if self.groups == 1 or not (
            isinstance(last_lA, patches_cls) or isinstance(last_uA, patches_cls)
        ):
            return original(self, last_lA, last_uA, *x)
        weight = types.SimpleNamespace(lower=dense_weight(x[1].lower, self.groups))
        # A dense A can still arrive in patches mode (after a Flatten), and that branch
        # passes self.groups to conv_transpose2d: it must match the dense weight meanwhile.
        groups, self.groups = self.groups, 1
        try:
            return original(self, last_lA, last_uA, x[0], weight, *x[2:])
        finally:
            self.groups = groups

    ops.BoundConv.bound_backward = bound_backward


def _constant_operand_probe() -> bool:
    import torch

    ops = bound_ops()
    x = types.SimpleNamespace(perturbed=True)
    y = types.SimpleNamespace(perturbed=False, forward_value=torch.ones(1, 2, 1, 1))
    sub = ops.BoundSub({}, [x, y], 0, {"conv_mode": "patches"})
    sub.output_shape, sub.batch_dim = torch.Size([1, 2, 2, 2]), 0
    patches = torch.ones(1, 1, 2, 2, 2, 1, 1)  # one spec: sum of both channels at each pixel
    last_a = patches_class()(patches, 1, 0, patches.shape, output_shape=[1, 2, 2, 2])
    (_, (a_y, _)), bias, _ = sub.bound_backward(last_a, None, x, y)
    return a_y is None and torch.equal(torch.as_tensor(bias), torch.full((1, 1, 2, 2), -2.0))


@patch("constant_operand_patches", probe=_constant_operand_probe)
def _constant_operand_apply() -> None:
    """In patches mode BoundAdd/BoundSub hand their A, unchanged, to a constant operand
    such as a (1, C, 1, 1) mean; concretize then expands the constant to the shape of the
    network input, which fails or is wrong anywhere but right after the input. The node
    knows its output shape: add the constant's term to the bias there instead."""
    ops = bound_ops()
    patches_cls = patches_class()

    def constant_value(node: Any) -> Any:
        value = getattr(node, "forward_value", None)  # auto_LiRPA deletes it at times
        if value is None and not node.inputs:  # a leaf: constant, buffer or parameter
            value = node.forward()
        return value

    def with_constant_bias(original: Callable[..., Any], y_sign: float) -> Callable[..., Any]:
        def bound_backward(self: Any, last_lA: Any, last_uA: Any, x: Any, y: Any) -> Any:
            A, lbias, ubias = original(self, last_lA, last_uA, x, y)
            A, biases = [list(pair) for pair in A], [lbias, ubias]
            for i, (node, sign) in enumerate(((x, 1.0), (y, y_sign))):
                for side, last in enumerate((last_lA, last_uA)):
                    if node.perturbed or not isinstance(last, patches_cls):
                        continue
                    value = constant_value(node)
                    if last.patches is None or A[i][side] is None or value is None:
                        continue
                    batch = last.patches.shape[1]  # (spec, batch, ...) in both layouts
                    value = value.expand(batch, *self.output_shape[1:])
                    biases[side] = biases[side] + sign * last.matmul(value).transpose(0, 1)
                    A[i][side] = None
            return [tuple(pair) for pair in A], biases[0], biases[1]

        return bound_backward

    ops.BoundAdd.bound_backward = with_constant_bias(ops.BoundAdd.bound_backward, 1.0)
    ops.BoundSub.bound_backward = with_constant_bias(ops.BoundSub.bound_backward, -1.0)


def _dense_bias_probe() -> bool:
    import numpy as np
    import torch

    backward = importlib.import_module("auto_LiRPA.backward_bound")
    ptb_cls = importlib.import_module("auto_LiRPA.perturbations").PerturbationLpNorm
    x = torch.zeros(1, 1, 2, 2)
    ptb = ptb_cls(norm=np.inf, eps=1.0, x_L=x - 1, x_U=x + 1)
    a = torch.eye(4).view(4, 1, 1, 2, 2)  # dense (spec, batch, c, h, w): spec = out_c*oh*ow
    root = types.SimpleNamespace(lA=a, uA=a, perturbation=ptb, center=x, aux=None)
    bias = torch.arange(4.0).view(1, 1, 2, 2)  # (batch, out_c, oh, ow), as patches leave it
    lower, upper = backward.concretize(bias, bias, None, [root], 1, 4)
    expected = torch.arange(4.0).view(1, 4)
    return torch.equal(lower.view(1, 4), expected - 1) and torch.equal(
        upper.view(1, 4), expected + 1
    )


@patch("dense_bias_flatten", probe=_dense_bias_probe)
def _dense_bias_apply() -> None:
    """Biases accumulated while A is in patches form are (batch, out_c, out_h, out_w);
    once A becomes a dense matrix (a convolution whose patches outgrow the image, or a
    patches + matrix sum in a residual Add) backward_general only flattens them if a later
    node adds a dense bias. When none does (e.g. a first convolution without bias), concretize
    adds (batch, out_c*out_h*out_w) terms to the 4-d bias and fails. Flatten it first when
    every root A is dense."""
    import torch

    backward = importlib.import_module("auto_LiRPA.backward_bound")
    patches_cls = patches_class()
    original = backward.concretize

    def concretize(
        lb: Any, ub: Any, node: Any, root: Any, batch_size: int, *args: Any, **kwargs: Any
    ) -> Any:
        a_matrices = [a for r in root for a in (r.lA, r.uA) if a is not None]
        if a_matrices and not any(isinstance(a, patches_cls) for a in a_matrices):
            lb, ub = (
                b.reshape(batch_size, -1) if isinstance(b, torch.Tensor) and b.ndim > 2 else b
                for b in (lb, ub)
            )
        return original(lb, ub, node, root, batch_size, *args, **kwargs)

    backward.concretize = concretize


def _flat_add_probe() -> bool:
    import torch

    backward = importlib.import_module("auto_LiRPA.backward_bound")
    inputs = [types.SimpleNamespace(perturbed=True), types.SimpleNamespace(perturbed=False)]
    add = bound_ops().BoundAdd({}, inputs, 0, {"conv_mode": "patches"})
    add.output_shape = torch.Size([1, 3])  # (batch, features): the Add of a dense layer
    module = types.SimpleNamespace(
        bound_opts={}, batch_size=1, device="cpu",
        check_optimized_variable_sparsity=lambda node: None,
        parameters=lambda: iter([torch.zeros(1)]),
    )  # fmt: skip
    new_c, *_ = backward.get_sparse_C(module, add, sparse_intermediate_bounds=False)
    return isinstance(new_c, torch.Tensor) and torch.equal(new_c, torch.eye(3).view(1, 3, 3))


@patch("flat_add_matrix_mode", probe=_flat_add_probe)
def _flat_add_apply() -> None:
    """In conv_mode "patches" every BoundAdd and BoundSub says it is in patches mode, and
    get_sparse_C then builds a patches (image-shaped) specification for its intermediate
    bounds from ``output_shape[-3]``: the Add of a dense MatMul + Add layer, whose output
    is (batch, features), fails with IndexError (CROWN). Patches describe images only: an
    Add or Sub with fewer than 4 output axes is in matrix mode."""
    ops = bound_ops()

    def get_mode(self: Any) -> str:
        mode = self.__dict__.get("_conv_mode", "matrix")
        shape = getattr(self, "output_shape", None)
        return "matrix" if mode == "patches" and shape is not None and len(shape) < 4 else mode

    def set_mode(self: Any, mode: str) -> None:
        self.__dict__["_conv_mode"] = mode

    for cls in (ops.BoundAdd, ops.BoundSub):
        cls.mode = property(get_mode, set_mode)
