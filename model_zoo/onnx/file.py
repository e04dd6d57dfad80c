"""Step 1 of loading an ONNX file: reading it safely, and the input and output it declares.

The file is parsed, its external data is read only from beside it, the ONNX checker
must accept it, and the graph must have the one float input and one output of an image
classifier.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

from certify.core.errors import CheckpointError, ModelError, first_line
from model_zoo.onnx.proto import Shape, all_tensors, dims, graph_inputs


def read_model(path: Path) -> onnx.ModelProto:
    """Parse and check the ONNX file at ``path``, with its external data loaded.

    Raises :class:`CheckpointError` for a missing, unreadable or unsafe file and
    :class:`ModelError` for one the ONNX checker rejects.
    """
    if not path.is_file():
        what = "is a folder, not an ONNX file" if path.is_dir() else "does not exist"
        raise CheckpointError(f"ONNX model {path} {what}")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise CheckpointError(f"{path} is not a readable ONNX model: {first_line(exc)}") from None
    if not proto.HasField("graph") or proto.ir_version <= 0:
        raise CheckpointError(f"{path} is not an ONNX model (no graph or IR version in it)")
    _check_names(proto, path)
    _check_data_types(proto, path)
    _load_external_data(proto, path)
    try:
        # The path form also works for models over protobuf's 2 GiB limit.
        onnx.checker.check_model(str(path))
    except (onnx.checker.ValidationError, RuntimeError, ValueError) as exc:
        raise ModelError(f"{path} fails the ONNX checker: {first_line(exc)}") from None
    return proto


def _check_names(proto: onnx.ModelProto, path: Path) -> None:
    """Refuse text fields (names, dimension names ...) that are not UTF-8: protobuf hands
    them over as bytes, which the checker lets through and later steps trip over."""
    if not _all_text(proto):
        raise CheckpointError(
            f"{path} is not a readable ONNX model: it has names that are not UTF-8 text"
        )


def _all_text(message: Message) -> bool:
    for descriptor, value in message.ListFields():
        # a repeated field is a container of them (protobuf 7 dropped `label`)
        values = [value] if isinstance(value, str | bytes | Message) else value
        if descriptor.type == FieldDescriptor.TYPE_STRING:
            ok = all(isinstance(v, str) for v in values)
        elif descriptor.type == FieldDescriptor.TYPE_MESSAGE:
            ok = all(_all_text(v) for v in values)
        else:
            ok = True
        if not ok:
            return False
    return True


def _check_data_types(proto: onnx.ModelProto, path: Path) -> None:
    """Refuse tensors of a data type this onnx does not know (the checker does not look)."""
    known = set(onnx.TensorProto.DataType.values()) - {onnx.TensorProto.UNDEFINED}
    for tensor in all_tensors(proto):
        if tensor.data_type not in known:
            raise ModelError(
                f"{path}: tensor {tensor.name!r:.60} has data type {tensor.data_type}, "
                "which ONNX does not define; the file is damaged or from a newer ONNX"
            )


def _load_external_data(proto: onnx.ModelProto, path: Path) -> None:
    """Load tensors stored beside the model, refusing any outside its folder."""
    folder = path.resolve().parent
    external = [t for t in all_tensors(proto) if onnx.external_data_helper.uses_external_data(t)]
    for tensor in external:
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (folder / location).resolve()
        if not location or not target.is_relative_to(folder):
            raise CheckpointError(
                f"{path}: tensor {tensor.name!r} keeps its data at {location!r}, outside the "
                "model's folder; refusing to read it"
            )
        if not target.is_file():
            raise CheckpointError(f"{path}: external data file {location!r} is missing")
    if external:
        try:
            onnx.load_external_data_for_model(proto, str(folder))
        except (OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{path}: cannot read external data: {first_line(exc)}") from None


def io_shapes(proto: onnx.ModelProto) -> tuple[Shape, Shape]:
    """The declared shapes of the graph's one input and one output (a float input)."""
    inputs, outputs = graph_inputs(proto.graph), list(proto.graph.output)
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelError(
            f"an image classifier needs one input and one output; this ONNX graph has "
            f"{len(inputs)} inputs and {len(outputs)} outputs"
        )
    elem_type = inputs[0].type.tensor_type.elem_type
    if elem_type != onnx.TensorProto.FLOAT:
        known = elem_type in onnx.TensorProto.DataType.values()
        name = onnx.TensorProto.DataType.Name(elem_type) if known else f"type-{elem_type}"
        raise ModelError(f"the ONNX model takes {name} input; certify evaluates float32 models")
    return dims(inputs[0]), dims(outputs[0])
