"""Import-time shims: what ``import auto_LiRPA`` needs on current numpy and torch.

auto_LiRPA 0.3 imports modules and private torch functions that numpy 2 and torch 2
removed or moved, and a package it does not declare. These patches (``at_import``) are
applied just before :func:`~certify.bounds.lirpa_compat.load_auto_lirpa` imports
auto_LiRPA and undone right after, so no other code sees the stand-ins; the private torch
symbols they look for are listed in
:data:`~certify.bounds.lirpa_compat.registry.TORCH_PRIVATE_SYMBOLS`.
"""

from __future__ import annotations

import importlib
import importlib.util
import types
from collections.abc import Callable
from typing import Any

from certify.bounds.lirpa_compat.registry import (
    first_resolvable,
    lacks,
    patch,
    temporary_attr,
    temporary_module,
)


def _numpy_arraysetops_needed() -> bool:
    return lacks("numpy.lib.arraysetops.isin")


@patch("numpy_arraysetops", needed=_numpy_arraysetops_needed, at_import=True)
def _numpy_arraysetops_apply() -> Callable[[], None]:
    """numpy 2 removed numpy.lib.arraysetops; auto_LiRPA/operators/base.py imports ``isin``
    from it (and never uses it). Provide the module only while auto_LiRPA is imported."""
    import numpy as np

    stub = types.ModuleType("numpy.lib.arraysetops")
    stub.isin = np.isin  # type: ignore[attr-defined]
    return temporary_module("numpy.lib.arraysetops", stub)


def _tqdm_needed() -> bool:
    return importlib.util.find_spec("tqdm") is None


@patch("tqdm_missing", needed=_tqdm_needed, at_import=True)
def _tqdm_apply() -> Callable[[], None]:
    """auto_LiRPA imports tqdm (for batched CROWN's progress bar) but does not declare it,
    so nothing installs it. Without tqdm, batched CROWN runs without a progress bar."""

    def tqdm(iterable: Any, *args: Any, **kwargs: Any) -> Any:
        return iterable

    stub = types.ModuleType("tqdm")
    stub.tqdm = tqdm  # type: ignore[attr-defined]
    return temporary_module("tqdm", stub)


def _torch_onnx_needed() -> bool:
    return lacks("torch.onnx.utils._optimize_graph") or lacks(
        "torch.onnx.symbolic_helper._set_opset_version"
    )


@patch("torch_onnx_private_api", needed=_torch_onnx_needed, at_import=True)
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
            undo.append(temporary_module(name, stub))
            return stub

    try:
        utils = legacy_module("torch.onnx.utils")
        helper = legacy_module("torch.onnx.symbolic_helper")
        if not hasattr(utils, "_optimize_graph"):
            optimize_graph = first_resolvable("torch_onnx_private_api")
            undo.append(temporary_attr(utils, "_optimize_graph", optimize_graph))
        if not hasattr(helper, "_set_opset_version"):
            onnx_globals = first_resolvable("torch_onnx_opset_global")

            def set_opset_version(opset_version: int) -> None:
                onnx_globals.export_onnx_opset_version = opset_version

            undo.append(temporary_attr(helper, "_set_opset_version", set_opset_version))
    except BaseException:
        restore()
        raise
    return restore
