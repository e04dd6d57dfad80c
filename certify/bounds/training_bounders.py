"""The bounders of certified training: hand-written IBP, or auto_LiRPA's CROWN-IBP mix.

Both follow :class:`~certify.bounds.bounder.TrainingBounder`: they return the clean
logits, lower bounds of the margins and the pre-ReLU interval bounds (for the
regularizers and ReLU statistics), and their BatchNorm layers follow the model's mode.
``fast`` and ``vanilla`` use :class:`IBPBounder`, which gives auto_LiRPA's IBP bounds;
``crown-ibp`` uses :class:`CrownIBPBounder`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from certify.bounds.interval import IntervalNetwork, IntervalResult, PreActivation
from certify.bounds.lirpa import TRAINING_OPTIONS, bounded_module, perturbed


class IBPBounder:
    """IBP through :class:`IntervalNetwork`; BatchNorm follows the model's own mode."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.network = IntervalNetwork(model)

    def bounds(self, x: Tensor, eps: float, spec: Tensor) -> IntervalResult:
        return self.network(x, eps, spec)

    def bounds_at(
        self,
        points: Tensor,
        lower: Tensor,
        upper: Tensor,
        spec: Tensor,
        update_running: bool = True,
    ) -> IntervalResult:
        """Logits at ``points`` and IBP bounds over the box ``[lower, upper]``, BatchNorm
        in train mode normalizing both with the statistics of ``points`` (a training
        loss may take another batch's statistics than the box's centres'), and moving
        its running statistics with them unless not ``update_running``."""
        return self.network.box_bounds(points, lower, upper, spec, update_running)

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)

    def sync(self) -> None:
        """Nothing to do: the model's own layers ran."""


class CrownIBPBounder:
    """beta * CROWN-IBP + (1 - beta) * IBP margin bounds with auto_LiRPA.

    auto_LiRPA 0.3 keeps copies of BatchNorm's running statistics inside the
    ``BoundedModule`` and never counts batches; :meth:`sync` copies them back into the
    model, and must run before the model is evaluated or saved.
    """

    def __init__(
        self, model: nn.Module, input_shape: tuple[int, ...], device: torch.device, max_eps: float
    ) -> None:
        self.model = model
        self.max_eps = max_eps
        with _keeps_mode(model):
            # Traced in eval mode: a train-mode trace would update the running
            # statistics with the dummy input (and BatchNorm1d refuses one sample).
            model.eval()
            self.module = bounded_module(model, input_shape, device, TRAINING_OPTIONS)
        self._batches = 0
        self.train(model.training)

    def train(self, mode: bool = True) -> None:
        # Set explicitly: the BoundedModule does not follow the model's mode.
        self.model.train(mode)
        self.module.train(mode)

    def bounds(self, x: Tensor, eps: float, spec: Tensor) -> IntervalResult:
        bounded = perturbed(x, eps)
        # One forward sets the batch statistics that both bound computations use.
        logits = self.module(bounded)
        if self.module.training:
            self._batches += 1
        ibp_lower, ibp_upper = self.module.compute_bounds(C=spec, method="IBP")
        pre_relu = self._pre_relu()
        crown_lower = None
        if (self.max_eps - eps) / self.max_eps >= 1e-5:
            crown_lower, _ = self.module.compute_bounds(
                C=spec, method="CROWN-IBP", bound_upper=False
            )
        lower = crown_ibp_mix(ibp_lower, crown_lower, eps, self.max_eps)
        return IntervalResult(logits, lower, ibp_upper, pre_relu, None)

    def _pre_relu(self) -> list[PreActivation]:
        found = []
        for node in self.module._modules.values():
            if type(node).__name__ == "BoundRelu":
                source = node.inputs[0]
                found.append(PreActivation.from_box(source.lower, source.upper))
        return found

    @torch.no_grad()
    def sync(self) -> None:
        """Copy the running statistics (and the batch count) back into the model."""
        for node in self.module._modules.values():
            name = getattr(node, "ori_name", None)
            if type(node).__name__ != "BoundBuffers" or not name:
                continue
            if name.endswith(("running_mean", "running_var")):
                self.model.get_buffer(name).copy_(node.buffer)
        for module in self.model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
                module.num_batches_tracked.add_(self._batches)
        self._batches = 0


@contextmanager
def _keeps_mode(model: nn.Module) -> Iterator[None]:
    """Restore every module's mode: building a BoundedModule can change them."""
    modes = {m: m.training for m in model.modules()}
    try:
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode


def crown_ibp_mix(
    ibp_lower: Tensor, crown_lower: Tensor | None, eps: float, max_eps: float
) -> Tensor:
    """beta * CROWN-IBP + (1 - beta) * IBP with beta = (eps_max - eps) / eps_max."""
    beta = (max_eps - eps) / max_eps if max_eps > 0 else 0.0
    if crown_lower is None or beta < 1e-5:
        return ibp_lower
    return beta * crown_lower + (1 - beta) * ibp_lower
