"""What a training method with an attack computes for one chunk of a batch.

``fast``, ``vanilla`` and ``crown-ibp`` take their loss from one bound computation
(:func:`training.loop.chunk_loss`). The methods that first search for an adversarial
point (:mod:`training.expressive`, :mod:`training.sabr`, :mod:`training.taps`) are each an
:class:`AttackObjective`: given the chunk, its eps, a seed per image for its random
starts and whether the eps warmup is on, it returns :class:`Terms`, and the epoch loop
adds the warmup regularizers and keeps the statistics. :mod:`training.objectives` maps
each method to its objective and options.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from torch import Tensor, nn

from certify.bounds.interval import IntervalResult
from certify.bounds.training_bounders import IBPBounder


@dataclass
class Terms:
    """One chunk's loss; the bound computation whose pre-ReLU intervals the warmup
    regularizers and the ReLU statistics read; the clean logits; and means over the
    chunk of what the log keeps (``robust_ce``, ``verified_err``, ...)."""

    loss: Tensor
    result: IntervalResult
    clean_logits: Tensor
    stats: dict[str, float] = field(default_factory=dict)


class AttackObjective(Protocol):
    def terms(
        self,
        model: nn.Module,
        bounder: IBPBounder,
        x: Tensor,
        y: Tensor,
        eps: float,
        spec: Tensor,
        seeds: Tensor,
        warmup: bool,
    ) -> Terms: ...

    def settings(self) -> dict[str, float | int]:
        """Its options, by the names of :class:`~training.config.TrainConfig`'s fields."""
        ...

    def check(self, model: nn.Module) -> None:
        """Refuses (``UsageError``) a model it cannot train, before any training."""
        ...
