"""Compatibility layer that makes auto-LiRPA 0.3 work on current torch and numpy.

certify computes its bounds (IBP, CROWN-IBP, CROWN, alpha-CROWN) with auto-LiRPA. The
only release on the package index, 0.3 (2022), was written for torch 1.12 and numpy 1.x;
on the torch and numpy that certify supports it fails to import, several of its operators
crash or give wrong bounds in ``conv_mode="patches"`` (its default), CROWN crashes on a
model without parameters (weights kept in buffers), alpha-CROWN on a sigmoid or tanh
before a convolution, its sigmoid and tanh lines are unsound past +-500 and loose
across 0 (:func:`s_shaped_relaxation` replaces them), and alpha-CROWN's backward through
every ReLU computes gradients that nothing asks for.
Every other module of certify gets auto_LiRPA from :func:`load_auto_lirpa`, never with a
plain ``import auto_LiRPA``::

    from certify.bounds.lirpa_compat import load_auto_lirpa

    auto_LiRPA = load_auto_lirpa()
    bounded = auto_LiRPA.BoundedModule(model, dummy_input, device="cpu")

Each breakage has one :class:`Patch` in :data:`PATCHES`: a ``needed()`` check that looks
for the missing symbol or runs the failing computation on tiny tensors (never a version
comparison), and an ``apply()`` that fixes it with ``setattr`` on an auto_LiRPA class (or,
for the few import-time breakages, with a shim that is only present while auto_LiRPA is
being imported). Nothing is patched when this module is imported, only on the first call
of :func:`load_auto_lirpa`; later calls return the same module. When a newer auto_LiRPA or
torch fixes a breakage, its ``needed()`` returns False and the patch is skipped.

tests/test_lirpa_compat.py proves each patch with a bound computation compared against an
independent reference (the sigmoid and tanh lines: tests/test_sigmoid_relaxation.py), and
fails naming the shim when a new torch moves one of the private symbols listed in
:data:`TORCH_PRIVATE_SYMBOLS`.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import logging
import os
import sys
import threading
import types
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from certify.core.errors import CertifyError

if TYPE_CHECKING:
    from certify.bounds.s_shaped import SShapedRelaxation

logger = logging.getLogger(__name__)

#: Private torch symbols that the shims (and auto_LiRPA itself, last entries) rely on, by
#: name: each entry lists the dotted locations where the symbol has lived, newest first.
#: tests/test_lirpa_compat.py checks that one of them still resolves, so a torch that moves
#: one fails with the shim's name.
TORCH_PRIVATE_SYMBOLS: dict[str, tuple[str, ...]] = {
    "torch_onnx_private_api": (
        "torch.onnx._internal.torchscript_exporter.utils._optimize_graph",
        "torch.onnx.utils._optimize_graph",
    ),
    "torch_onnx_opset_global": (
        "torch.onnx._internal.torchscript_exporter._globals.GLOBALS",
        "torch.onnx._globals.GLOBALS",
    ),
    "node_getitem": ("torch._C.Node.kindOf",),
    "named_members_remove_duplicate": ("torch.nn.Module._named_members",),
    "jit_trace_graph": ("torch.jit._get_trace_graph",),
    "jit_unique_state_dict": ("torch.jit._unique_state_dict",),
    "jit_profiling_executor": ("torch._C._jit_set_profiling_executor",),
    "jit_profiling_mode": ("torch._C._jit_set_profiling_mode",),
}


@dataclass(frozen=True)
class Patch:
    """One fix. ``apply()`` may return an undo callable: import-time shims (``at_import``)
    are applied before ``import auto_LiRPA`` and undone right after it, so that other code
    never sees them."""

    name: str
    needed: Callable[[], bool]
    apply: Callable[[], Callable[[], None] | None]
    at_import: bool = False


#: Comma-separated patch names to leave out, to check that a test fails without its patch
#: or to rule a patch out when chasing a bug: ``CERTIFY_LIRPA_SKIP=conv_groups_patches``.
SKIP_ENV = "CERTIFY_LIRPA_SKIP"

_LOCK = threading.Lock()
_MODULE: types.ModuleType | None = None
_APPLIED: list[str] = []


def load_auto_lirpa() -> types.ModuleType:
    """Apply every needed patch (idempotent, thread-safe enough) and return the imported
    auto_LiRPA module.

    Raises CertifyError when auto_LiRPA is not installed or cannot be imported even with
    the import-time shims.
    """
    global _MODULE
    with _LOCK:
        if _MODULE is not None:
            return _MODULE
        if importlib.util.find_spec("auto_LiRPA") is None:
            raise CertifyError(
                "auto-LiRPA is not installed; run ./install.sh "
                "(it installs auto-LiRPA 0.3 without its declared dependencies)"
            )
        applied: list[str] = []
        skip = _skipped()
        module = _import_with_shims(applied, skip)
        for patch in PATCHES:
            if not patch.at_import and patch.name not in skip and patch.needed():
                patch.apply()
                applied.append(patch.name)
        logger.debug("auto_LiRPA %s patched with: %s", _version(module), ", ".join(applied))
        _APPLIED[:] = applied
        _MODULE = module
        return module


def applied_patches() -> list[str]:
    """Names of the patches that load_auto_lirpa() applied (empty before its first call)."""
    with _LOCK:
        return list(_APPLIED)


def _version(module: types.ModuleType) -> str:
    return str(getattr(module, "__version__", "?"))


def _skipped() -> set[str]:
    names = {n.strip() for n in os.environ.get(SKIP_ENV, "").split(",") if n.strip()}
    if names:
        logger.warning("%s: leaving out auto_LiRPA patches %s", SKIP_ENV, sorted(names))
    return names


def _import_with_shims(applied: list[str], skip: set[str]) -> types.ModuleType:
    undo: list[Callable[[], None]] = []
    try:
        for patch in PATCHES:
            if patch.at_import and patch.name not in skip and patch.needed():
                restore = patch.apply()
                if restore is not None:
                    undo.append(restore)
                applied.append(patch.name)
        # auto_LiRPA calls warnings.simplefilter("once") at import, which would change the
        # warning filters of the whole process, and its torch.jit.script decorators warn
        # that TorchScript is deprecated: catch_warnings() puts the filters back, and the
        # recorded warnings go to the debug log instead of the user's terminal.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                module = importlib.import_module("auto_LiRPA")
            except Exception as exc:
                raise CertifyError(
                    f"auto_LiRPA failed to import ({type(exc).__name__}: {exc}); "
                    "certify.bounds.lirpa_compat lacks a shim for this torch/numpy"
                ) from exc
        for warning in {str(w.message) for w in caught}:
            logger.debug("while importing auto_LiRPA: %s", warning)
        return module
    finally:
        for restore in reversed(undo):
            restore()


# --- helpers ---------------------------------------------------------------------------


def resolve(dotted: str) -> Any:
    """The object at a dotted path such as ``torch.onnx.utils._optimize_graph``; raises
    AttributeError or ImportError when it is not there."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(f"no module in {dotted}")


def _first_resolvable(shim: str) -> Any:
    for location in TORCH_PRIVATE_SYMBOLS[shim]:
        with contextlib.suppress(ImportError, AttributeError):
            return resolve(location)
    raise CertifyError(
        f"shim {shim} of certify.bounds.lirpa_compat broke: none of "
        f"{', '.join(TORCH_PRIVATE_SYMBOLS[shim])} exists in this torch"
    )


def _lacks(dotted: str) -> bool:
    try:
        resolve(dotted)
    except (ImportError, AttributeError):
        return True
    return False


def _probe_fails(probe: Callable[[], bool]) -> bool:
    """Run a tiny computation that exercises a known bug; True when it crashes or gives a
    wrong answer (probe returns False). A probe that fails because auto_LiRPA's internals
    changed also says True: the patch relies on the same internals, and the tests of
    tests/test_lirpa_compat.py then show whether it still fits."""
    try:
        return not probe()
    except Exception as exc:  # a probe that cannot even run counts as buggy, see below
        logger.debug("probe %s failed: %s: %s", probe.__name__, type(exc).__name__, exc)
        return True


def _temporary_module(name: str, module: types.ModuleType) -> Callable[[], None]:
    sys.modules[name] = module

    def restore() -> None:
        if sys.modules.get(name) is module:
            del sys.modules[name]

    return restore


def _temporary_attr(owner: Any, name: str, value: Any) -> Callable[[], None]:
    setattr(owner, name, value)

    def restore() -> None:
        if getattr(owner, name, None) is value:
            delattr(owner, name)

    return restore


def _ops() -> types.ModuleType:
    return importlib.import_module("auto_LiRPA.bound_ops")


def _clamped_multiplication() -> type:
    return importlib.import_module("auto_LiRPA.operators.clampmult").ClampedMultiplication


def _patches_class() -> type:
    return importlib.import_module("auto_LiRPA.patches").Patches


# --- import-time shims -----------------------------------------------------------------


def _numpy_arraysetops_needed() -> bool:
    return _lacks("numpy.lib.arraysetops.isin")


def _numpy_arraysetops_apply() -> Callable[[], None]:
    """numpy 2 removed numpy.lib.arraysetops; auto_LiRPA/operators/base.py imports ``isin``
    from it (and never uses it). Provide the module only while auto_LiRPA is imported."""
    import numpy as np

    stub = types.ModuleType("numpy.lib.arraysetops")
    stub.isin = np.isin  # type: ignore[attr-defined]
    return _temporary_module("numpy.lib.arraysetops", stub)


def _tqdm_needed() -> bool:
    return importlib.util.find_spec("tqdm") is None


def _tqdm_apply() -> Callable[[], None]:
    """auto_LiRPA imports tqdm (for batched CROWN's progress bar) but does not declare it,
    so nothing installs it. Without tqdm, batched CROWN runs without a progress bar."""

    def tqdm(iterable: Any, *args: Any, **kwargs: Any) -> Any:
        return iterable

    stub = types.ModuleType("tqdm")
    stub.tqdm = tqdm  # type: ignore[attr-defined]
    return _temporary_module("tqdm", stub)


def _torch_onnx_needed() -> bool:
    return _lacks("torch.onnx.utils._optimize_graph") or _lacks(
        "torch.onnx.symbolic_helper._set_opset_version"
    )


def _torch_onnx_apply() -> Callable[[], None]:
    """torch 2 moved the TorchScript ONNX exporter into
    torch.onnx._internal.torchscript_exporter (torch.onnx.utils and symbolic_helper only
    re-export its public names) and dropped _set_opset_version: the opset is now the
    GLOBALS.export_onnx_opset_version property. auto_LiRPA/parse_graph.py imports both from
    the old modules; put them there (creating the modules if torch dropped them too) while
    it is imported."""
    undo: list[Callable[[], None]] = []

    def restore() -> None:
        for step in reversed(undo):
            step()

    def legacy_module(name: str) -> types.ModuleType:
        try:
            return importlib.import_module(name)
        except ImportError:
            stub = types.ModuleType(name)
            undo.append(_temporary_module(name, stub))
            return stub

    try:
        utils = legacy_module("torch.onnx.utils")
        helper = legacy_module("torch.onnx.symbolic_helper")
        if not hasattr(utils, "_optimize_graph"):
            optimize_graph = _first_resolvable("torch_onnx_private_api")
            undo.append(_temporary_attr(utils, "_optimize_graph", optimize_graph))
        if not hasattr(helper, "_set_opset_version"):
            onnx_globals = _first_resolvable("torch_onnx_opset_global")

            def set_opset_version(opset_version: int) -> None:
                onnx_globals.export_onnx_opset_version = opset_version

            undo.append(_temporary_attr(helper, "_set_opset_version", set_opset_version))
    except BaseException:
        restore()
        raise
    return restore


# --- patches of auto_LiRPA classes -----------------------------------------------------


def _node_getitem_needed() -> bool:
    import torch

    return not hasattr(torch._C.Node, "__getitem__")


def _node_getitem_apply() -> None:
    """torch used to give torch._C.Node a ``node[name]`` accessor (it dispatched on
    ``kindOf``); parse_graph reads every ONNX attribute that way. Restore it: ``kindOf``
    names the typed accessor (``t``, ``i``, ``f``, ``s``, ``is``, ``ival``...) to call."""
    import torch

    _first_resolvable("node_getitem")

    def __getitem__(node: Any, key: str) -> Any:
        return getattr(node, node.kindOf(key))(key)

    torch._C.Node.__getitem__ = __getitem__  # type: ignore[attr-defined]


def _named_members_needed() -> bool:
    from torch import nn

    bounded = importlib.import_module("auto_LiRPA.bound_general").BoundedModule
    wants = "remove_duplicate" in inspect.signature(nn.Module._named_members).parameters
    has = "remove_duplicate" in inspect.signature(bounded._named_members).parameters
    return wants and not has


def _named_members_apply() -> None:
    """nn.Module.parameters()/named_parameters() pass ``remove_duplicate`` to
    _named_members, which BoundedModule overrides with the old signature (to report
    parameters under the original model's names). Delegate to torch's version and keep the
    renaming."""
    from torch import nn

    bounded = importlib.import_module("auto_LiRPA.bound_general").BoundedModule

    def _named_members(
        self: Any,
        get_members_fn: Any,
        prefix: str = "",
        recurse: bool = True,
        remove_duplicate: bool = True,
    ) -> Iterator[tuple[str, Any]]:
        members = nn.Module._named_members(
            self, get_members_fn, prefix, recurse, remove_duplicate=remove_duplicate
        )
        for name, member in members:
            yield self.node_name_map.get(name, name), member

    bounded._named_members = _named_members
    # BoundDataParallel forwards to the wrapped module with the old signature too.
    with contextlib.suppress(ImportError, AttributeError):
        parallel = importlib.import_module("auto_LiRPA.bound_multi_gpu").BoundDataParallel

        def _named_members_parallel(self: Any, *args: Any, **kwargs: Any) -> Any:
            return self.module._named_members(*args, **kwargs)

        parallel._named_members = _named_members_parallel


def _register_parameter_needed() -> bool:
    import torch

    bounded = importlib.import_module("auto_LiRPA.bound_general").BoundedModule
    uses_six = "_six" in bounded.register_parameter.__code__.co_names
    return uses_six and not hasattr(torch, "_six")


def _register_parameter_apply() -> None:
    """BoundedModule.register_parameter is a copy of torch 1.x's that checks names against
    torch._six.string_classes, gone since torch 2.0; assigning an nn.Parameter attribute
    then raises AttributeError. torch's own method does the same checks."""
    from torch import nn

    bounded = importlib.import_module("auto_LiRPA.bound_general").BoundedModule
    bounded.register_parameter = nn.Module.register_parameter


def _buffers_param_needed() -> bool:
    return not hasattr(_ops().BoundBuffers, "param")


def _buffers_param_apply() -> None:
    """BatchNorm's backward (and IBP with a spec matrix on a Linear) read the weights as
    ``inputs[i].param``, which only BoundParams has. Models whose weights are buffers (as
    onnx2torch makes them) become BoundBuffers nodes; let those answer ``param`` too."""
    _ops().BoundBuffers.param = property(lambda self: self.buffer)


def _avgpool_contiguous_probe() -> bool:
    import torch

    ops = _ops()
    pool = ops.BoundAveragePool({"kernel_shape": [2, 2], "strides": [2, 2]}, [], 0, {})
    pool.input_shape = torch.Size([1, 1, 4, 4])
    last_a = torch.ones(2, 2, 1, 2, 2).transpose(0, 1)  # (spec, batch, c, h, w), strided
    pool.bound_backward(last_a, None, None)
    return True


def _avgpool_contiguous_apply() -> None:
    """BoundAveragePool.bound_backward calls ``.view`` on the incoming A (tensor or
    patches), which fails when A is a non-contiguous view, as the expanded identity that a
    BatchNorm or a residual Add hands back. Give it contiguous copies."""
    ops = _ops()
    patches_cls = _patches_class()
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

    ops = _ops()
    patches = torch.arange(12.0).view(1, 2, 1, 1, 3, 1, 2)  # (spec, batch, oh, ow, c, kh, kw)
    const = torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1)
    a = _patches_class()(patches, 1, 0, patches.shape)
    got = ops.BoundMul._multiply_by_const(a, const).patches
    return torch.equal(got, patches * const.view(1, 1, 1, 1, 3, 1, 1))


def _mul_channel_const_apply() -> None:
    """In patches mode BoundMul._multiply_by_const only accepts a per-channel constant
    whose batch size equals the batch of the patches, and asserts otherwise; so
    ``(x - mean) / std`` with a (1, C, 1, 1) std fails for batches > 1 (BoundDiv uses the
    same function with 1 / std). Multiply per channel whatever the constant's batch size
    (1 or the batch), and leave other constants to the original."""
    import torch

    ops = _ops()
    patches_cls = _patches_class()
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

    ops = _ops()
    inputs = [types.SimpleNamespace(perturbed=True), types.SimpleNamespace(perturbed=False)]
    attr = {"pads": [0, 0, 0, 0], "strides": [1, 1], "dilations": [1, 1], "group": 2}
    conv = ops.BoundConv(attr, inputs, 0, {"conv_mode": "patches"})
    conv.input_shape, conv.output_shape = torch.Size([1, 2, 2, 2]), torch.Size([1, 2, 1, 1])
    conv.relu_followed = True  # skips the padding mask, irrelevant here
    weight = torch.arange(1.0, 9.0).view(2, 1, 2, 2)
    patches = torch.ones(1, 1, 1, 1, 2, 1, 1)
    last_a = _patches_class()(patches, 1, 0, patches.shape, output_shape=[1, 2, 1, 1])
    (a, _), *_ = conv.bound_backward(last_a, None, None, types.SimpleNamespace(lower=weight))[0]
    # A spec of ones on both output channels sees each input channel through its own group.
    return torch.equal(a.patches.reshape(2, 2, 2), weight.reshape(2, 2, 2))


def _conv_groups_apply() -> None:
    """BoundConv's patches backward uses conv_transpose2d without ``groups`` (and assumes
    an (out_c, in_c, kh, kw) weight in its identity shortcut), so a grouped convolution
    gives wrong shapes or bounds. In patches mode use the equivalent dense weight, zero
    outside each group; matrix mode already passes groups."""
    import torch

    ops = _ops()
    patches_cls = _patches_class()
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

    ops = _ops()
    x = types.SimpleNamespace(perturbed=True)
    y = types.SimpleNamespace(perturbed=False, forward_value=torch.ones(1, 2, 1, 1))
    sub = ops.BoundSub({}, [x, y], 0, {"conv_mode": "patches"})
    sub.output_shape, sub.batch_dim = torch.Size([1, 2, 2, 2]), 0
    patches = torch.ones(1, 1, 2, 2, 2, 1, 1)  # one spec: sum of both channels at each pixel
    last_a = _patches_class()(patches, 1, 0, patches.shape, output_shape=[1, 2, 2, 2])
    (_, (a_y, _)), bias, _ = sub.bound_backward(last_a, None, x, y)
    return a_y is None and torch.equal(torch.as_tensor(bias), torch.full((1, 1, 2, 2), -2.0))


def _constant_operand_apply() -> None:
    """In patches mode BoundAdd/BoundSub hand their A, unchanged, to a constant operand
    such as a (1, C, 1, 1) mean; concretize then expands the constant to the shape of the
    network input, which fails or is wrong anywhere but right after the input. The node
    knows its output shape: add the constant's term to the bias there instead."""
    ops = _ops()
    patches_cls = _patches_class()

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


def _dense_bias_apply() -> None:
    """Biases accumulated while A is in patches form are (batch, out_c, out_h, out_w);
    once A becomes a dense matrix (a convolution whose patches outgrow the image, or a
    patches + matrix sum in a residual Add) backward_general only flattens them if a later
    node adds a dense bias. When none does (e.g. a first convolution without bias), concretize
    adds (batch, out_c*out_h*out_w) terms to the 4-d bias and fails. Flatten it first when
    every root A is dense."""
    import torch

    backward = importlib.import_module("auto_LiRPA.backward_bound")
    patches_cls = _patches_class()
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


def _buffer_batch_dim_probe() -> bool:
    import torch

    ops = _ops()
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

    ops = _ops()
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


def _flat_add_probe() -> bool:
    import torch

    backward = importlib.import_module("auto_LiRPA.backward_bound")
    inputs = [types.SimpleNamespace(perturbed=True), types.SimpleNamespace(perturbed=False)]
    add = _ops().BoundAdd({}, inputs, 0, {"conv_mode": "patches"})
    add.output_shape = torch.Size([1, 3])  # (batch, features): the Add of a dense layer
    module = types.SimpleNamespace(
        bound_opts={}, batch_size=1, device="cpu",
        check_optimized_variable_sparsity=lambda node: None,
        parameters=lambda: iter([torch.zeros(1)]),
    )  # fmt: skip
    new_c, *_ = backward.get_sparse_C(module, add, sparse_intermediate_bounds=False)
    return isinstance(new_c, torch.Tensor) and torch.equal(new_c, torch.eye(3).view(1, 3, 3))


def _flat_add_apply() -> None:
    """In conv_mode "patches" every BoundAdd and BoundSub says it is in patches mode, and
    get_sparse_C then builds a patches (image-shaped) specification for its intermediate
    bounds from ``output_shape[-3]``: the Add of a dense MatMul + Add layer, whose output
    is (batch, features), fails with IndexError (CROWN). Patches describe images only: an
    Add or Sub with fewer than 4 output axes is in matrix mode."""
    ops = _ops()

    def get_mode(self: Any) -> str:
        mode = self.__dict__.get("_conv_mode", "matrix")
        shape = getattr(self, "output_shape", None)
        return "matrix" if mode == "patches" and shape is not None and len(shape) < 4 else mode

    def set_mode(self: Any, mode: str) -> None:
        self.__dict__["_conv_mode"] = mode

    for cls in (ops.BoundAdd, ops.BoundSub):
        cls.mode = property(get_mode, set_mode)


def _parameterless_probe() -> bool:
    import torch

    bounded = importlib.import_module("auto_LiRPA.bound_general").BoundedModule
    inputs = [types.SimpleNamespace(perturbed=True), types.SimpleNamespace(perturbed=False)]
    add = _ops().BoundAdd({}, inputs, 0, {"conv_mode": "matrix"})
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


def _pad_attribute_probe() -> bool:
    import torch

    attr = {"mode": "constant", "pads": [0, 0, 1, 0, 0, 0, 0, 2], "value": 0.0}
    pad = _ops().BoundPad(attr, [], 0, {})
    x = torch.ones(1, 1, 2, 2)
    return torch.equal(pad.forward(x), torch.nn.functional.pad(x, (0, 2, 1, 0)))


def _pad_attribute_apply() -> None:
    """auto_LiRPA 0.3 traces at opset 12, but current torch registers its opset 11+
    symbolic functions only once torch.onnx.export has run in the process; until then F.pad
    (nn.ZeroPad2d, onnx2torch's Pad) traces to the old Pad, whose pads and value are
    attributes, not inputs as BoundPad.forward wants: ``missing 1 required positional
    argument: 'pad'``. Take them from the attributes when they are not inputs. The bounds
    of BoundPad hold only for padding with zeros (bound_backward drops the padded values
    and ignores the mode), so refuse any other padding rather than bound it wrongly."""
    ops = _ops()
    original = ops.BoundPad.forward

    def forward(self: Any, x: Any, pad: Any = None, value: Any = None) -> Any:
        mode = self.attr.get("mode", "constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        pad = self.attr.get("pads") if pad is None else pad
        value = self.attr.get("value", 0.0) if value is None else value
        if pad is None:
            raise NotImplementedError("a Pad without pads")
        pads = [int(p) for p in pad]
        if min(pads) < 0 or (any(pads) and (mode != "constant" or float(value) != 0.0)):
            raise NotImplementedError(
                f"Pad (mode {mode}, pads {pads}, value {float(value)}): only padding with "
                "zeros can be bounded"
            )
        return original(self, x, pad, value)

    ops.BoundPad.forward = forward


def _clamp_gradient_probe() -> bool:
    """alpha-CROWN starts every ReLU slope at exactly 0 or 1 and clamps the slopes to
    [0, 1] in each bound computation: the gradient must pass at the bounds. torch 2.14's
    clamp gives it 0 there, so the slopes never move and alpha-CROWN silently returns
    CROWN's bound."""
    import torch

    alpha = torch.tensor([[0.0, 1.0]], requires_grad=True)
    lower, upper = torch.full((1, 2), -1.0), torch.ones(1, 2)
    slope, _, _ = _ops().BoundRelu._relu_mask_alpha(lower, upper, alpha, None)
    slope.sum().backward()
    return bool((alpha.grad == 1).all())


def clamp_unit_passing_gradient(x: Any) -> Any:
    """``clamp(x, 0, 1)`` whose gradient is 1 inside [0, 1] and at its ends: the gradient
    torch gave before 2.14. Outside the interval too, which never matters for the slopes,
    as auto_LiRPA clips them into [0, 1] after every step."""
    return x + (x.clamp(0.0, 1.0) - x).detach()


def _clamp_gradient_apply() -> None:
    """BoundRelu._relu_mask_alpha clamps alpha-CROWN's slopes with torch.clamp, whose
    gradient at exactly 0 and 1 is 0 from torch 2.14 on, where every slope starts: the
    same mask with a clamp that passes the gradient at its ends."""

    def _relu_mask_alpha(lower: Any, upper: Any, lb_lower_d: Any, ub_lower_d: Any) -> Any:
        lower_mask = (lower >= 0).requires_grad_(False).to(lower.dtype)
        upper_mask = (upper <= 0).requires_grad_(False)
        zero_coeffs = upper_mask.all()
        no_mask = (1.0 - lower_mask) * (1.0 - upper_mask.to(upper.dtype))
        if lb_lower_d is not None:
            lb_lower_d = clamp_unit_passing_gradient(lb_lower_d) * no_mask + lower_mask
        if ub_lower_d is not None:
            ub_lower_d = clamp_unit_passing_gradient(ub_lower_d) * no_mask + lower_mask
        return lb_lower_d, ub_lower_d, zero_coeffs

    _ops().BoundRelu._relu_mask_alpha = staticmethod(_relu_mask_alpha)


def _clampmult_gradients_probe() -> bool:
    """The backward of auto_LiRPA's sign-split product ``A+ * d_pos + A- * d_neg`` (the
    step of every backward bound through a ReLU) returns only the gradients autograd asks
    for: asked for none of A's, it returns None there."""
    import torch

    a, d = torch.ones(1, 1, 2), torch.ones(1, 1, 2)
    ctx = types.SimpleNamespace(
        saved_tensors=(a, d, d, None, None),
        patches_mode=False,
        needs_input_grad=(False, True, True, False, False, False),
    )
    grads = _clamped_multiplication().backward(ctx, torch.ones(1, 1, 2), None)
    return grads[0] is None


def _clampmult_gradients_apply() -> None:
    """alpha-CROWN spends a fifth of its time in the backward of this product: 0.3
    computes all five gradients (of A, both slopes and both offsets) whatever autograd
    needs, through float masks, some twenty passes over tensors of the size of A. The
    same gradients, only those asked for, in about half the passes (``torch.where`` is
    avoided: on a CPU it costs several times a multiplication)."""
    import torch

    def backward(ctx: Any, grad_a: Any, grad_bias: Any) -> tuple[Any, ...]:
        a, d_pos, d_neg, b_pos, b_neg = ctx.saved_tensors
        need = ctx.needs_input_grad
        if grad_bias is not None:
            grad_bias = grad_bias.view(grad_bias.shape + (1,) * (a.ndim - grad_bias.ndim))
        has_bias = grad_bias is not None and (b_pos is not None or b_neg is not None)
        g_a = g_d_pos = g_d_neg = g_b_pos = g_b_neg = None
        if need[0]:
            # 1 where A >= 0, else 0; lerp picks the slope (and offset) of A's sign exactly.
            positive = (a >= 0).to(a.dtype)
            g_a = torch.lerp(d_neg, d_pos, positive) * grad_a
            if has_bias:
                if b_pos is not None and b_neg is not None:
                    offset = torch.lerp(b_neg, b_pos, positive)
                elif b_pos is not None:
                    offset = b_pos * positive
                else:
                    offset = b_neg * (1 - positive)
                g_a = g_a + offset * grad_bias
        want_b_pos = has_bias and b_pos is not None and need[3]
        want_b_neg = has_bias and b_neg is not None and need[4]
        if need[1] or want_b_pos:
            a_pos = a.clamp(min=0)
            g_d_pos = a_pos * grad_a if need[1] else None
            g_b_pos = a_pos * grad_bias if want_b_pos else None
        if need[2] or want_b_neg:
            a_neg = a.clamp(max=0)
            g_d_neg = a_neg * grad_a if need[2] else None
            g_b_neg = a_neg * grad_bias if want_b_neg else None
        return g_a, g_d_pos, g_d_neg, g_b_pos, g_b_neg, None

    _clamped_multiplication().backward = staticmethod(backward)


# --- sigmoid and tanh relaxation -------------------------------------------------------
# The lines themselves are certify.bounds.s_shaped's; here they replace 0.3's.


def _relaxation_of(node: Any, x: Any, name: str) -> SShapedRelaxation:
    """s_shaped_relaxation of the node's input bounds, kept while they stay the same
    tensors: 0.3 relaxes an activation again for every later layer's backward pass.
    Bounds that carry a gradient (training, alpha-CROWN) are relaxed each time."""
    from certify.bounds.s_shaped import s_shaped_relaxation

    lower, upper = x.lower, x.upper
    if lower.requires_grad or upper.requires_grad:
        return s_shaped_relaxation(lower, upper, name)
    key = (name, lower._version, upper._version)
    cached = node.__dict__.get("_certify_s_shaped")
    if cached is not None and cached[0] is lower and cached[1] is upper and cached[2] == key:
        return cached[3]
    relaxation = s_shaped_relaxation(lower, upper, name)
    node.__dict__["_certify_s_shaped"] = (lower, upper, key, relaxation)
    return relaxation


def _s_shaped_probe() -> bool:
    """On [-600, 600] 0.3's sigmoid lines must hold at the ends (0.3 clamps the bounds to
    +-500 first, and its lower line passes 1.2 at 600); on [-10, 1] its lower line at -10
    must be no lower than the midpoint's tangent there (0.3 takes the tangent through
    (1, sigmoid(1)), at -1.25 instead of -0.05)."""
    import torch

    node = _ops().BoundSigmoid({}, [], 0, {})
    lower, upper = torch.tensor([[-600.0, -10.0]]), torch.tensor([[600.0, 1.0]])
    x = types.SimpleNamespace(lower=lower, upper=upper)
    node.init_linear_relaxation(x)
    node.bound_relax(x)
    lines = [t.double() for t in (node.lw, node.lb, node.uw, node.ub)]
    for end in (lower.double(), upper.double()):
        y = torch.sigmoid(end)
        if (lines[0] * end + lines[1] > y).any() or (lines[2] * end + lines[3] < y).any():
            return False
    m = torch.tensor(-4.5, dtype=torch.float64)
    tangent_at_l = torch.sigmoid(m) + torch.sigmoid(m) * torch.sigmoid(-m) * (-10.0 - m)
    return bool(lines[0][0, 1] * -10.0 + lines[1][0, 1] >= tangent_at_l - 1e-6)


def _s_shaped_apply() -> None:
    """BoundTanh.bound_relax_impl (BoundSigmoid's too) relaxes from tables with 0.01
    steps and clamps the pre-activation bounds to +-500 first: beyond that its lines are
    unsound (on [-600, 600] sigmoid's lower line exceeds 1 at 600 by 0.2). On intervals
    that contain 0 it always takes the tangent through the far end, even when the
    midpoint's tangent is valid and lies higher (on [-10, 1]: -1.25 against -0.05 at
    -10), a loss that compounds over a deep network's layers. Relax with
    :func:`s_shaped_relaxation` instead (CROWN, and alpha-CROWN's starting point), and
    keep alpha-CROWN's optimized tangent points within its valid limits. Other S-shaped
    operators (arctan, tan) keep 0.3's relaxation."""
    import torch

    ops = _ops()
    original = ops.BoundTanh.bound_relax_impl
    names = {torch.sigmoid: "sigmoid", torch.tanh: "tanh"}

    def bound_relax_impl(self: Any, x: Any, func: Any, dfunc: Any) -> None:
        name = names.get(func)
        if name is None:
            return original(self, x, func, dfunc)
        relaxation = _relaxation_of(self, x, name)
        if self.opt_stage in ("opt", "reuse"):
            if not hasattr(self, "alpha"):
                self._no_bound_parameters()
            _optimized_s_shaped_lines(self, x, relaxation, name)
            return None
        if self.opt_stage == "init":
            self.tp_both_lower_init[self._start] = relaxation.lower_point.detach()
            self.tp_both_upper_init[self._start] = relaxation.upper_point.detach()
        self.lw, self.lb = relaxation.lower_k, relaxation.lower_b
        self.uw, self.ub = relaxation.upper_k, relaxation.upper_b
        return None

    ops.BoundTanh.bound_relax_impl = bound_relax_impl


def _optimized_s_shaped_lines(node: Any, x: Any, relaxation: SShapedRelaxation, name: str) -> None:
    """alpha-CROWN's lines: tangents at the optimized points alpha (shape (4, 2, spec,
    *bounds)) where a tangent is the relaxation's choice, the fixed lines elsewhere.
    Tangent points are kept where their tangents are valid: within the interval for
    intervals on one side of 0, below lower_limit (above upper_limit) for the lower
    (upper) line of an interval that contains 0."""
    import torch

    from certify.bounds.s_shaped import round_line, s_shaped_function

    f, df = s_shaped_function(name)
    alpha = node.alpha[node._start]
    lower, upper = x.lower.detach(), x.upper.detach()
    alpha.data[0] = torch.max(torch.min(alpha.data[0], upper), lower)  # upper, l >= 0
    alpha.data[1] = torch.max(torch.min(alpha.data[1], upper), lower)  # lower, u <= 0
    alpha.data[2] = torch.min(alpha.data[2], relaxation.lower_limit)  # lower, l < 0 < u
    alpha.data[3] = torch.max(alpha.data[3], relaxation.upper_limit)  # upper, l < 0 < u
    reach = torch.maximum(lower.abs(), upper.abs()).double()

    def tangent(point: Any, side: float) -> tuple[Any, Any]:
        p = point.double()
        k = df(p)
        return round_line(k, f(p) - k * p, reach, side, lower.dtype)

    finite, crossing = relaxation.finite, (lower < 0) & (upper > 0)
    lower_tangent = finite & ((upper <= 0) | (crossing & ~relaxation.direct_lower))
    upper_tangent = finite & ((lower >= 0) | (crossing & ~relaxation.direct_upper))
    points_l = torch.where(upper <= 0, alpha[1], alpha[2])
    points_u = torch.where(lower >= 0, alpha[0], alpha[3])
    (lk, lb), (uk, ub) = tangent(points_l, -1.0), tangent(points_u, 1.0)
    # contiguous(): in patches mode the lines are unfolded with .view, and torch.where
    # takes the layout of the bounds, which are often a transposed view.
    node.lw = torch.where(lower_tangent, lk, relaxation.lower_k).contiguous()
    node.lb = torch.where(lower_tangent, lb, relaxation.lower_b).contiguous()
    node.uw = torch.where(upper_tangent, uk, relaxation.upper_k).contiguous()
    node.ub = torch.where(upper_tangent, ub, relaxation.upper_b).contiguous()


def _s_shaped_conv_alpha_probe() -> bool:
    """The tangent points of a sigmoid whose bounds a convolution's neurons are computed
    from, in patches mode: one per neuron (out_c, out_h, out_w) of that convolution."""
    import torch

    lower, upper = torch.full((1, 2, 1, 1), -1.0), torch.full((1, 2, 1, 1), 3.0)
    node = _ops().BoundSigmoid({}, [types.SimpleNamespace(lower=lower, upper=upper)], 0, {})
    node.opt_init()
    node.tp_both_lower_init["conv"] = torch.full((1, 2, 1, 1), -2.0)
    node.tp_both_upper_init["conv"] = torch.full((1, 2, 1, 1), 0.5)
    node.init_opt_parameters([("conv", (3, 2, 2), None)])
    alpha = node.alpha["conv"]  # (4 kinds of point, lower/upper bound pass, spec, *bounds)
    expected = torch.tensor([1.0, 1.0, -2.0, 0.5]).view(4, 1, 1, 1, 1, 1, 1)
    return alpha.shape == (4, 2, 12, 1, 2, 1, 1) and torch.equal(alpha, expected.expand_as(alpha))


def _s_shaped_conv_alpha_apply() -> None:
    """alpha-CROWN keeps, for each neuron whose bounds pass back through a sigmoid or
    tanh, that activation's own tangent points. When those neurons are a convolution's
    in patches mode, 0.3 names their number as the (out_c, out_h, out_w) shape of the
    convolution's output (as for ReLU), and BoundTanh.init_opt_parameters (BoundSigmoid's
    too) multiplies out only a torch.Size, so it fails (``empty(): argument 'size'``).
    Give it the product: one tangent point per neuron of the convolution, as ReLU keeps
    one slope per neuron (maybe_unfold_patches then takes each neuron's own)."""
    import math

    import torch

    ops = _ops()
    original = ops.BoundTanh.init_opt_parameters

    def init_opt_parameters(self: Any, start_nodes: Any) -> Any:
        sized = [
            (name, math.prod(size) if isinstance(size, tuple | list | torch.Size) else size, idx)
            for name, size, idx in start_nodes
        ]
        return original(self, sized)

    ops.BoundTanh.init_opt_parameters = init_opt_parameters


PATCHES: list[Patch] = [
    Patch("numpy_arraysetops", _numpy_arraysetops_needed, _numpy_arraysetops_apply, True),
    Patch("tqdm_missing", _tqdm_needed, _tqdm_apply, True),
    Patch("torch_onnx_private_api", _torch_onnx_needed, _torch_onnx_apply, True),
    Patch("node_getitem", _node_getitem_needed, _node_getitem_apply),
    Patch("named_members_remove_duplicate", _named_members_needed, _named_members_apply),
    Patch("register_parameter_torch_six", _register_parameter_needed, _register_parameter_apply),
    Patch("buffers_param", _buffers_param_needed, _buffers_param_apply),
    Patch(
        "avgpool_contiguous",
        lambda: _probe_fails(_avgpool_contiguous_probe),
        _avgpool_contiguous_apply,
    ),
    Patch(
        "mul_channel_const_patches",
        lambda: _probe_fails(_mul_channel_const_probe),
        _mul_channel_const_apply,
    ),
    Patch(
        "constant_operand_patches",
        lambda: _probe_fails(_constant_operand_probe),
        _constant_operand_apply,
    ),
    Patch("conv_groups_patches", lambda: _probe_fails(_conv_groups_probe), _conv_groups_apply),
    Patch("dense_bias_flatten", lambda: _probe_fails(_dense_bias_probe), _dense_bias_apply),
    Patch(
        "buffer_batch_dim",
        lambda: _probe_fails(_buffer_batch_dim_probe),
        _buffer_batch_dim_apply,
    ),
    Patch("flat_add_matrix_mode", lambda: _probe_fails(_flat_add_probe), _flat_add_apply),
    Patch(
        "alpha_clamp_gradient", lambda: _probe_fails(_clamp_gradient_probe), _clamp_gradient_apply
    ),
    Patch(
        "clampmult_gradients",
        lambda: _probe_fails(_clampmult_gradients_probe),
        _clampmult_gradients_apply,
    ),
    Patch("pad_attributes", lambda: _probe_fails(_pad_attribute_probe), _pad_attribute_apply),
    Patch("parameterless_model", lambda: _probe_fails(_parameterless_probe), _parameterless_apply),
    Patch("s_shaped_relaxation", lambda: _probe_fails(_s_shaped_probe), _s_shaped_apply),
    Patch(
        "s_shaped_conv_alpha",
        lambda: _probe_fails(_s_shaped_conv_alpha_probe),
        _s_shaped_conv_alpha_apply,
    ),
]
