"""``certify.evaluate_sweep``: one evaluation at several radii, sharing what each radius
proves with the others, one :class:`~certify.pipeline.result.EvalResult` per eps.

The model, the images and the bounder (the traced model) are built once. The radii are
taken middle first (the median radius, then the middle of each half, and so on), and each
radius's cascade gets what the nearest radius below it attacked and what the nearest
radius above it verified (:class:`~certify.evaluation.carried.CarriedVerdicts`): those
images are decided without running the stage again, and PGD skips the images verified
above. The cheaper stages still run on every image, so each radius verifies at least
the images a separate run verifies (the same ones where a method's bound shrinks with
eps, as in the tests and benchmarks), each by the same method; for a carried image the
margin bound is the larger radius's (valid, if looser). An image the smaller radius
attacked counts as attacked even where PGD alone would have missed it at the larger
radius. With every method on every image nothing is carried. Certified radii are
searched at the largest eps only. One process only: no torchrun sharding, no journal.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from certify.bounds.margins import MarginBounder
from certify.core.datasets import Dataset
from certify.core.devices import describe_device, resolve_device
from certify.core.eps import parse_eps
from certify.core.errors import SoundnessError, UsageError
from certify.evaluation.carried import CarriedVerdicts
from certify.evaluation.config import EvalConfig, EvalMode
from certify.evaluation.images import ProgressFn, evaluate_images
from certify.evaluation.outcomes import SampleOutcomes, check_consistency, summarize
from certify.pipeline.eval_images import parse_data
from certify.pipeline.evaluate import ModelLike, load_inputs, model_name
from certify.pipeline.result import EvalResult
from certify.pipeline.settings import EvalSettings


def evaluate_sweep(
    model: ModelLike | None,
    dataset: str | os.PathLike[str] | Dataset | None,
    eps_values: Sequence[float | str],
    config: EvalConfig | None = None,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device = "auto",
    progress: ProgressFn | None = None,
    name: str | None = None,
) -> list[EvalResult]:
    """``certify.evaluate`` at each of ``eps_values`` (numbers or text such as ``"2/255"``),
    in increasing order of eps, one result each. Raises
    :class:`~certify.core.errors.SoundnessError` if any radius fails the consistency
    check."""
    config = config if config is not None else EvalConfig()
    radii = sorted({parse_eps(eps) for eps in eps_values})
    if not radii:
        raise UsageError("give at least one eps", param="eps")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError("an eps sweep runs in one process: run it without torchrun", param="eps")
    device = device if isinstance(device, torch.device) else resolve_device(device)
    source = parse_data(dataset) if dataset is not None else None
    loaded, data = load_inputs(model, source, config, data_dir)
    carry = config.mode is EvalMode.CASCADE
    # One bounder for every radius: building it (tracing the model) is not free.
    bounder = None
    if config.methods:
        shape = tuple(data.images.shape[1:])
        bounder = MarginBounder(
            loaded.model.eval().to(device), shape, device, alpha=config.alpha, bab=config.bab
        )
    done: dict[int, SampleOutcomes] = {}
    results: dict[int, EvalResult] = {}
    for k in middle_first(len(radii)):
        carried = None
        if carry:
            below = max((j for j in done if j < k), default=None)
            above = min((j for j in done if j > k), default=None)
            carried = CarriedVerdicts.between(done.get(below), done.get(above), len(data.labels))
        # Radii are searched up to the largest eps only: below it they would repeat it.
        last = k == len(radii) - 1
        at_k = config if last else dataclasses.replace(config, radius_tolerance=None)
        outcomes, seconds = evaluate_images(
            loaded.model, data.images, data.labels, radii[k], at_k, device, data.start,
            progress, carried, bounder,
        )  # fmt: skip
        done[k] = outcomes
        settings = EvalSettings(
            model=name or model_name(model, loaded),
            arch=loaded.arch,
            dataset=data.name,
            eps=radii[k],
            config=dataclasses.replace(at_k, start=data.start),
            device=describe_device(device),
            onnx_difference=loaded.conversion_difference,
        )
        results[k] = EvalResult(settings, summarize(outcomes, seconds), outcomes)
        try:
            check_consistency(outcomes)
        except SoundnessError as exc:
            exc.result = results[k]
            raise
    return [results[k] for k in range(len(radii))]


def middle_first(count: int) -> list[int]:
    """Positions ``0 .. count - 1`` with each range's middle before its halves: every
    position after the first has an evaluated neighbour below or above it."""
    order: list[int] = []
    ranges = [(0, count)]
    while ranges:
        lo, hi = ranges.pop(0)
        if lo >= hi:
            continue
        mid = (lo + hi) // 2
        order.append(mid)
        ranges += [(lo, mid), (mid + 1, hi)]
    return order


def per_eps_path(path: Path, eps_text: str) -> Path:
    """``path`` with the eps in its name (``samples.csv`` -> ``samples_eps2-255.csv``),
    for the per-image file of each radius of a sweep."""
    tag = eps_text.replace("/", "-")
    return path.with_name(f"{path.stem}_eps{tag}{path.suffix}")
