"""Robust bounds for the training loss: hand-written IBP, or auto_LiRPA's CROWN-IBP.

A bounder returns an :class:`~training.interval.IntervalResult` for a batch: the clean
logits, lower bounds of the margins and the pre-ReLU interval bounds (for the
regularizers and ReLU statistics). ``fast`` and ``vanilla`` use
:class:`IBPBounder`, which costs about as much as auto_LiRPA's IBP and gives the same
bounds; ``crown-ibp`` uses :class:`CrownIBPBounder`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from certify.errors import ModelError, first_line
from training.interval import IntervalNetwork, IntervalResult, PreActivation
from training.losses import crown_ibp_mix


class IBPBounder:
    """IBP through :class:`IntervalNetwork`; BatchNorm follows the model's own mode."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.network = IntervalNetwork(model)

    def bounds(self, x: Tensor, eps: float, spec: Tensor, max_eps: float) -> IntervalResult:
        return self.network(x, eps, spec)

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

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...], device: torch.device):
        from certify.compat.lirpa import load_auto_lirpa

        self.lirpa = load_auto_lirpa()
        self.model = model
        dummy = torch.zeros(1, *input_shape, device=device)
        with _keeps_mode(model):
            # Traced in eval mode: a train-mode trace would update the running
            # statistics with the dummy input (and BatchNorm1d refuses one sample).
            model.eval()
            try:
                self.module = self.lirpa.BoundedModule(
                    model, dummy, bound_opts={"conv_mode": "patches"}, device=device
                )
            except Exception as exc:  # auto_LiRPA raises bare exceptions
                raise ModelError(f"auto_LiRPA cannot bound this model: {first_line(exc)}") from exc
        self._batches = 0
        self.train(model.training)

    def train(self, mode: bool = True) -> None:
        # Set explicitly: the BoundedModule does not follow the model's mode.
        self.model.train(mode)
        self.module.train(mode)

    def bounds(self, x: Tensor, eps: float, spec: Tensor, max_eps: float) -> IntervalResult:
        ptb = self.lirpa.PerturbationLpNorm(
            norm=float("inf"), eps=eps, x_L=(x - eps).clamp(0, 1), x_U=(x + eps).clamp(0, 1)
        )
        bounded = self.lirpa.BoundedTensor(x, ptb)
        # One forward sets the batch statistics that both bound computations use.
        logits = self.module(bounded)
        if self.module.training:
            self._batches += 1
        ibp_lower, ibp_upper = self.module.compute_bounds(C=spec, method="IBP")
        pre_relu = self._pre_relu()
        crown_lower = None
        if (max_eps - eps) / max_eps >= 1e-5:
            crown_lower, _ = self.module.compute_bounds(
                C=spec, method="CROWN-IBP", bound_upper=False
            )
        lower = crown_ibp_mix(ibp_lower, crown_lower, eps, max_eps)
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
