"""Patches for torch APIs that changed under auto_LiRPA: the graph it parses from torch's
ONNX tracing, and the nn.Module methods that BoundedModule overrides.

auto_LiRPA 0.3 was written against torch 1.12: it reads ONNX node attributes through an
accessor that torch dropped, overrides nn.Module methods with their old signatures, and
expects the Pad node of a newer opset than current torch traces to before its first
export. Each patch here restores what auto_LiRPA expects, on torch's side or on
BoundedModule's.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
from collections.abc import Iterator
from typing import Any

from certify.bounds.lirpa_compat.registry import bound_ops, first_resolvable, patch


def _node_getitem_needed() -> bool:
    import torch

    return not hasattr(torch._C.Node, "__getitem__")


@patch("node_getitem", needed=_node_getitem_needed)
def _node_getitem_apply() -> None:
    """torch used to give torch._C.Node a ``node[name]`` accessor (it dispatched on
    ``kindOf``); parse_graph reads every ONNX attribute that way. Restore it: ``kindOf``
    names the typed accessor (``t``, ``i``, ``f``, ``s``, ``is``, ``ival``...) to call."""
    import torch

    first_resolvable("node_getitem")

    def __getitem__(node: Any, key: str) -> Any:
        return getattr(node, node.kindOf(key))(key)

    torch._C.Node.__getitem__ = __getitem__  # type: ignore[attr-defined]


def _named_members_needed() -> bool:
    from torch import nn

    bounded = importlib.import_module("auto_LiRPA.bound_general").BoundedModule
    wants = "remove_duplicate" in inspect.signature(nn.Module._named_members).parameters
    has = "remove_duplicate" in inspect.signature(bounded._named_members).parameters
    return wants and not has


@patch("named_members_remove_duplicate", needed=_named_members_needed)
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


@patch("register_parameter_torch_six", needed=_register_parameter_needed)
def _register_parameter_apply() -> None:
    """BoundedModule.register_parameter is a copy of torch 1.x's that checks names against
    torch._six.string_classes, gone since torch 2.0; assigning an nn.Parameter attribute
    then raises AttributeError. torch's own method does the same checks."""
    from torch import nn

    bounded = importlib.import_module("auto_LiRPA.bound_general").BoundedModule
    bounded.register_parameter = nn.Module.register_parameter


def _pad_attribute_probe() -> bool:
    import torch

    attr = {"mode": "constant", "pads": [0, 0, 1, 0, 0, 0, 0, 2], "value": 0.0}
    pad = bound_ops().BoundPad(attr, [], 0, {})
    x = torch.ones(1, 1, 2, 2)
    return torch.equal(pad.forward(x), torch.nn.functional.pad(x, (0, 2, 1, 0)))


@patch("pad_attributes", probe=_pad_attribute_probe)
def _pad_attribute_apply() -> None:
    """auto_LiRPA 0.3 traces at opset 12, but current torch registers its opset 11+
    symbolic functions only once torch.onnx.export has run in the process; until then F.pad
    (nn.ZeroPad2d, onnx2torch's Pad) traces to the old Pad, whose pads and value are
    attributes, not inputs as BoundPad.forward wants: ``missing 1 required positional
    argument: 'pad'``. Take them from the attributes when they are not inputs. The bounds
    of BoundPad hold only for padding with zeros (bound_backward drops the padded values
    and ignores the mode), so refuse any other padding rather than bound it wrongly."""
    ops = bound_ops()
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
