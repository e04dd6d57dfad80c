"""Load an ONNX image classifier as a torch module that certify can evaluate.

Published models come as ONNX files written by many exporters; certify needs a plain
``nn.Module`` taking pixel images N x C x H x W in [0, 1] that auto_LiRPA can trace.
This module checks the file, rewrites the graph into the subset that onnx2torch 1.5
converts (each rewrite a small function below), converts it, and wraps the result so
that batches of images in the data set's layout reach the model in the layout it
declares. The architectures certify trains itself live in :mod:`model_zoo.architectures`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from google.protobuf.message import DecodeError
from onnx import numpy_helper, shape_inference, version_converter
from onnx.reference import ReferenceEvaluator
from torch import nn

from certify.compat.onnx2torch_import import load_onnx2torch
from certify.errors import CheckpointError, ModelError, UsageError
from model_zoo.normalization import NormalizedModel

Shape = tuple[int | str, ...]

# The opset of the default ONNX domain ("ai.onnx" is its long name).
_ONNX_DOMAINS = ("", "ai.onnx")
# Symbolic name given to the batch dimension once it is freed from a fixed size.
_BATCH = "N"
# Random operators must stay in the graph even when their inputs are constant.
_NEVER_FOLD = {
    "RandomNormal",
    "RandomNormalLike",
    "RandomUniform",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
    "Dropout",
}


@dataclass
class LoadedOnnx:
    """A converted ONNX model and what was learnt about it while loading."""

    model: nn.Module
    """Takes N x C x H x W pixel images in [0, 1]; normalizes inside if mean/std given."""
    input_shape: tuple[int, int, int]
    """(C, H, W) of the images that :attr:`model` takes, as the data set has them."""
    onnx_input_shape: Shape
    """The input shape the ONNX graph declares, batch dimension included."""
    onnx_output_shape: Shape
    channels_last: bool
    """Whether the graph takes images as N x H x W x C (the wrapper permutes)."""
    opset: int
    """The opset of the file as written."""
    converted_opset: int
    """The opset the graph was lowered to before conversion (equal if untouched)."""
    producer: str
    path: Path
    rewrites: list[str] = field(default_factory=list)
    """One line per graph rewrite that was applied, for logs."""

    @property
    def num_classes(self) -> int | None:
        last = self.onnx_output_shape[-1] if self.onnx_output_shape else None
        return last if isinstance(last, int) else None


class OnnxImageModel(nn.Module):
    """Feeds N x C x H x W images to a converted graph in its declared per-sample shape.

    Uses only permute and reshape, decided once here, so auto_LiRPA can trace it.
    """

    def __init__(
        self,
        model: nn.Module,
        input_shape: tuple[int, int, int],
        sample_shape: tuple[int, ...],
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.sample_shape = tuple(sample_shape)
        self.channels_last = channels_last
        c, h, w = input_shape
        arrived = (h, w, c) if channels_last else (c, h, w)
        self._reshape = self.sample_shape != arrived

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.permute(0, 2, 3, 1)
        if self._reshape:
            # -1, not x.shape[0]: auto_LiRPA traces with one image and would keep the 1.
            x = x.reshape(-1, *self.sample_shape)
        return self.model(x)

    def extra_repr(self) -> str:
        return f"sample_shape={self.sample_shape}, channels_last={self.channels_last}"


def load_onnx(
    path: str | Path,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    input_shape: tuple[int, int, int] | None = None,
) -> LoadedOnnx:
    """Load, check, rewrite and convert the ONNX classifier at ``path``.

    ``input_shape`` is the data set's (C, H, W); without it the graph's own 4-d input
    shape is taken as N x C x H x W. ``mean``/``std`` are for models that were trained
    on normalized inputs but do not normalize themselves.

    Raises :class:`CheckpointError` for a missing, unreadable or unsafe file,
    :class:`ModelError` for a graph that is invalid or cannot be converted, and
    :class:`UsageError` for mean/std that do not fit.
    """
    path = Path(path)
    proto = _read_model(path)
    opset = _default_opset(proto)
    producer = f"{proto.producer_name} {proto.producer_version}".strip() or "unknown"
    declared_in, declared_out = _io_shapes(proto)
    shape, channels_last = _resolve_layout(declared_in, input_shape)
    _check_normalization(mean, std, shape[0])
    rewrites: list[str] = []
    proto = _normalize_graph(proto, rewrites)
    onnx2torch = load_onnx2torch()
    proto = _lower_opset(proto, onnx2torch, rewrites)
    _raise_on_unsupported(proto, onnx2torch)
    sample_shape = tuple(int(d) for d in declared_in[1:])
    model: nn.Module = OnnxImageModel(
        _convert(proto, onnx2torch), shape, sample_shape, channels_last
    )
    if mean is not None and std is not None:
        model = NormalizedModel(model, mean, std)
    model.eval()
    _check_batching(model, shape, path)
    return LoadedOnnx(
        model=model,
        input_shape=shape,
        onnx_input_shape=declared_in,
        onnx_output_shape=declared_out,
        channels_last=channels_last,
        opset=opset,
        converted_opset=_default_opset(proto),
        producer=producer,
        path=path,
        rewrites=rewrites,
    )


def _check_normalization(
    mean: Sequence[float] | None, std: Sequence[float] | None, channels: int
) -> None:
    if (mean is None) != (std is None):
        raise UsageError("give both mean and std for an ONNX model, or neither")
    if mean is None or std is None:
        return
    if len(mean) != len(std) or len(mean) not in (1, channels):
        raise UsageError(
            f"mean and std need 1 or {channels} values each, got {len(mean)} and {len(std)}"
        )
    if any(s <= 0 for s in std):
        raise UsageError(f"every std must be positive, got {list(std)}")


# ---------------------------------------------------------------------------------
# Reading and checking the file


def _read_model(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        what = "is a folder, not an ONNX file" if path.is_dir() else "does not exist"
        raise CheckpointError(f"ONNX model {path} {what}")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as exc:
        raise CheckpointError(f"{path} is not a readable ONNX model: {_first_line(exc)}") from None
    if not proto.HasField("graph") or proto.ir_version <= 0:
        raise CheckpointError(f"{path} is not an ONNX model (no graph or IR version in it)")
    _load_external_data(proto, path)
    try:
        # The path form also works for models over protobuf's 2 GiB limit.
        onnx.checker.check_model(str(path))
    except (onnx.checker.ValidationError, RuntimeError, ValueError) as exc:
        raise ModelError(f"{path} fails the ONNX checker: {_first_line(exc)}") from None
    return proto


def _load_external_data(proto: onnx.ModelProto, path: Path) -> None:
    """Load tensors stored beside the model, refusing any outside its folder."""
    folder = path.resolve().parent
    external = [t for t in _all_tensors(proto) if onnx.external_data_helper.uses_external_data(t)]
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
            raise CheckpointError(
                f"{path}: cannot read external data: {_first_line(exc)}"
            ) from None


def _all_tensors(proto: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    nodes = [n for g in _all_graphs(proto.graph) for n in g.node]
    nodes += [n for f in proto.functions for n in f.node]
    for graph in _all_graphs(proto.graph):
        yield from graph.initializer
    for node in nodes:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors


def _all_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _all_graphs(attr.g)
            for sub in attr.graphs:
                yield from _all_graphs(sub)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _default_opset(proto: onnx.ModelProto) -> int:
    versions = [o.version for o in proto.opset_import if o.domain in _ONNX_DOMAINS]
    return max(versions, default=0)


# ---------------------------------------------------------------------------------
# Input and output shapes


def _graph_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    # Before IR 4, initializers were listed among the inputs too.
    initializers = {i.name for i in graph.initializer}
    return [i for i in graph.input if i.name not in initializers]


def _dims(value: onnx.ValueInfoProto) -> Shape:
    if not value.type.tensor_type.HasField("shape"):
        return ()
    return tuple(
        d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
        for d in value.type.tensor_type.shape.dim
    )


def _io_shapes(proto: onnx.ModelProto) -> tuple[Shape, Shape]:
    inputs, outputs = _graph_inputs(proto.graph), list(proto.graph.output)
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelError(
            f"an image classifier needs one input and one output; this ONNX graph has "
            f"{len(inputs)} inputs and {len(outputs)} outputs"
        )
    elem_type = inputs[0].type.tensor_type.elem_type
    if elem_type != onnx.TensorProto.FLOAT:
        name = onnx.TensorProto.DataType.Name(elem_type)
        raise ModelError(f"the ONNX model takes {name} input; certify evaluates float32 models")
    return _dims(inputs[0]), _dims(outputs[0])


def _resolve_layout(
    declared: Shape, input_shape: tuple[int, int, int] | None
) -> tuple[tuple[int, int, int], bool]:
    """The (C, H, W) the wrapper takes, and whether the graph wants channels last."""
    sample = declared[1:]
    if len(declared) < 2:
        raise ModelError(
            f"the ONNX input shape {declared} has no batch dimension: export the model with one"
        )
    if not all(isinstance(d, int) and d > 0 for d in sample):
        raise ModelError(
            f"the ONNX input shape {declared} does not fix the shape of one sample: "
            "export the model with a static image size"
        )
    if input_shape is None:
        if len(sample) != 3:
            raise ModelError(
                f"the ONNX model takes inputs of shape {declared}, not images N x C x H x W: "
                "give the data set's input shape"
            )
        return (int(sample[0]), int(sample[1]), int(sample[2])), False
    c, h, w = (int(d) for d in input_shape)
    if tuple(sample) == (c, h, w):
        return (c, h, w), False
    if tuple(sample) == (h, w, c):
        return (c, h, w), True
    if math.prod(int(d) for d in sample) == c * h * w:
        return (c, h, w), False
    raise ModelError(
        f"the ONNX model takes inputs of shape {declared}, which do not hold one "
        f"{c}x{h}x{w} image of the data set"
    )


# ---------------------------------------------------------------------------------
# Graph rewrites before conversion


def _normalize_graph(proto: onnx.ModelProto, rewrites: list[str]) -> onnx.ModelProto:
    """Rewrite exporter idioms that onnx2torch 1.5 rejects into equivalent graphs."""
    if proto.functions:
        proto = onnx.inliner.inline_local_functions(proto)
        rewrites.append("inlined the model's local functions")
    steps = (
        _constants_to_initializers,
        _bypass_identity_of_initializers,
        _fold_constants,
        _drop_irrelevant_reshape_allowzero,
        _drop_default_pool_dilations,
        _free_batch_dimension,
    )
    for step in steps:
        done = step(proto)
        if done:
            rewrites.append(done)
    return proto


def _initializers(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in graph.initializer}


def _replace_nodes(graph: onnx.GraphProto, keep: list[onnx.NodeProto]) -> None:
    del graph.node[:]
    graph.node.extend(keep)


def _constants_to_initializers(proto: onnx.ModelProto) -> str | None:
    """Turn ``Constant`` nodes into initializers, so later steps find every constant
    in one place (the legacy exporter writes reshape targets as Constant nodes)."""
    graph, keep, moved = proto.graph, [], 0
    outputs = {o.name for o in graph.output}
    for node in graph.node:
        if (
            node.op_type != "Constant"
            or node.domain not in _ONNX_DOMAINS
            or node.output[0] in outputs
        ):
            keep.append(node)
            continue
        value = _constant_value(node)
        if value is None:
            keep.append(node)
            continue
        graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
        moved += 1
    _replace_nodes(graph, keep)
    return f"moved {moved} Constant nodes into initializers" if moved else None


def _constant_value(node: onnx.NodeProto) -> np.ndarray | None:
    attr = node.attribute[0] if len(node.attribute) == 1 else None
    if attr is None or attr.name == "sparse_value":
        return None
    if attr.name == "value":
        return numpy_helper.to_array(attr.t)
    dtypes = {"value_float": np.float32, "value_floats": np.float32}
    dtypes |= {"value_int": np.int64, "value_ints": np.int64}
    if attr.name in dtypes:
        return np.array(onnx.helper.get_attribute_value(attr), dtype=dtypes[attr.name])
    return None


def _bypass_identity_of_initializers(proto: onnx.ModelProto) -> str | None:
    """Let consumers of ``Identity(initializer)`` read the initializer directly.

    The legacy exporter shares equal initializers this way, and onnx2torch looks the
    Identity's output up as an initializer, failing with ``KeyError: 'onnx::Conv_92'``.
    """
    graph = proto.graph
    initializers = _initializers(graph)
    outputs = {o.name for o in graph.output}
    alias: dict[str, str] = {}
    keep = []
    for node in graph.node:
        source = node.input[0] if node.op_type == "Identity" and node.input else ""
        source = alias.get(source, source)
        if source in initializers and node.output[0] not in outputs:
            alias[node.output[0]] = source
        else:
            keep.append(node)
    _replace_nodes(graph, keep)
    # Subgraphs (If, Loop) may read the removed names from the outer scope too.
    for sub in _all_graphs(graph):
        for node in sub.node:
            for i, name in enumerate(node.input):
                if name in alias:
                    node.input[i] = alias[name]
    return f"bypassed {len(alias)} Identity nodes of initializers" if alias else None


def _fold_constants(proto: onnx.ModelProto) -> str | None:
    """Evaluate nodes whose inputs are all constants with onnx's reference runtime.

    Exporters leave such subgraphs (casts, shape arithmetic on weights) when constant
    folding is off; folding them keeps operators onnx2torch lacks out of the graph.
    """
    graph = proto.graph
    initializers = _initializers(graph)
    outputs = {o.name for o in graph.output}
    opsets = {o.domain or "": o.version for o in proto.opset_import}
    keep, folded = [], 0
    for node in graph.node:
        values = _fold_node(node, initializers, outputs, opsets)
        if values is None:
            keep.append(node)
            continue
        for name, value in zip(node.output, values, strict=True):
            tensor = numpy_helper.from_array(np.asarray(value), name)
            graph.initializer.append(tensor)
            initializers[name] = tensor
        folded += 1
    _replace_nodes(graph, keep)
    return f"folded {folded} nodes with constant inputs" if folded else None


def _fold_node(
    node: onnx.NodeProto,
    initializers: dict[str, onnx.TensorProto],
    graph_outputs: set[str],
    opsets: dict[str, int],
) -> list[np.ndarray] | None:
    foldable = (
        node.domain in _ONNX_DOMAINS
        and node.op_type not in _NEVER_FOLD
        and node.input
        and all(node.output)
        and all(name in initializers for name in node.input)
        and not any(name in graph_outputs for name in node.output)
        and not any(a.HasField("g") or a.graphs for a in node.attribute)
    )
    if not foldable:
        return None
    feeds = {name: numpy_helper.to_array(initializers[name]) for name in node.input}
    try:
        return list(ReferenceEvaluator(node, opsets={"": opsets.get("", 0)}).run(None, feeds))
    except Exception:
        # Folding is an optimization: on any failure the node stays in the graph, for
        # onnx2torch to convert or for the operator check to report.
        return None


def _drop_irrelevant_reshape_allowzero(proto: onnx.ModelProto) -> str | None:
    """Remove ``allowzero=1`` from Reshapes to a constant shape without zeros.

    The dynamo exporter writes it on every Reshape and onnx2torch 1.5 rejects it, but it
    only changes what a 0 in the target shape means.
    """
    initializers = _initializers(proto.graph)
    dropped = 0
    for node in proto.graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2:
            continue
        target = initializers.get(node.input[1])
        attrs = [a for a in node.attribute if a.name == "allowzero"]
        if target is None or not attrs or attrs[0].i == 0:
            continue
        if np.all(numpy_helper.to_array(target) != 0):
            node.attribute.remove(attrs[0])
            dropped += 1
    return f"dropped allowzero=1 from {dropped} Reshape nodes" if dropped else None


def _drop_default_pool_dilations(proto: onnx.ModelProto) -> str | None:
    """Remove all-ones ``dilations`` from AveragePool, which only opset 19+ knows;
    without it the graph can be lowered to an opset that onnx2torch converts."""
    dropped = 0
    for node in proto.graph.node:
        if node.op_type != "AveragePool":
            continue
        for attr in list(node.attribute):
            if attr.name == "dilations" and all(d == 1 for d in attr.ints):
                node.attribute.remove(attr)
                dropped += 1
    return f"dropped default dilations from {dropped} AveragePool nodes" if dropped else None


def _free_batch_dimension(proto: onnx.ModelProto) -> str | None:
    """Make a fixed batch size symbolic, and every Reshape target batch-free.

    Exporters fix the batch at the example's size (the dynamo exporter by default), so
    flattening reshapes to a constant like [1, -1]; with a dynamic batch the target is
    computed by a Shape/Gather/Concat subgraph instead, which auto_LiRPA evaluates once
    while tracing and then keeps as a constant. Both become [-1, *per-sample shape].
    """
    graph = proto.graph
    dims = _graph_inputs(graph)[0].type.tensor_type.shape.dim
    if not dims:
        return None
    fixed = dims[0].dim_value if dims[0].HasField("dim_value") else None
    # Stale intermediate shapes would contradict inference once the batch changes.
    del graph.value_info[:]
    probe = fixed or 1
    rewritten = _batch_free_reshape_targets(graph, probe, _static_shapes(proto, probe))
    removed = _remove_dead_nodes(graph)
    done = []
    if fixed is not None:
        dims[0].dim_param = _BATCH
        for output in graph.output:
            out = output.type.tensor_type.shape.dim
            if out and out[0].HasField("dim_value") and out[0].dim_value == fixed:
                out[0].dim_param = _BATCH
        done.append(f"made the fixed batch size {fixed} symbolic")
    if rewritten:
        done.append(f"rewrote {rewritten} Reshape targets to [-1, ...]")
    if removed:
        done.append(f"removed {removed} nodes that only computed them")
    return "; ".join(done) or None


def _static_shapes(proto: onnx.ModelProto, batch: int) -> dict[str, Shape]:
    """Every value's shape with the batch set to ``batch``, shape arithmetic included."""
    dim = _graph_inputs(proto.graph)[0].type.tensor_type.shape.dim[0]
    saved = onnx.TensorShapeProto.Dimension()
    saved.CopyFrom(dim)
    dim.dim_value = batch
    try:
        inferred = shape_inference.infer_shapes(proto, data_prop=True)
    except (onnx.shape_inference.InferenceError, RuntimeError, ValueError):
        return {}
    finally:
        dim.CopyFrom(saved)
    graph = inferred.graph
    values = [*graph.input, *graph.value_info, *graph.output]
    return {v.name: _dims(v) for v in values}


def _batch_free_reshape_targets(
    graph: onnx.GraphProto, batch: int, shapes: dict[str, Shape]
) -> int:
    """Point each Reshape that keeps the batch first at a constant [-1, ...] target."""
    taken = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
    initializers = _initializers(graph)
    rewritten = 0
    for node in graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2:
            continue
        source, result = shapes.get(node.input[0], ()), shapes.get(node.output[0], ())
        static = all(isinstance(d, int) and d > 0 for d in (*source, *result))
        if not (static and source and result and source[0] == batch == result[0]):
            continue
        target = np.array([-1, *result[1:]], dtype=np.int64)
        current = initializers.get(node.input[1])
        if current is not None and np.array_equal(numpy_helper.to_array(current), target):
            continue
        name = _fresh_name(f"{node.output[0]}_target", taken)
        # A new initializer: the old target may be shared with nodes that need it as is.
        graph.initializer.append(numpy_helper.from_array(target, name))
        node.input[1] = name
        for attr in [a for a in node.attribute if a.name == "allowzero"]:
            node.attribute.remove(attr)  # the new target has no zeros
        rewritten += 1
    return rewritten


def _remove_dead_nodes(graph: onnx.GraphProto) -> int:
    """Drop nodes whose outputs nothing reads, such as orphaned shape subgraphs."""
    removed = 0
    while True:
        used = {o.name for o in graph.output}
        used |= {name for sub in _all_graphs(graph) for n in sub.node for name in n.input}
        keep = [n for n in graph.node if any(o in used for o in n.output)]
        if len(keep) == len(graph.node):
            return removed
        removed += len(graph.node) - len(keep)
        _replace_nodes(graph, keep)


def _fresh_name(base: str, taken: set[str]) -> str:
    name, i = base, 0
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    taken.add(name)
    return name


# ---------------------------------------------------------------------------------
# Opset lowering, operator support and conversion


def _unsupported_ops(proto: onnx.ModelProto, onnx2torch: object, opset: int) -> list[str]:
    """The operators of the graph that onnx2torch has no converter for at ``opset``."""
    get_converter = onnx2torch.node_converters.get_converter  # type: ignore[attr-defined]
    versions = {o.domain: o.version for o in proto.opset_import}
    missing = set()
    for node in proto.graph.node:
        domain = "" if node.domain in _ONNX_DOMAINS else node.domain
        version = opset if domain == "" else versions.get(domain)
        label = node.op_type if domain == "" else f"{domain}.{node.op_type}"
        if version is None:
            missing.add(label)
            continue
        try:
            get_converter(operation_type=node.op_type, version=version, domain=domain)
        except NotImplementedError:
            missing.add(label)
    return sorted(missing)


def _lower_opset(
    proto: onnx.ModelProto, onnx2torch: object, rewrites: list[str]
) -> onnx.ModelProto:
    """Convert the graph to the newest opset at which onnx2torch converts every operator.

    onnx2torch 1.5 knows operator versions up to about opset 18, while torch 2.13 exports
    opset 20 by default; most newer versions only added data types (Conv-22) or
    attributes that exported classifiers leave at their defaults.
    """
    current = _default_opset(proto)
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
    except (onnx.checker.ValidationError, RuntimeError, ValueError) as exc:
        raise ModelError(
            f"cannot lower the ONNX model from opset {current} to {target}, which onnx2torch "
            f"needs for {', '.join(needed)}: {_first_line(exc)}"
        ) from None
    rewrites.append(f"lowered opset {current} -> {target} for {', '.join(needed)}")
    return lowered


def _raise_on_unsupported(proto: onnx.ModelProto, onnx2torch: object) -> None:
    opset = _default_opset(proto)
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


def _convert(proto: onnx.ModelProto, onnx2torch: object) -> nn.Module:
    try:
        return onnx2torch.convert(proto)  # type: ignore[attr-defined]
    except (NotImplementedError, KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise ModelError(
            f"onnx2torch cannot convert the ONNX model: {type(exc).__name__}: {_first_line(exc)}"
        ) from None


def _check_batching(model: nn.Module, shape: tuple[int, int, int], path: Path) -> None:
    """Run two images together and one alone: the outputs must agree per image.

    This catches batch sizes fixed inside the graph that the rewrites did not free.
    """
    images = torch.rand((2, *shape), generator=torch.Generator().manual_seed(0))
    hint = "its graph seems to fix the batch size; export it with a dynamic batch dimension"
    try:
        with torch.no_grad():
            both, first = model(images), model(images[:1])
    except RuntimeError as exc:
        raise ModelError(
            f"{path}: the converted model fails on a batch of 2 images ({_first_line(exc)}): "
            + hint
        ) from None
    agree = (
        isinstance(both, torch.Tensor)
        and both.ndim >= 1
        and both.shape[0] == 2
        and both.shape[1:] == first.shape[1:]
        and torch.allclose(both[:1], first, rtol=1e-4, atol=1e-5)
    )
    if not agree:
        raise ModelError(f"{path}: the converted model mixes up the images of a batch: " + hint)
