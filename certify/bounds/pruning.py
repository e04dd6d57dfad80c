"""Removing ReLU units that are dead on every image, before bounding a model.

Every input the evaluation bounds lies in the pixel box [0, 1] (normalization lives
inside the model). Interval bounds over that whole box show, for each ReLU, the units
whose input is negative for every possible image: their output is exactly zero, so the
channel that produces them and the weights that read them can be removed without
changing the function on [0, 1]. IBP- and fast-trained networks have many such units
(the bundled MNIST model loses 5 of its 16 first-layer channels), and every bound
method then does less work: IBP, CROWN-IBP and CROWN give the same bounds (up to
float rounding) on a smaller network.

Like BatchNorm folding (:mod:`certify.bounds.fusion`) this runs once per model and makes a
twin for bounding; the model as loaded is left untouched. Only plain chains are
pruned: a Conv or Linear layer whose sole user is a ReLU whose sole user is a Conv,
a Linear, or a Flatten feeding a Linear (in converted ONNX graphs also a Reshape to one
dimension per image, whose shape constant is updated). Anything else stays as it is. A last check
runs both models on the corners of the box and on random images; if they disagree, the
model is bounded whole.
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from dataclasses import dataclass

import torch
from torch import Tensor, fx, nn

from certify.core.devices import exact_float32
from certify.core.errors import ModelError

log = logging.getLogger(__name__)

# A unit counts as dead only when its upper bound over the box, computed in float64,
# is below -_DEAD_MARGIN times the layer's largest bound magnitude (plus one): far
# beyond float64 rounding, so no unit that can be positive is removed.
_DEAD_MARGIN = 1e-9


@dataclass
class _Cut:
    """One prunable chain: producer -> ReLU -> consumer (maybe through a Flatten)."""

    producer: str  # module names
    consumer: str
    live: Tensor  # indices of the producer's output channels that are kept
    # The (batch, features) shape constant of a converted ONNX Reshape on the way,
    # whose feature count shrinks with the channels.
    shape_constant: str | None = None


def prune_dead_units(model: nn.Module, input_shape: tuple[int, ...]) -> nn.Module:
    """A copy of ``model`` (eval mode, no BatchNorm between a layer and its ReLU, so
    fold BatchNorm first) without the ReLU units that are dead for every input in
    ``[0, 1]^input_shape``; ``model`` itself when there is nothing to remove or it
    cannot be analysed (pruning is only an optimization)."""
    from certify.bounds.interval import IntervalNetwork

    model = model.eval()
    try:
        network = IntervalNetwork(copy.deepcopy(model).double())
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        box = torch.zeros(1, *input_shape, dtype=torch.float64, device=device)
        bounds = network.node_bounds(box, box + 1.0)
    except (ModelError, RuntimeError, TypeError) as exc:
        log.debug("no dead units pruned, the model cannot be analysed: %s", exc)
        return model
    calls = Counter(n.target for n in network.graph.nodes if n.op == "call_module")
    cuts = [
        cut
        for node in network.graph.nodes
        if (cut := _cut_at(node, network.model, bounds)) is not None
        # A layer called twice would lose channels at its other call too.
        and calls[cut.producer] == 1
        and calls[cut.consumer] == 1
    ]
    if not cuts:
        return model
    pruned = copy.deepcopy(model)
    for cut in cuts:
        _apply(pruned, cut)
    if not _same_function(model, pruned, input_shape, box.device):
        log.warning("removing dead units changed the model's outputs; bounding it whole")
        return model
    log.debug("pruned dead units after %s", ", ".join(c.producer for c in cuts))
    return pruned


@torch.no_grad()
def _same_function(
    model: nn.Module, pruned: nn.Module, input_shape: tuple[int, ...], device: torch.device
) -> bool:
    """A last check that nothing live was removed: both models agree on the corners of
    the box and on random images."""
    generator = torch.Generator().manual_seed(0)
    corners = torch.randint(0, 2, (8, *input_shape), generator=generator).float()
    inside = torch.rand(8, *input_shape, generator=generator)
    extremes = torch.stack([torch.zeros(input_shape), torch.ones(input_shape)])
    dtype = next((p.dtype for p in model.parameters()), torch.float32)
    probe = torch.cat([extremes, corners, inside]).to(device, dtype)
    with exact_float32():  # TF32 on a GPU would differ by more than the tolerance
        expected = model(probe)
        try:
            got = pruned(probe)
        except RuntimeError:  # shapes that no longer fit
            return False
    tolerance = 1e-4 * (1.0 + expected.abs().max().item())
    return bool(torch.allclose(got, expected, rtol=0.0, atol=tolerance))


def _cut_at(node: fx.Node, model: nn.Module, bounds: dict) -> _Cut | None:
    """The cut at ``node`` if it is a ReLU in a prunable chain with dead channels."""
    if not _is_relu(node, model) or len(node.users) != 1:
        return None
    producer, consumer = node.args[0], next(iter(node.users))
    if not (isinstance(producer, fx.Node) and len(producer.users) == 1):
        return None
    layer = _affine_module(producer, model)
    if layer is None:
        return None
    after_conv = isinstance(layer, nn.Conv1d | nn.Conv2d)
    reader = _through_flatten(consumer, model, after_conv, bounds)
    if reader is None or _affine_module(reader[0], model) is None:
        return None
    consumer, shape_constant = reader
    upper = bounds[producer.name].upper[0].cpu()  # units of one image: (C, ...) or (F,)
    margin = _DEAD_MARGIN * (1.0 + upper.abs().max().item())
    dead = (upper < -margin).flatten(1).all(1) if upper.dim() > 1 else upper < -margin
    live = torch.nonzero(~dead).flatten()
    if len(live) == len(dead):
        return None
    if len(live) == 0:  # every unit dead: keep one, so no layer becomes empty
        live = torch.zeros(1, dtype=torch.long)
    return _Cut(str(producer.target), str(consumer.target), live, shape_constant)


def _is_relu(node: fx.Node, model: nn.Module) -> bool:
    if node.op == "call_module":
        return isinstance(model.get_submodule(node.target), nn.ReLU)
    if node.op == "call_function":
        return node.target in (torch.relu, nn.functional.relu) and not node.kwargs.get("inplace")
    return node.op == "call_method" and node.target == "relu"


def _affine_module(node: fx.Node, model: nn.Module) -> nn.Module | None:
    """The ungrouped Conv or the Linear module that ``node`` calls, else None."""
    if node.op != "call_module":
        return None
    module = model.get_submodule(node.target)
    if isinstance(module, nn.Linear) or (
        isinstance(module, nn.Conv1d | nn.Conv2d) and module.groups == 1
    ):
        return module
    return None


def _through_flatten(
    node: fx.Node, model: nn.Module, after_conv: bool, bounds: dict
) -> tuple[fx.Node, str | None] | None:
    """The layer that reads a ReLU's output: ``node`` itself, or after a flatten (a
    Flatten from dimension 1, or a converted ONNX Reshape or Flatten to one dimension
    per image) that only a Linear reads; with the name of the Reshape's shape constant,
    which must change with the channels."""
    if not after_conv or node.op != "call_module":
        return node, None
    module = model.get_submodule(node.target)
    shape_constant = None
    if isinstance(module, nn.Flatten):
        if module.start_dim != 1 or module.end_dim != -1:
            return None
    elif type(module).__name__ in ("OnnxReshape", "OnnxFlatten"):
        # Row-major, as flatten: (1, C, H, W) -> (1, C*H*W) for one image.
        out = bounds.get(node.name)
        if out is None or out.center.dim() != 2 or out.center.shape[0] != 1:
            return None
        if type(module).__name__ == "OnnxReshape":
            shape_constant = _reshape_constant(node)
            if shape_constant is None:
                return None
    else:
        return node, None
    if len(node.users) != 1:
        return None
    reader = next(iter(node.users))
    if reader.op == "call_module" and isinstance(model.get_submodule(reader.target), nn.Linear):
        return reader, shape_constant
    return None


def _reshape_constant(node: fx.Node) -> str | None:
    """The name of the constant that gives a Reshape its target shape, if only this
    node reads it (it will change)."""
    shape = node.args[1] if len(node.args) > 1 else None
    if not (isinstance(shape, fx.Node) and shape.op == "get_attr"):
        return None
    readers = [n for n in node.graph.nodes if n.op == "get_attr" and n.target == shape.target]
    return str(shape.target) if len(readers) == 1 and len(shape.users) == 1 else None


def _apply(model: nn.Module, cut: _Cut) -> None:
    producer = model.get_submodule(cut.producer)
    consumer = model.get_submodule(cut.consumer)
    channels = producer.weight.shape[0]
    _set_attribute(model, cut.producer, _keep_outputs(producer, cut.live))
    _set_attribute(model, cut.consumer, _keep_inputs(consumer, cut.live, channels))
    if cut.shape_constant is not None:
        owner, name = _owner(model, cut.shape_constant)
        shape = getattr(owner, name).clone()
        if shape[-1] > 0:  # a count, not -1 (inferred) or 0 (copied)
            shape[-1] = shape[-1] // channels * len(cut.live)
        _set_attribute(model, cut.shape_constant, shape)


def _keep_outputs(layer: nn.Module, live: Tensor) -> nn.Module:
    new = copy.deepcopy(layer)
    new.weight = nn.Parameter(layer.weight.detach()[live].clone(), requires_grad=False)
    if layer.bias is not None:
        new.bias = nn.Parameter(layer.bias.detach()[live].clone(), requires_grad=False)
    if isinstance(new, nn.Linear):
        new.out_features = len(live)
    else:
        new.out_channels = len(live)
    return new


def _keep_inputs(layer: nn.Module, live: Tensor, channels: int) -> nn.Module:
    """``layer`` reading only the kept channels; a Linear after a Flatten reads each
    channel's positions as consecutive features."""
    new = copy.deepcopy(layer)
    weight = layer.weight.detach()
    if isinstance(layer, nn.Linear):
        per_channel = weight.view(weight.shape[0], channels, -1)[:, live]
        new.weight = nn.Parameter(per_channel.reshape(weight.shape[0], -1).clone())
        new.in_features = new.weight.shape[1]
    else:
        new.weight = nn.Parameter(weight[:, live].clone())
        new.in_channels = len(live)
    new.weight.requires_grad_(False)
    return new


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The module that holds the dotted attribute ``name``, and its last part."""
    parent, _, child = name.rpartition(".")
    return (model.get_submodule(parent) if parent else model), child


def _set_attribute(model: nn.Module, name: str, value: nn.Module | Tensor) -> None:
    """Replace a submodule or a buffer given by its dotted name."""
    owner, child = _owner(model, name)
    setattr(owner, child, value)
