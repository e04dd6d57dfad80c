"""``certify.evaluate``: one evaluation from a model and a few arguments to an
:class:`~certify.pipeline.result.EvalResult`.

Everything that can be checked cheaply (eps, methods, sizes, normalization, device) is
checked before any model or data is loaded, so that bad input fails fast; an argument
at fault raises :class:`~certify.core.errors.UsageError` with its name in ``param``.
Then the model (a file, or any ``nn.Module``) and the test slice are loaded, the images
are shared out among the processes of a ``torchrun`` job, evaluated, gathered on rank 0
and checked for soundness. The result is returned, not printed or written: that is the
caller's (the CLI's, or the training run's) business.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from certify.bounds.bab import BabLimits, BabOptions, Branching
from certify.bounds.margins import AlphaCrownOptions, BoundMethod, parse_methods
from certify.bounds.methods import DEFAULT_METHODS
from certify.core.choices import parse_choice
from certify.core.datasets import Dataset, get_spec, parse_dataset
from certify.core.devices import describe_device, resolve_device
from certify.core.eps import format_eps, parse_eps
from certify.core.errors import ModelError, SoundnessError, UsageError, first_line
from certify.core.shard import device_for, gather, leave, merge_seconds, shard_from_environment
from certify.core.version import __version__
from certify.data import default_data_dir, load_split
from certify.evaluation.attack import PGDConfig, parse_losses
from certify.evaluation.images import (
    DEFAULT_PGD,
    EvalConfig,
    EvalMode,
    ProgressFn,
    check_batch_sizes,
    evaluate_images,
)
from certify.evaluation.outcomes import SampleOutcomes, check_consistency, summarize
from certify.pipeline.embedded import EMBEDDED_DATA, EMBEDDED_MODEL
from certify.pipeline.journal import Journal
from certify.pipeline.result import EvalResult
from model_zoo import LoadedModel, load_model
from model_zoo.normalization import NormalizedModel

# Data images that onnxruntime runs too, to check the conversion of an ONNX file.
_CONVERSION_PROBES = 8


def evaluate(
    model: str | os.PathLike[str] | nn.Module | None = None,
    *,
    dataset: str | Dataset | None = None,
    eps: float | str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    methods: str | Sequence[str | BoundMethod] = DEFAULT_METHODS,
    num_samples: int | None = None,
    start: int = 0,
    batch_size: int = 256,
    crown_batch_size: int | None = None,
    device: str | torch.device = "auto",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    arch: str | None = None,
    num_classes: int | None = None,
    pgd_steps: int = 100,
    pgd_restarts: int | None = None,
    pgd_loss: str | None = None,
    every_method: bool = False,
    check_all: bool = False,
    alpha_iterations: int = AlphaCrownOptions.iterations,
    alpha_lr: float = AlphaCrownOptions.lr,
    timeout: float = BabLimits.timeout,
    max_domains: int = BabLimits.max_domains,
    branching: str | Branching = Branching.FSB,
    bab_batch: int | None = None,
    seed: int = 0,
    name: str | None = None,
    progress: ProgressFn | None = None,
    journal: str | os.PathLike[str] | None = None,
    resume: bool = False,
) -> EvalResult | None:
    """Clean, PGD and verified error of ``model`` on test images ``[start, start + num_samples)``.

    ``model`` is a checkpoint or ONNX file (default: the bundled MNIST model) or any
    ``nn.Module`` that takes pixel images in [0, 1]: its normalization inside it, or given
    as ``mean``/``std``. A module is put in eval mode and moved to ``device``.
    ``dataset`` and ``eps`` (pixel space, ``8/255`` or a number) default to what the
    checkpoint records; ``arch`` and ``num_classes`` are for checkpoints that do not say
    them (for a module, ``arch`` only names it in the results, as ``name`` does).
    ``data_dir`` defaults to ``$CERTIFY_DATA``, else ``./data`` (for the bundled model on
    MNIST, to the images that ship with it). ``progress(stage, done, total)`` is called
    after every batch.

    By default each image is decided by the cheapest stage that can (a cascade: the clean
    prediction, IBP, CROWN-IBP, PGD, CROWN, alpha-CROWN, of the ``methods`` named), and
    a sample of the verified images is attacked as a check (``check_all``: every one);
    ``every_method`` runs each method and PGD on every image instead. PGD takes
    ``pgd_steps`` steps from ``pgd_restarts`` random starts per loss (``pgd_loss``:
    margin, ce or both); the defaults depend on the mode
    (:data:`~certify.evaluation.images.DEFAULT_PGD`). alpha-CROWN optimizes its slopes
    for ``alpha_iterations`` steps at learning rate ``alpha_lr``. The ``bab`` method
    (complete verification by branch and bound, after alpha-CROWN) gives up on an image
    after ``timeout`` seconds or before a round would bound more than ``max_domains``
    subdomains, branching with ``branching`` (``fsb`` or ``babsr``) on ``bab_batch``
    subdomains at once (None: as many as fit in memory).

    With ``journal`` (a file), each slice of images is appended to it as soon as it is
    decided; ``resume`` takes the slices an earlier run with the same settings left there
    and evaluates only the rest (:mod:`certify.pipeline.journal`).

    Raises :class:`~certify.core.errors.SoundnessError` if a verified image was
    misclassified or attacked. Under ``torchrun`` each process evaluates its shard of the
    images; rank 0 returns the merged result and the other processes return None.
    """
    mode = EvalMode.EVERY_METHOD if every_method else EvalMode.CASCADE
    # PGD's random starts mix the seed with each image's index into torch's 64-bit seed.
    if not 0 <= seed < 2**32:
        raise UsageError(f"{seed}: give a seed from 0 to 2**32 - 1", param="seed")
    args = _checked_arguments(
        eps, methods, num_samples, start, batch_size, crown_batch_size, mean, std, device,
    )  # fmt: skip
    pgd = _attack(mode, pgd_steps, pgd_restarts, pgd_loss)
    alpha = AlphaCrownOptions(alpha_iterations, alpha_lr)
    bab = BabOptions(
        BabLimits(float(timeout), max_domains),
        parse_choice(Branching, branching, param="branching", what="heuristic"),
        bab_batch,
    )
    loaded, source = _load(model, arch, dataset, num_classes, args.mean, args.std)
    if dataset is None and loaded.dataset is None:
        raise UsageError(f"{source} does not say its data set: give one", param="dataset")
    chosen = parse_dataset(dataset or loaded.dataset)
    eps_value = args.eps if args.eps is not None else loaded.eps
    if eps_value is None:
        raise UsageError(f"{source} does not say its eps: give one, e.g. 8/255", param="eps")
    folder = Path(data_dir).expanduser() if data_dir else _data_dir(model, chosen)
    data = load_split(chosen, folder, "test", start, num_samples)
    _check_input_shape(loaded.model, data.images, chosen, source)
    if loaded.conversion_difference is not None:
        # Also the images at hand, against the original graph: a converter bug that only
        # shows on real images must not go unseen. Imported here: onnx and onnxruntime
        # load slowly, and only ONNX models need them.
        from model_zoo.onnx.check import check_conversion

        on_data = check_conversion(
            loaded.model, Path(model), loaded.input_shape, mean=loaded.mean, std=loaded.std,
            images=data.images[:_CONVERSION_PROBES],
        )  # fmt: skip
        loaded.conversion_difference = max(loaded.conversion_difference, on_data)
    config = EvalConfig(
        eps=eps_value,
        methods=tuple(args.methods),
        pgd=pgd,
        batch_size=batch_size,
        crown_batch_size=crown_batch_size,
        seed=seed,
        mode=mode,
        check_all=check_all,
        alpha=alpha,
        bab=bab,
    )
    if resume and journal is None:
        raise UsageError("needs a journal file to resume from", param="resume")
    if journal is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # The processes of a torchrun job share the images out: no one journal holds them.
        if resume:
            raise UsageError("cannot resume a run of several processes: run one", param="resume")
        journal = None
    if journal is not None:
        fingerprint = _fingerprint(model, source, chosen, data.start, len(data.labels), config)
        outcomes, seconds = _evaluate_journaled(
            Journal(Path(journal), fingerprint, resume), loaded.model, data.images,
            data.labels, data.start, config, args.device, progress,
        )  # fmt: skip
        processes = 1
    else:
        outcomes, seconds, processes = _evaluate_sharded(
            loaded.model, data.images, data.labels, data.start, config, args.device, progress
        )
    if outcomes is None:  # another process reports
        return None
    settings = {
        "model": name or source,
        "arch": arch if isinstance(model, nn.Module) and arch else loaded.arch,
        "dataset": chosen.value,
        "eps": format_eps(eps_value),
        "eps_value": eps_value,
        "start": data.start,
        "mode": mode.value,
        "pgd_steps": pgd.steps,
        "pgd_restarts": pgd.restarts,
        "pgd_loss": ",".join(loss.value for loss in pgd.losses),
        "device": describe_device(args.device)
        + (f" x{processes} processes" if processes > 1 else ""),
        "onnx_difference": loaded.conversion_difference,
        "torch": torch.__version__,
        "certify": __version__,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"),
    }
    if BoundMethod.BAB in config.methods:
        settings |= {
            "bab_timeout": bab.limits.timeout,
            "bab_max_domains": bab.limits.max_domains,
            "bab_branching": bab.branching.value,
        }
    result = EvalResult(settings, summarize(outcomes, seconds), outcomes)
    try:
        check_consistency(outcomes)
    except SoundnessError as exc:
        exc.result = result  # the per-image outcomes go with the bug report
        raise
    return result


@dataclass(frozen=True)
class _Arguments:
    eps: float | None
    methods: list[BoundMethod]
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    device: torch.device


def _checked_arguments(
    eps: float | str | None,
    methods: str | Sequence[str | BoundMethod],
    num_samples: int | None,
    start: int,
    batch_size: int,
    crown_batch_size: int | None,
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    device: str | torch.device,
) -> _Arguments:
    """The arguments that need no model or data, checked and converted."""
    if (mean is None) != (std is None):
        raise UsageError("`mean` and `std` go together: give both or neither", param="std")
    if mean is not None and len(mean) != len(std):
        raise UsageError(
            f"{len(mean)} means but {len(std)} stds: give one of each per channel", param="std"
        )
    if num_samples is not None and num_samples < 1:
        raise UsageError(f"{num_samples}: give at least 1", param="num_samples")
    if start < 0:
        raise UsageError(f"{start}: give an index >= 0", param="start")
    check_batch_sizes(batch_size, crown_batch_size)
    return _Arguments(
        eps=parse_eps(eps) if eps is not None else None,
        methods=parse_methods(methods if isinstance(methods, str) else [str(m) for m in methods]),
        mean=tuple(float(v) for v in mean) if mean is not None else None,
        std=tuple(float(v) for v in std) if std is not None else None,
        device=device if isinstance(device, torch.device) else resolve_device(device),
    )


def _attack(mode: EvalMode, steps: int, restarts: int | None, loss: str | None) -> PGDConfig:
    """The attack asked for, the mode's default where an argument is None."""
    default = DEFAULT_PGD[mode]
    return PGDConfig(
        steps=steps,
        restarts=default.restarts if restarts is None else restarts,
        losses=default.losses if loss is None else parse_losses(loss),
    )


def _load(
    model: str | os.PathLike[str] | nn.Module | None,
    arch: str | None,
    dataset: str | Dataset | None,
    num_classes: int | None,
    mean: tuple[float, ...] | None,
    std: tuple[float, ...] | None,
) -> tuple[LoadedModel, str]:
    """The model over pixels in [0, 1], and how results name it."""
    if not isinstance(model, nn.Module):
        path = Path(model) if model is not None else EMBEDDED_MODEL
        chosen = parse_dataset(dataset) if dataset is not None else None
        loaded = load_model(
            path, arch=arch, dataset=chosen, num_classes=num_classes, mean=mean, std=std
        )
        return loaded, path.name
    if num_classes is not None:
        raise UsageError(
            "applies to checkpoint files; a module's outputs give its classes",
            param="num_classes",
        )
    network = NormalizedModel(model, mean, std) if mean is not None else model
    spec = get_spec(dataset) if dataset is not None else None
    loaded = LoadedModel(
        model=network.eval(),
        arch=type(model).__name__,
        dataset=spec.name.value if spec else None,
        num_classes=spec.num_classes if spec else 0,
        input_shape=spec.input_shape if spec else (0, 0, 0),
        mean=mean or (),
        std=std or (),
        eps=None,
        source_format="module",
    )
    return loaded, type(model).__name__


def _data_dir(model: Any, dataset: Dataset) -> Path:
    """The bundled model's own images for MNIST, else the default data folder."""
    bundled = model is None or (not isinstance(model, nn.Module) and Path(model) == EMBEDDED_MODEL)
    if bundled and dataset is Dataset.MNIST:
        return EMBEDDED_DATA
    return default_data_dir()


def _check_input_shape(
    model: nn.Module, images: torch.Tensor, dataset: Dataset, source: str
) -> None:
    spec = get_spec(dataset)
    # A converted ONNX model may hold its weights as buffers only.
    weight = next(itertools.chain(model.parameters(), model.buffers()), None)
    try:
        with torch.no_grad():
            out = model.eval()(images[:1].to(weight.device if weight is not None else "cpu"))
    except (RuntimeError, ValueError) as exc:
        raise ModelError(
            f"{source} does not accept {dataset.value} images of shape "
            f"{tuple(images.shape[1:])}: {first_line(exc)}; check the data set and architecture"
        ) from None
    if out.ndim != 2 or out.shape[1] != spec.num_classes:
        raise ModelError(
            f"{source} gives outputs of shape {tuple(out.shape[1:])}, but {dataset.value} "
            f"has {spec.num_classes} classes; check the data set and the number of classes"
        )


# Images per journal entry: a killed run loses at most the slice it was in.
_SLICE = 1000
_BAB_SLICE = 8


def _evaluate_journaled(
    journal: Journal,
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    first_index: int,
    config: EvalConfig,
    device: torch.device,
    progress: ProgressFn | None,
) -> tuple[SampleOutcomes, dict[str, float]]:
    """Evaluate slice after slice, each appended to ``journal``; slices it already holds
    are taken from it."""
    covered = journal.covered()
    parts = [outcomes for outcomes, _ in journal.done]
    seconds: dict[str, float] = {}
    for _, spent in journal.done:
        _add_seconds(seconds, spent)
    size = _BAB_SLICE if BoundMethod.BAB in config.methods else max(_SLICE, config.batch_size)
    for lo in range(0, len(labels), size):
        hi = min(lo + size, len(labels))
        if all(first_index + i in covered for i in range(lo, hi)):
            continue
        outcomes, spent = evaluate_images(
            model, images[lo:hi], labels[lo:hi], config, device, first_index + lo, progress
        )
        journal.append(outcomes, spent)
        parts.append(outcomes)
        _add_seconds(seconds, spent)
    return SampleOutcomes.concatenate(parts), seconds


def _add_seconds(total: dict[str, float], spent: dict[str, float]) -> None:
    for stage, value in spent.items():
        total[stage] = total.get(stage, 0.0) + value


def _fingerprint(
    model: Any, source: str, dataset: Dataset, start: int, count: int, config: EvalConfig
) -> dict[str, Any]:
    """What decides the results of an evaluation: a resumed run must match it."""
    file = None
    if not isinstance(model, nn.Module):
        path = Path(model) if model is not None else EMBEDDED_MODEL
        stat = path.stat()
        file = [str(path.resolve()), stat.st_size, stat.st_mtime_ns]
    return {
        "model": file or source,
        "dataset": dataset.value,
        "start": start,
        "num_samples": count,
        "eps": config.eps,
        "methods": [m.value for m in config.methods],
        "mode": config.mode.value,
        "pgd": [config.pgd.steps, config.pgd.restarts, [x.value for x in config.pgd.losses]],
        "alpha": [config.alpha.iterations, config.alpha.lr],
        "bab": [config.bab.limits.timeout, config.bab.limits.max_domains,
                config.bab.branching.value],
        "seed": config.seed,
        "check_all": config.check_all,
    }  # fmt: skip


def _evaluate_sharded(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    first_index: int,
    config: EvalConfig,
    device: torch.device,
    progress: ProgressFn | None,
) -> tuple[SampleOutcomes | None, dict[str, float], int]:
    """This process's shard of the images evaluated; on rank 0 every shard's outcomes
    merged in index order (None on the others), the slowest process's seconds per stage,
    and the number of processes."""
    shard = shard_from_environment(device)
    try:
        lo, hi = shard.bounds(len(labels))
        outcomes, seconds = evaluate_images(
            model,
            images[lo:hi],
            labels[lo:hi],
            config,
            device_for(shard, device),
            first_index + lo,
            progress if shard.is_main else None,
        )
        parts = gather(outcomes, shard)
        seconds = merge_seconds(seconds, shard)
    finally:
        leave(shard)
    merged = SampleOutcomes.concatenate(parts) if parts is not None else None
    return merged, seconds, shard.world_size
