"""Import onnx2torch on machines without torchvision.

onnx2torch 1.5 imports torchvision at import time, but only its NonMaxSuppression and
RoiAlign converters use it. torchvision cannot be installed beside every torch build
certify supports, and image classifiers never use those two operators, so when
torchvision is missing a placeholder stands in for it that fails loudly if one of its
functions is ever called. :mod:`model_zoo.onnx.loading` is the only caller.

Nothing is patched when this module is imported, and :func:`load_onnx2torch` leaves
``sys.modules`` as it found it, apart from onnx2torch itself.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from types import ModuleType
from typing import NoReturn

from certify.core.errors import ModelError

_PLACEHOLDER_FLAG = "__certify_placeholder__"
_PLACEHOLDER_FUNCTIONS = ("nms", "box_convert", "roi_align")


def _missing(name: str) -> Callable[..., NoReturn]:
    def fail(*args: object, **kwargs: object) -> NoReturn:
        raise ModelError(
            f"this ONNX model uses torchvision.ops.{name} (NonMaxSuppression or RoiAlign), "
            "which needs torchvision: install a torchvision that matches your torch"
        )

    fail.__name__ = name
    return fail


def _placeholder_modules() -> tuple[ModuleType, ModuleType]:
    torchvision = ModuleType("torchvision")
    torchvision.__doc__ = (
        "certify's stand-in for a missing torchvision (see model_zoo.onnx.onnx2torch_import)."
    )
    ops = ModuleType("torchvision.ops")
    for name in _PLACEHOLDER_FUNCTIONS:
        setattr(ops, name, _missing(name))
    for module in (torchvision, ops):
        setattr(module, _PLACEHOLDER_FLAG, True)
    torchvision.ops = ops  # type: ignore[attr-defined]
    return torchvision, ops


def _is_torchvision(name: str) -> bool:
    return name == "torchvision" or name.startswith("torchvision.")


def _torchvision_available() -> bool:
    if sys.modules.get("torchvision") is not None:
        return True
    try:
        importlib.import_module("torchvision")
    except (ImportError, RuntimeError, OSError):
        # A torchvision built for another torch fails with RuntimeError or OSError (its
        # C++ operators do not load): as unusable as a missing one.
        return False
    return True


def is_placeholder(module: ModuleType) -> bool:
    """Whether ``module`` is the stand-in that :func:`load_onnx2torch` registered."""
    return bool(getattr(module, _PLACEHOLDER_FLAG, False))


def load_onnx2torch() -> ModuleType:
    """Import and return onnx2torch, with a torchvision placeholder if needed.

    A real torchvision is always preferred. The placeholder is only in ``sys.modules``
    while onnx2torch imports: its converters keep their own references to it, and
    other code asking for torchvision afterwards still gets the ImportError it expects.
    """
    loaded = sys.modules.get("onnx2torch")
    if loaded is not None:
        return loaded
    if _torchvision_available():
        return _import_onnx2torch()
    saved = {name: module for name, module in sys.modules.items() if _is_torchvision(name)}
    for name in saved:
        del sys.modules[name]
    sys.modules.update(zip(("torchvision", "torchvision.ops"), _placeholder_modules(), strict=True))
    try:
        return _import_onnx2torch()
    finally:
        for name in [name for name in sys.modules if _is_torchvision(name)]:
            del sys.modules[name]
        sys.modules.update(saved)


def _import_onnx2torch() -> ModuleType:
    try:
        return importlib.import_module("onnx2torch")
    except ImportError as exc:
        raise ModelError(
            f"cannot import onnx2torch ({exc}): run ./install.sh to install it"
        ) from None
