"""Step 3 of loading an ONNX file: lowering its opset and converting it with onnx2torch.

onnx2torch 1.5 has converters for operator versions up to about opset 18, so the graph
is first lowered to the newest opset at which every one of its operators converts;
operators that no opset helps with are all named in one error. The caller passes in the
onnx2torch module (see :mod:`~model_zoo.onnx.onnx2torch_import`).
"""

from __future__ import annotations

import onnx
from onnx import version_converter
from torch import nn

from certify.core.errors import ModelError, first_line
from model_zoo.onnx.proto import ONNX_DOMAINS, default_opset


def _unsupported_ops(proto: onnx.ModelProto, onnx2torch: object, opset: int) -> list[str]:
    """The operators of the graph that onnx2torch has no converter for at ``opset``."""
    get_converter = onnx2torch.node_converters.get_converter  # type: ignore[attr-defined]
    versions = {o.domain: o.version for o in proto.opset_import}
    missing = set()
    for node in proto.graph.node:
        domain = "" if node.domain in ONNX_DOMAINS else node.domain
        version = opset if domain == "" else versions.get(domain)
        label = node.op_type if domain == "" else f"{domain}.{node.op_type}"
        if version is None:
            missing.add(label)
            continue
        try:
            get_converter(operation_type=node.op_type, version=version, domain=domain)
        except Exception:  # NotImplementedError, or onnx's schema lookup refusing the name
            missing.add(label)
    return sorted(missing)


def lower_opset(proto: onnx.ModelProto, onnx2torch: object, rewrites: list[str]) -> onnx.ModelProto:
    """Convert the graph to the newest opset at which onnx2torch converts every operator.

    onnx2torch 1.5 knows operator versions up to about opset 18, while torch 2.13 exports
    opset 20 by default; most newer versions only added data types (Conv-22) or
    attributes that exported classifiers leave at their defaults.
    """
    current = default_opset(proto)
    needed = _unsupported_ops(proto, onnx2torch, current)
    if not needed:
        return proto
    target = next(
        (v for v in range(current - 1, 6, -1) if not _unsupported_ops(proto, onnx2torch, v)),
        None,
    )
    if target is None:
        return proto  # some operator has no converter at all: reported by the caller
    try:
        lowered = version_converter.convert_version(proto, target)
        # The version converter keeps attributes the lower opset lacks (AveragePool's
        # dilations); the checker refuses them instead of letting meaning change silently.
        onnx.checker.check_model(lowered)
    except Exception as exc:  # the converter's and the checker's errors (InferenceError ...)
        raise ModelError(
            f"cannot lower the ONNX model from opset {current} to {target}, which onnx2torch "
            f"needs for {', '.join(needed)}: {first_line(exc)}"
        ) from None
    rewrites.append(f"lowered opset {current} -> {target} for {', '.join(needed)}")
    return lowered


def raise_on_unsupported(proto: onnx.ModelProto, onnx2torch: object) -> None:
    """Raise :class:`ModelError` naming the operators onnx2torch cannot convert, if any."""
    opset = default_opset(proto)
    missing = _unsupported_ops(proto, onnx2torch, opset)
    if not missing:
        return
    # Name the operators that no opset helps with, not those that only could not be
    # lowered because of them.
    hopeless = set(missing)
    for version in range(7, opset):
        hopeless &= set(_unsupported_ops(proto, onnx2torch, version))
    raise ModelError(
        f"onnx2torch cannot convert these operators of the ONNX model (opset {opset}): "
        + ", ".join(sorted(hopeless) or missing)
    )


def convert(proto: onnx.ModelProto, onnx2torch: object) -> nn.Module:
    """The torch module onnx2torch makes of ``proto``; its errors become :class:`ModelError`."""
    try:
        return onnx2torch.convert(proto)  # type: ignore[attr-defined]
    except Exception as exc:
        # onnx2torch's converters assume well-formed operands and fail with whatever
        # indexing a shape or dict raises (IndexError, AttributeError, ...); any of them
        # means this graph does not convert.
        raise ModelError(
            f"onnx2torch cannot convert the ONNX model: {type(exc).__name__}: {first_line(exc)}"
        ) from None
