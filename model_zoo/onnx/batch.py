"""Part of step 2 of loading an ONNX file: freeing a batch size that an exporter fixed.

certify evaluates batches of any size, but exporters fix the batch at the size of their
example, in the declared input and output and in every Reshape target.
:func:`free_batch_dimension` makes the batch symbolic and each such target
``[-1, *per-sample shape]``, using shape inference with the batch set to probe sizes.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

from model_zoo.onnx.proto import (
    Shape,
    all_graphs,
    dims,
    graph_inputs,
    initializer_map,
    replace_nodes,
)

# Symbolic name given to the batch dimension once it is freed from a fixed size.
_BATCH = "N"


def free_batch_dimension(proto: onnx.ModelProto) -> str | None:
    """Make a fixed batch size symbolic, and every Reshape target batch-free.

    Exporters fix the batch at the example's size (the dynamo exporter by default), so
    flattening reshapes to a constant like [1, -1]; with a dynamic batch the target is
    computed by a Shape/Gather/Concat subgraph instead, which auto_LiRPA evaluates once
    while tracing and then keeps as a constant. Both become [-1, *per-sample shape].
    """
    graph = proto.graph
    input_dims = graph_inputs(graph)[0].type.tensor_type.shape.dim
    if not input_dims:
        return None
    fixed = input_dims[0].dim_value if input_dims[0].HasField("dim_value") else None
    # Stale intermediate shapes would contradict inference once the batch changes.
    del graph.value_info[:]
    probe = fixed or 1
    rewritten = _batch_free_reshape_targets(graph, probe, _static_shapes(proto, probe))
    removed = _remove_dead_nodes(graph)
    done = []
    if fixed is not None:
        input_dims[0].dim_param = _BATCH
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
    dim = graph_inputs(proto.graph)[0].type.tensor_type.shape.dim[0]
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
    return {v.name: dims(v) for v in values}


def _batch_free_reshape_targets(
    graph: onnx.GraphProto, batch: int, shapes: dict[str, Shape]
) -> int:
    """Point each Reshape that keeps the batch first at a constant [-1, ...] target."""
    taken = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
    initializers = initializer_map(graph)
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
        used |= {name for sub in all_graphs(graph) for n in sub.node for name in n.input}
        keep = [n for n in graph.node if any(o in used for o in n.output)]
        if len(keep) == len(graph.node):
            return removed
        removed += len(graph.node) - len(keep)
        replace_nodes(graph, keep)


def _fresh_name(base: str, taken: set[str]) -> str:
    name, i = base, 0
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    taken.add(name)
    return name
