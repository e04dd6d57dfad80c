"""Clean, PGD and verified error of a model on a slice of a data set.

``evaluate`` computes per-sample outcomes (clean prediction, PGD result, margin lower
bound per bound method), and ``summarize`` aggregates them. ``check_consistency``
enforces what must hold for sound bounds: a verified sample is classified correctly
and was not attacked successfully. The CLI and the training loop both use this module.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from certify.attack import PGDConfig, pgd_attack
from certify.bounds import BoundMethod, MarginBounder
from certify.errors import SoundnessError, UsageError

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]
"""Called as ``progress(stage, images_just_done, images_in_stage)`` after every batch."""


@dataclass(frozen=True)
class EvalConfig:
    eps: float
    methods: tuple[BoundMethod, ...] = tuple(BoundMethod)
    pgd: PGDConfig = PGDConfig()
    batch_size: int = 256
    # CROWN back-substitutes through every layer for every ReLU layer: its memory grows
    # far faster than IBP's, so it gets smaller chunks.
    crown_batch_size: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        check_batch_sizes(self.batch_size, self.crown_batch_size)


def check_batch_sizes(batch_size: int, crown_batch_size: int) -> None:
    if batch_size < 1 or crown_batch_size < 1:
        raise UsageError("--batch-size and --crown-batch-size must be at least 1")


@dataclass
class SampleOutcomes:
    """Per-sample results, one entry per image, all on the CPU."""

    indices: torch.Tensor
    labels: torch.Tensor
    clean_pred: torch.Tensor
    pgd_robust: torch.Tensor
    margin_lower: dict[BoundMethod, torch.Tensor] = field(default_factory=dict)

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

        return SampleOutcomes(
            indices=indices[order],
            labels=cat([p.labels for p in parts]),
            clean_pred=cat([p.clean_pred for p in parts]),
            pgd_robust=cat([p.pgd_robust for p in parts]),
            margin_lower={
                m: cat([p.margin_lower[m] for p in parts]) for m in parts[0].margin_lower
            },
        )

    def verified_any(self) -> torch.Tensor:
        result = torch.zeros_like(self.pgd_robust)
        for method in self.margin_lower:
            result |= self.verified(method)
        return result


@dataclass
class EvalSummary:
    num_samples: int
    clean_error: float
    pgd_error: float
    verified_error: dict[BoundMethod, float]
    best_verified_error: float
    seconds: dict[str, float]


def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    config: EvalConfig,
    device: torch.device,
    first_index: int = 0,
    progress: ProgressFn | None = None,
) -> tuple[SampleOutcomes, dict[str, float]]:
    """Run the clean pass, PGD and every bound method; return outcomes and seconds per stage."""
    model = model.eval().to(device)
    seconds = {"clean": 0.0, "pgd": 0.0} | {m.value: 0.0 for m in config.methods}
    preds, robust = [], []

    def clean_and_pgd(start: int, stop: int) -> None:
        x, y = images[start:stop].to(device), labels[start:stop].to(device)
        t0 = time.perf_counter()
        with torch.no_grad():
            pred = model(x).argmax(dim=1).cpu()
        t1 = _sync_elapsed(t0, device)
        index = torch.arange(first_index + start, first_index + stop)
        t0 = time.perf_counter()
        attacked = pgd_attack(model, x, y, config.eps, config.pgd, config.seed, index)[0].cpu()
        # Only a chunk that completes counts: one that ran out of memory is redone.
        seconds["clean"] += t1
        seconds["pgd"] += _sync_elapsed(t0, device)
        preds.append(pred)
        robust.append(attacked)
        _report(progress, "clean+pgd", stop - start, len(images))

    _in_chunks(len(images), config.batch_size, "clean+pgd", clean_and_pgd)
    outcomes = SampleOutcomes(
        indices=torch.arange(first_index, first_index + len(images)),
        labels=labels.cpu(),
        clean_pred=torch.cat(preds),
        pgd_robust=torch.cat(robust),
    )
    if config.methods:
        bounder = MarginBounder(model, tuple(images.shape[1:]), device)
        for method in config.methods:
            t0 = time.perf_counter()
            outcomes.margin_lower[method] = _bound_all(
                bounder, images, labels, config, method, progress
            )
            seconds[method.value] += _sync_elapsed(t0, device)
    return outcomes, seconds


def _bound_all(
    bounder: MarginBounder,
    images: torch.Tensor,
    labels: torch.Tensor,
    config: EvalConfig,
    method: BoundMethod,
    progress: ProgressFn | None,
) -> torch.Tensor:
    """Minimum margin lower bound per sample, bounding in chunks that fit in memory."""
    chunk = config.crown_batch_size if method is BoundMethod.CROWN else config.batch_size
    stage = f"{method.value} (chunks of {chunk})"
    results = []

    def bound(start: int, stop: int) -> None:
        lower = bounder.lower_bounds(images[start:stop], labels[start:stop], config.eps, method)
        results.append(lower.min(dim=1).values.cpu())
        _report(progress, stage, stop - start, len(images))

    _in_chunks(len(images), chunk, method.value, bound)
    return torch.cat(results)


def _in_chunks(total: int, chunk: int, what: str, step: Callable[[int, int], None]) -> None:
    """Call ``step(start, stop)`` over ``[0, total)``; on running out of GPU memory, halve
    the chunk, say so, and redo the chunk that failed."""
    start = 0
    while start < total:
        stop = min(start + chunk, total)
        try:
            step(start, stop)
        except torch.OutOfMemoryError:
            if chunk == 1:
                raise
            chunk = max(1, chunk // 2)
            log.warning("%s ran out of GPU memory; going on with %d images at a time", what, chunk)
            torch.cuda.empty_cache()
            continue
        start = stop


def _report(progress: ProgressFn | None, stage: str, done: int, total: int) -> None:
    if progress is not None:
        progress(stage, done, total)


def _sync_elapsed(t0: float, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def summarize(outcomes: SampleOutcomes, seconds: dict[str, float]) -> EvalSummary:
    n = len(outcomes.labels)
    if n == 0:
        raise UsageError("no samples were evaluated")
    clean_err = 1.0 - outcomes.clean_correct.float().mean().item()
    pgd_err = 1.0 - outcomes.pgd_robust.float().mean().item()
    verified = {m: 1.0 - outcomes.verified(m).float().mean().item() for m in outcomes.margin_lower}
    best = 1.0 - outcomes.verified_any().float().mean().item() if verified else float("nan")
    return EvalSummary(n, clean_err, pgd_err, verified, best, dict(seconds))


def check_consistency(outcomes: SampleOutcomes) -> None:
    """Raise SoundnessError if any verified sample is misclassified or was attacked.

    This also guarantees clean <= PGD <= verified error for every method.
    """
    attacked_but_clean_wrong = ~outcomes.clean_correct & outcomes.pgd_robust
    _fail_on(attacked_but_clean_wrong, outcomes, "is misclassified but PGD counted it robust")
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
            f"soundness check failed: sample {shown} {what}; the bounds or the model "
            "conversion are wrong, please report this with the model file"
        )
