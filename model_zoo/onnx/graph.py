"""Step 2 of loading an ONNX file: rewrites that turn exporter idioms into graphs that
onnx2torch 1.5 converts.

Each rewrite is one small named function that changes how the graph is written, never
what it computes, and returns a line for the log (or ``None`` when it changed nothing).
"""

from __future__ import annotations

import numpy as np
import onnx

# onnx.inliner is a submodule that `import onnx` does not load
from onnx import inliner, numpy_helper
from onnx.reference import ReferenceEvaluator

from model_zoo.onnx.batch import free_batch_dimension
from model_zoo.onnx.proto import ONNX_DOMAINS, all_graphs, initializer_map, replace_nodes

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


def normalize_graph(proto: onnx.ModelProto, rewrites: list[str]) -> onnx.ModelProto:
    """Rewrite exporter idioms that onnx2torch 1.5 rejects into equivalent graphs."""
    if proto.functions:
        proto = inliner.inline_local_functions(proto)
        rewrites.append("inlined the model's local functions")
    steps = (
        _constants_to_initializers,
        _bypass_identity_of_initializers,
        _fold_constants,
        _drop_irrelevant_reshape_allowzero,
        _drop_default_pool_dilations,
        free_batch_dimension,
    )
    for step in steps:
        done = step(proto)
        if done:
            rewrites.append(done)
    return proto


def _constants_to_initializers(proto: onnx.ModelProto) -> str | None:
    """Turn ``Constant`` nodes into initializers, so later steps find every constant
    in one place (the legacy exporter writes reshape targets as Constant nodes)."""
    graph, keep, moved = proto.graph, [], 0
    outputs = {o.name for o in graph.output}
    for node in graph.node:
        if (
            node.op_type != "Constant"
            or node.domain not in ONNX_DOMAINS
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
    replace_nodes(graph, keep)
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
    initializers = initializer_map(graph)
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
    replace_nodes(graph, keep)
    # Subgraphs (If, Loop) may read the removed names from the outer scope too.
    for sub in all_graphs(graph):
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
    initializers = initializer_map(graph)
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
    replace_nodes(graph, keep)
    return f"folded {folded} nodes with constant inputs" if folded else None


def _fold_node(
    node: onnx.NodeProto,
    initializers: dict[str, onnx.TensorProto],
    graph_outputs: set[str],
    opsets: dict[str, int],
) -> list[np.ndarray] | None:
    foldable = (
        node.domain in ONNX_DOMAINS
        and node.op_type not in _NEVER_FOLD
        and node.input
        and all(node.output)
        and all(name in initializers for name in node.input)
        and not any(name in graph_outputs for name in node.output)
        and not any(a.HasField("g") or a.graphs for a in node.attribute)
    )
    if not foldable:
        return None
    try:
        feeds = {name: numpy_helper.to_array(initializers[name]) for name in node.input}
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
    initializers = initializer_map(proto.graph)
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
