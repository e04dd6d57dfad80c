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

from certify.core.devices import exact_float32


def optimized_margins(
    module: Any, box: Any, spec: Tensor, reference: dict, iterations: int, lr: float
) -> tuple[Tensor, Tensor]:
    """Lower bounds of ``spec @ logits`` over ``box`` (auto_LiRPA's ``BoundedTensor``):
    alpha-CROWN's after ``iterations`` steps of Adam at learning rate ``lr``, and CROWN's
    from the pass that starts the slopes. Both are sound; the slopes are left on the
    module's ReLUs for the caller to read."""
    crown = _start_slopes(module, box, spec, reference)
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
    with torch.enable_grad(), exact_float32(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        lower, _ = module.compute_bounds(
            x=(box,), C=spec, method="CROWN-Optimized", bound_upper=False,
            reference_bounds=reference,
        )  # fmt: skip
    return lower.detach(), crown


def _start_slopes(module: Any, box: Any, spec: Tensor, reference: dict) -> Tensor:
    """CROWN's bounds with every intermediate bound intersected with IBP's, run in
    auto_LiRPA's "init" stage so that each ReLU records the slope CROWN chose; then one
    slope per ReLU neuron, image and neuron whose bound it enters (auto_LiRPA's
    ``init_slope`` without its own, unintersected CROWN pass)."""
    activations = module.optimizable_activations
    for node in activations:
        node.opt_init()
    with torch.no_grad(), exact_float32():
        crown, _ = module.compute_bounds(
            x=(box,), C=spec, method="backward", bound_upper=False, reference_bounds=reference
        )
    for node in activations:
        if node.used and node.perturbed:
            starts = module.get_alpha_crown_start_nodes(
                node, c=spec, final_node_name=module.final_name
            )
            node.init_opt_parameters(starts)
    return crown.detach()
