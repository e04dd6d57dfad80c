"""Small helpers over ONNX protobufs that the loading steps share: walking graphs,
reading shapes and opsets, editing node lists. Nothing here decides anything.
"""

from __future__ import annotations

from collections.abc import Iterator

import onnx

Shape = tuple[int | str, ...]

# The opset of the default ONNX domain ("ai.onnx" is its long name).
ONNX_DOMAINS = ("", "ai.onnx")


def all_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every subgraph (of If, Loop ...) nested in it."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from all_graphs(attr.g)
            for sub in attr.graphs:
                yield from all_graphs(sub)


def all_tensors(proto: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor of the model: initializers and tensor attributes, subgraphs included."""
    nodes = [n for g in all_graphs(proto.graph) for n in g.node]
    nodes += [n for f in proto.functions for n in f.node]
    for graph in all_graphs(proto.graph):
        yield from graph.initializer
    for node in nodes:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors


def graph_inputs(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    """The graph's real inputs (before IR 4, initializers were listed among them too)."""
    initializers = {i.name for i in graph.initializer}
    return [i for i in graph.input if i.name not in initializers]


def dims(value: onnx.ValueInfoProto) -> Shape:
    """The declared shape of ``value``: sizes, symbolic names, "?" where unnamed."""
    if not value.type.tensor_type.HasField("shape"):
        return ()
    return tuple(
        d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
        for d in value.type.tensor_type.shape.dim
    )


def default_opset(proto: onnx.ModelProto) -> int:
    """The model's opset of the default ONNX domain (0 if it imports none)."""
    versions = [o.version for o in proto.opset_import if o.domain in ONNX_DOMAINS]
    return max(versions, default=0)


def initializer_map(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """The graph's initializers by name."""
    return {t.name: t for t in graph.initializer}


def replace_nodes(graph: onnx.GraphProto, keep: list[onnx.NodeProto]) -> None:
    """Make ``keep`` the graph's node list, in its order."""
    del graph.node[:]
    graph.node.extend(keep)
