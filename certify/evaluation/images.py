"""Evaluating a model on images in memory: clean predictions, PGD and the margin lower
bounds of each bound method, in chunks that fit in memory.

:func:`evaluate_images` returns the per-image :class:`~certify.evaluation.outcomes.SampleOutcomes`
and the seconds each stage took. It reads no files: :mod:`certify.pipeline` loads the
model and the data, and the training loop validates with its own interval pass.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from certify.bounds.margins import BoundMethod, MarginBounder
from certify.core.errors import UsageError
from certify.evaluation.attack import PGDConfig, pgd_attack
from certify.evaluation.outcomes import SampleOutcomes

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
    for name, value in (("batch_size", batch_size), ("crown_batch_size", crown_batch_size)):
        if value < 1:
            raise UsageError(f"{value} images per batch: give at least 1", param=name)


def evaluate_images(
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
