"""Per-image outcomes of an evaluation, their summary and their consistency check.

:class:`SampleOutcomes` holds, per image, the clean prediction, the PGD result and the
smallest margin lower bound of each bound method; :func:`summarize` turns them into
error rates. :func:`check_consistency` enforces what must hold for sound bounds: a
verified image is classified correctly and was not attacked successfully.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction

import torch

from certify.bounds.bab import BabVerdict
from certify.bounds.methods import BoundMethod
from certify.core.errors import SoundnessError, UsageError
from certify.evaluation.counterexamples import Counterexample
from certify.evaluation.modes import EvalMode

# The stage name of the attack in a cascade's ``decided_by``; the others are "clean" and
# the bound methods' names.
PGD_STAGE = "pgd"


@dataclass
class SampleOutcomes:
    """Per-sample results, one entry per image, all on the CPU.

    ``margin_lower[m]`` is the smallest margin lower bound of method ``m`` (NaN where the
    cascade did not run ``m`` on the image). ``pgd_run`` says where PGD ran (None: on
    every image); where it did not, ``pgd_robust`` follows from the image's verdict, a
    verified image being robust. ``decided_by`` names, in a cascade, the stage that
    decided each image ("clean", a method, "pgd"), or "" for one left open.
    """

    indices: torch.Tensor
    labels: torch.Tensor
    clean_pred: torch.Tensor
    pgd_robust: torch.Tensor
    margin_lower: dict[BoundMethod, torch.Tensor] = field(default_factory=dict)
    pgd_run: torch.Tensor | None = None
    decided_by: list[str] | None = None
    # Branch and bound, where it ran: its verdict per image ("" where it did not run),
    # seconds, and the confirmed counterexamples by data set index.
    bab_verdict: list[str] | None = None
    bab_seconds: torch.Tensor | None = None
    counterexamples: dict[int, Counterexample] = field(default_factory=dict)
    # Certified radius per method, where asked for: the largest eps found verified.
    radius: dict[BoundMethod, torch.Tensor] = field(default_factory=dict)

    @property
    def clean_correct(self) -> torch.Tensor:
        return self.clean_pred == self.labels

    def verified(self, method: BoundMethod) -> torch.Tensor:
        """A sample is verified only if every margin lower bound is positive."""
        return self.margin_lower[method] > 0

    @staticmethod
    def concatenate(parts: Sequence[SampleOutcomes]) -> SampleOutcomes:
        """Outcomes of several slices of a data set, in data set order."""
        indices = torch.cat([p.indices for p in parts])
        order = indices.argsort()

        def cat(values: list[torch.Tensor]) -> torch.Tensor:
            return torch.cat(values)[order]

        cascade = parts[0].decided_by is not None
        decided = [d for p in parts for d in (p.decided_by or [])]
        bab = any(p.bab_verdict is not None for p in parts)
        verdicts = [v for p in parts for v in (p.bab_verdict or [""] * len(p.labels))]
        bab_seconds = [
            p.bab_seconds if p.bab_seconds is not None else torch.full((len(p.labels),), math.nan)
            for p in parts
        ]
        return SampleOutcomes(
            indices=indices[order],
            labels=cat([p.labels for p in parts]),
            clean_pred=cat([p.clean_pred for p in parts]),
            pgd_robust=cat([p.pgd_robust for p in parts]),
            margin_lower={
                m: cat([p.margin_lower[m] for p in parts]) for m in parts[0].margin_lower
            },
            pgd_run=cat([p.pgd_ran for p in parts]) if cascade else None,
            decided_by=[decided[i] for i in order.tolist()] if cascade else None,
            bab_verdict=[verdicts[i] for i in order.tolist()] if bab else None,
            bab_seconds=cat(bab_seconds) if bab else None,
            counterexamples={k: v for p in parts for k, v in p.counterexamples.items()},
            radius={m: cat([p.radius[m] for p in parts]) for m in parts[0].radius},
        )

    @property
    def pgd_ran(self) -> torch.Tensor:
        """Where PGD ran on the image."""
        if self.pgd_run is None:
            return torch.ones_like(self.pgd_robust)
        return self.pgd_run

    def verified_any(self) -> torch.Tensor:
        result = torch.zeros_like(self.pgd_robust)
        for method in self.margin_lower:
            result |= self.verified(method)
        return result


@dataclass
class EvalSummary:
    """Counts of an evaluation, and the error rates computed exactly from them.

    ``clean_wrong`` counts the misclassified images, ``pgd_attacked`` those PGD found a
    misclassified point for (the misclassified ones included: PGD error is
    ``pgd_attacked / num_samples``), ``verified[m]`` the images bound method ``m``
    verified. In a cascade, ``verified[m]`` counts the stages up to ``m`` together (the
    images that ``m`` or a cheaper method verified); with every method on every image, ``m``
    alone. ``best_verified`` counts the images any method verified. ``decided`` counts, in a
    cascade, the images each stage decided; ``checked`` the verified images that PGD
    attacked too."""

    num_samples: int
    clean_wrong: int
    pgd_attacked: int
    verified: dict[BoundMethod, int]
    best_verified: int
    seconds: dict[str, float]
    mode: EvalMode = EvalMode.EVERY_METHOD
    decided: dict[str, int] = field(default_factory=dict)
    checked: int = 0
    # Branch and bound's verdicts, counted (verified, attacked, timeout, domain-limit).
    bab: dict[str, int] = field(default_factory=dict)

    @property
    def clean_error(self) -> float:
        return _ratio(self.clean_wrong, self.num_samples)

    @property
    def pgd_error(self) -> float:
        return _ratio(self.pgd_attacked, self.num_samples)

    @property
    def verified_error(self) -> dict[BoundMethod, float]:
        n = self.num_samples
        return {m: _ratio(n - count, n) for m, count in self.verified.items()}

    @property
    def best_verified_error(self) -> float:
        if not self.verified:
            return float("nan")
        return _ratio(self.num_samples - self.best_verified, self.num_samples)


def _ratio(count: int, total: int) -> float:
    """``count / total`` rounded once from the exact fraction: 2 of 200 is 0.01, never
    float32's 0.00999999."""
    return float(Fraction(count, total))


def summarize(outcomes: SampleOutcomes, seconds: dict[str, float]) -> EvalSummary:
    n = len(outcomes.labels)
    if n == 0:
        raise UsageError("no samples were evaluated")
    cascade = outcomes.decided_by is not None
    verified: dict[BoundMethod, int] = {}
    union = torch.zeros_like(outcomes.pgd_robust)
    for method in outcomes.margin_lower:
        union = union | outcomes.verified(method)
        counted = union if cascade else outcomes.verified(method)
        verified[method] = int(counted.sum())
    summary = EvalSummary(
        num_samples=n,
        clean_wrong=int((~outcomes.clean_correct).sum()),
        pgd_attacked=int((~outcomes.pgd_robust).sum()),
        verified=verified,
        best_verified=int(outcomes.verified_any().sum()),
        seconds=dict(seconds),
        checked=int((outcomes.verified_any() & outcomes.pgd_ran).sum()),
    )
    if outcomes.bab_verdict is not None:
        summary.bab = {
            verdict.value: outcomes.bab_verdict.count(verdict.value) for verdict in BabVerdict
        }
    if cascade:
        summary.mode = EvalMode.CASCADE
        stages = dict.fromkeys(outcomes.decided_by)
        summary.decided = {s or "open": outcomes.decided_by.count(s) for s in stages}
    return summary


def check_consistency(outcomes: SampleOutcomes) -> None:
    """Raise SoundnessError if any verified sample is misclassified or was attacked.

    This also guarantees clean <= PGD <= verified error for every method.
    """
    wrong_but_pgd_robust = ~outcomes.clean_correct & outcomes.pgd_robust
    _fail_on(wrong_but_pgd_robust, outcomes, "is misclassified but PGD counted it robust")
    for method in outcomes.margin_lower:
        verified = outcomes.verified(method)
        _fail_on(
            verified & ~outcomes.clean_correct,
            outcomes,
            f"is verified by {method.value} but misclassified",
        )
        _fail_on(
            verified & ~outcomes.pgd_robust,
            outcomes,
            f"is verified by {method.value} but PGD attacked it",
        )


def _fail_on(mask: torch.Tensor, outcomes: SampleOutcomes, what: str) -> None:
    if mask.any():
        bad = outcomes.indices[mask].tolist()
        shown = ", ".join(str(i) for i in bad[:5]) + (" ..." if len(bad) > 5 else "")
        raise SoundnessError(
            f"soundness check failed: sample {shown} {what}. This is a bug (in the bounds "
            "or the model conversion), never a result: please report it with the model file"
        )
