"""alpha-CROWN by auto_LiRPA 0.3's ``CROWN-Optimized``, set up the way certify needs it.

Evaluation's ``alpha-crown`` method (:class:`~certify.bounds.bounder.AlphaCrownBounder`)
and the root of branch and bound (:mod:`certify.bounds.bab.beta_crown`) both call
:func:`optimized_margins`. It differs from a plain ``compute_bounds(method=
"CROWN-Optimized")`` in three ways:

- every intermediate bound, in the starting CROWN pass and in each step, is intersected
  with the neuron's IBP bound (``reference``);
- the slopes start from CROWN's choice over those intersected bounds, and that CROWN pass
  is the one that starts them (auto_LiRPA would run a second one without IBP's bounds);
- the number of steps is fixed and the best bound is kept per margin, so each image's
  bound is the same in any batch.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from certify.bounds.unstable_rows import UnstableRows, rows_as_specification, unstable_rows
from certify.core.devices import exact_float32


def optimized_margins(
    module: Any, box: Any, spec: Tensor, reference: dict, iterations: int, lr: float
) -> tuple[Tensor, Tensor]:
    """Lower bounds of ``spec @ logits`` over ``box`` (auto_LiRPA's ``BoundedTensor``):
    alpha-CROWN's after ``iterations`` steps of Adam at learning rate ``lr``, and CROWN's
    from the pass that starts the slopes. Both are sound; the slopes are left on the
    module's ReLUs for the caller to read."""
    crown, tight, rows = _start_slopes(module, box, spec, reference)
    module.set_bound_opts(
        {
            "optimize_bound_args": {
                "iteration": iterations,
                "lr_alpha": lr,
                "early_stop_patience": iterations + 1,
                "keep_best": True,
                "init_alpha": False,
                "enable_beta_crown": False,
            }
        }
    )
    # The slopes are optimized by gradient descent; the network's weights stay fixed.
    # auto_LiRPA 0.3 steps its learning-rate schedule first, which torch warns about.
    with (
        torch.enable_grad(),
        exact_float32(),
        warnings.catch_warnings(),
        rows_as_specification(module, rows),
    ):
        warnings.simplefilter("ignore", UserWarning)
        lower, _ = module.compute_bounds(
            x=(box,), C=spec, method="CROWN-Optimized", bound_upper=False,
            reference_bounds=tight, aux_reference_bounds=tight,
        )  # fmt: skip
    return lower.detach(), crown


def _start_slopes(
    module: Any, box: Any, spec: Tensor, reference: dict
) -> tuple[Tensor, dict, UnstableRows]:
    """CROWN's bounds with every intermediate bound intersected with IBP's, run in
    auto_LiRPA's "init" stage so that each ReLU records the slope CROWN chose; then one
    slope per ReLU neuron, image and neuron whose bound it enters (auto_LiRPA's
    ``init_slope`` without its own, unintersected CROWN pass). Returns CROWN's margin
    bounds, ``reference`` with the bounds of that pass for the neurons that enter a
    ReLU, and the layers to bound from rows (:mod:`certify.bounds.unstable_rows`)."""
    activations = module.optimizable_activations
    for node in activations:
        node.opt_init()
    with torch.no_grad(), exact_float32():
        crown, _ = module.compute_bounds(
            x=(box,), C=spec, method="backward", bound_upper=False, reference_bounds=reference
        )
    used = [node for node in activations if node.used and node.perturbed]
    pre_activations = {node.inputs[0].name: node.inputs[0] for node in used}
    # Those bounds are sound and at least as tight as IBP's: each step of alpha-CROWN
    # keeps the tighter of them and its own, so a neuron stable after CROWN stays so.
    tight = dict(reference)
    for name, node in pre_activations.items():
        tight[name] = (node.lower.detach(), node.upper.detach())
    rows = unstable_rows(module, used)
    for node in used:
        starts = module.get_alpha_crown_start_nodes(node, c=spec, final_node_name=module.final_name)
        node.init_opt_parameters(rows.start_nodes(node, starts))
    return crown.detach(), tight, rows
