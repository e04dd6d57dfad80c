"""The onnx2torch operator modules that the interval pass understands.

Converted ONNX graphs express arithmetic and reshapes as onnx2torch modules rather than
torch functions; :func:`onnx_operator` says what such a module computes, so that
:mod:`certify.bounds.interval` can treat it as the torch function it stands for.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def onnx_operator(module: nn.Module) -> tuple[str, Callable] | None:
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
