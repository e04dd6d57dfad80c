"""What one radius of an eps sweep tells another: :class:`CarriedVerdicts`.

The balls of one image are nested: B(x, e) lies inside B(x, e') for e < e'. So a point
that fools the model inside the smaller ball (a PGD point, a confirmed counterexample)
fools it inside every larger one, and a bound that proves every margin positive over the
larger ball proves it over every smaller one (the larger ball's margin lower bound is a
valid lower bound over the smaller). An eps sweep (:mod:`certify.pipeline.sweep`) hands
the cascade of one radius what the nearest smaller radius attacked and what the nearest
larger radius verified, and the cascade decides those images without running the stage
again.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from certify.bounds.methods import BoundMethod
from certify.evaluation.outcomes import SampleOutcomes


@dataclass(frozen=True)
class CarriedVerdicts:
    """Per image of a batch: ``attacked`` at a smaller eps (so at this one too), and the
    method that verified it at a larger eps (None where none did) with that method's
    margin lower bound there."""

    attacked: torch.Tensor
    verified_by: list[BoundMethod | None]
    margin: torch.Tensor

    @staticmethod
    def between(
        smaller: SampleOutcomes | None, larger: SampleOutcomes | None, count: int
    ) -> CarriedVerdicts:
        """What the outcomes at a smaller and at a larger eps (either may be None) tell
        the eps between them, for the same ``count`` images in the same order."""
        attacked = torch.zeros(count, dtype=torch.bool)
        if smaller is not None:
            attacked = smaller.clean_correct & ~smaller.pgd_robust
        verified_by: list[BoundMethod | None] = [None] * count
        margin = torch.full((count,), float("nan"))
        if larger is not None and larger.decided_by is not None:
            methods = {m.value: m for m in BoundMethod}
            verified = larger.verified_any().tolist()
            for i, stage in enumerate(larger.decided_by):
                if stage in methods and verified[i]:
                    verified_by[i] = methods[stage]
                    margin[i] = larger.margin_lower[methods[stage]][i]
        return CarriedVerdicts(attacked, verified_by, margin)

    def subset(self, which: torch.Tensor) -> CarriedVerdicts:
        """The verdicts of images ``which`` (positions), in that order."""
        positions = which.tolist()
        return CarriedVerdicts(
            self.attacked[which], [self.verified_by[i] for i in positions], self.margin[which]
        )
