"""Each image's own unstable neurons as the rows of alpha-CROWN's intermediate bounds.

alpha-CROWN (:mod:`certify.bounds.alpha_crown`) recomputes the bounds of every neuron
that enters a ReLU at each of its steps, by a backward pass from that neuron. Only a
ReLU's *unstable* neurons (lower bound < 0 < upper bound) need it: a stable one is
relaxed exactly (as the identity or as zero) whatever its bound, so its bound has no
effect on anything after it. auto_LiRPA 0.3 bounds every neuron of the layer (as a
matrix, or as patches for a convolution), or, with its sparse intermediate bounds, the
neurons unstable in *some* image of the batch: in a batch of tens of images that is
nearly all of them, and each image pays for the others'.

Here a layer can instead be bounded from a per-image specification: one row per neuron
unstable *in that image*, padded to the batch's largest count with stable ones. Each row
takes the slopes auto_LiRPA would have used for its neuron (per neuron, or shared by the
neurons of one output channel), so every bound that matters is what the full layer would
give, and an image's bounds do not depend on its batch. Rows are used where they cost
less than the layer's own specification.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from math import prod
from typing import Any

import torch
from torch import Tensor

# Rows must save a good part of the work to be worth a specification of their own.
_WORTH = 0.9


@dataclass
class UnstableRows:
    """The layers bounded from rows: ``picked[layer]`` is a ``(batch, k)`` index of its
    neurons. Where a ReLU keeps one set of slopes per neuron of a layer, it keeps one per
    row instead (the same slopes: rows are distinct neurons); ``own_slopes`` holds those
    ``(relu, layer)`` names."""

    picked: dict[str, Tensor]
    own_slopes: set[tuple[str, str]] = field(default_factory=set)

    def start_nodes(self, relu: Any, starts: list[tuple]) -> list[tuple]:
        """auto_LiRPA's alpha start nodes ``(layer, shape, unstable_idx)`` of ``relu``,
        with one set of slopes per row where it would keep one per neuron."""
        resized = []
        for name, shape, idx in starts:
            if name in self.picked and isinstance(shape, (tuple, list, torch.Size)):
                self.own_slopes.add((relu.name, name))
                resized.append((name, self.picked[name].shape[1], None))
            else:
                resized.append((name, shape, idx))
        return resized


def unstable_rows(module: Any, relus: list[Any]) -> UnstableRows:
    """For the layers that enter ``relus`` (nodes of ``module``, right after a CROWN pass
    that left sound bounds on every layer and recorded the patches it used), the rows
    of those that are cheaper to bound from rows: a ``(batch, k)`` index of the layer's
    neurons, each image's unstable ones first, ``k`` the batch's largest count (at
    least one).

    The cost of a backward pass from a layer is counted as the number of coefficients
    it holds at each ReLU it reaches: rows hold ``k`` per neuron of that ReLU; the
    layer's own specification holds its patches where it reached the ReLU as patches,
    and one row per neuron of the layer where as a matrix."""
    rows = {}
    for node in {relu.inputs[0].name: relu.inputs[0] for relu in relus}.values():
        reached = [
            relu for relu in relus
            if any(start.name == node.name for start in module.backward_from[relu.name])
        ]  # fmt: skip
        if not reached:
            continue
        lower, upper = node.lower.detach().flatten(1), node.upper.detach().flatten(1)
        unstable = (lower < 0) & (upper > 0)
        k = max(1, int(unstable.sum(1).max()))
        as_rows = as_layer = 0
        for relu in reached:
            width = prod(relu.inputs[0].output_shape[1:])
            as_rows += k * width
            patches = relu.patch_size.get(node.name)
            if patches is None:
                as_layer += unstable.shape[1] * width
            else:  # (out_c, batch, out_h, out_w, in_c, h, w)
                as_layer += prod(patches) // patches[1]
        if as_rows > _WORTH * as_layer:
            continue
        # A stable sort keeps each image's rows in neuron order.
        order = torch.sort(unstable.to(torch.int8), dim=1, descending=True, stable=True)[1]
        rows[node.name] = order[:, :k].contiguous()
    return UnstableRows(rows)


@contextmanager
def rows_as_specification(module: Any, unstable: UnstableRows) -> Iterator[None]:
    """While open, ``module`` bounds each layer in ``rows`` from its rows only and puts
    the results in place of the reference bounds it is given (``aux_reference_bounds``;
    its ``sparse_intermediate_bounds`` option is on meanwhile). Other layers are bounded
    as before. Its ReLUs' slopes must be set (alpha-CROWN's "opt" stage)."""
    cls, rows = type(module), unstable.picked
    # The dtype the layer computes in (that of its bounds), which is that of the weights
    # the specification is multiplied with.
    dtypes = {name: module[name].lower.dtype for name in rows}

    def get_sparse_C(node: Any, *args: Any, **kwargs: Any) -> Any:
        picked = rows.get(node.name)
        if picked is None:
            return cls.get_sparse_C(module, node, *args, **kwargs)
        batch, k = picked.shape
        spec = torch.zeros(
            batch, k, prod(node.output_shape[1:]), dtype=dtypes[node.name], device=picked.device
        )
        spec.scatter_(2, picked.unsqueeze(2), 1.0)
        # A plain per-image specification, as a margin's; the ReLUs learn each row's
        # neuron from their own bound_backward below.
        return spec.view(batch, k, *node.output_shape[1:]), True, None, k

    def restore_sparse_bounds(
        node: Any, unstable_idx: Any, unstable_size: Any, ref_lower: Tensor, ref_upper: Tensor,
        new_lower: Tensor | None = None, new_upper: Tensor | None = None,
    ) -> None:  # fmt: skip
        picked = rows.get(node.name)
        if picked is None:
            cls.restore_sparse_bounds(
                module, node, unstable_idx, unstable_size, ref_lower, ref_upper,
                new_lower, new_upper,
            )  # fmt: skip
            return
        found_lower = node.lower if new_lower is None else new_lower
        found_upper = node.upper if new_upper is None else new_upper
        shape = (len(picked), *node.output_shape[1:])
        node.lower = ref_lower.detach().flatten(1).scatter(1, picked, found_lower).view(shape)
        node.upper = ref_upper.detach().flatten(1).scatter(1, picked, found_upper).view(shape)

    relus = [node for node in module.optimizable_activations if hasattr(node, "alpha")]
    sparse_before = module.bound_opts.get("sparse_intermediate_bounds", False)
    module.get_sparse_C = get_sparse_C
    module.restore_sparse_bounds = restore_sparse_bounds
    for relu in relus:
        relu.bound_backward = _slopes_of_rows(relu, unstable)
    module.bound_opts["sparse_intermediate_bounds"] = True
    try:
        yield
    finally:
        del module.get_sparse_C, module.restore_sparse_bounds
        for relu in relus:
            del relu.bound_backward
        module.bound_opts["sparse_intermediate_bounds"] = sparse_before


def _slopes_of_rows(relu: Any, unstable: UnstableRows) -> Any:
    """``relu``'s bound_backward, which for a backward pass from rows tells it which of
    its slopes each row takes: its own set where it has one per row, else a
    ``(rows, batch)`` ``unstable_idx`` that selects per image from auto_LiRPA's slopes
    (indexed by neuron, or by output channel where shared per channel)."""
    original = type(relu).bound_backward
    index: dict[str, Tensor | None] = {}

    def bound_backward(*args: Any, start_node: Any = None, **kwargs: Any) -> Any:
        picked = None if start_node is None else unstable.picked.get(start_node.name)
        if picked is not None:
            if start_node.name not in index:
                own = (relu.name, start_node.name) in unstable.own_slopes
                index[start_node.name] = None if own else _slope_index(relu, start_node, picked)
            kwargs["unstable_idx"] = index[start_node.name]
        return original(relu, *args, start_node=start_node, **kwargs)

    return bound_backward


def _slope_index(relu: Any, start: Any, picked: Tensor) -> Tensor:
    """The index into ``relu``'s slopes for ``start`` of each row of ``picked``, as
    ``(rows, batch)``."""
    shape = start.output_shape[1:]
    sets = relu.alpha[start.name].shape[1]
    if sets == 1 or sets == prod(shape):  # shared by all neurons (then unused), or per neuron
        return picked.t().contiguous()
    if sets == shape[0]:  # one set per output channel of a convolution
        return (picked // prod(shape[1:])).t().contiguous()
    raise ValueError(f"{relu.name} has {sets} sets of slopes for {start.name} of shape {shape}")
