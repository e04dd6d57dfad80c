"""``certify.evaluate``: one evaluation of a model on a data set at an eps, run as an
:class:`~certify.evaluation.config.EvalConfig` says, to an
:class:`~certify.pipeline.result.EvalResult`.

Values are parsed here, at the door: the data set's name and the eps's text become a
:class:`~certify.core.datasets.Dataset` and a number, the model a
:class:`~model_zoo.LoadedModel`, and from there on enums and numbers travel. An argument
at fault raises :class:`~certify.core.errors.UsageError` with its name in ``param``.
Then the test slice is loaded (an ONNX model is checked against onnxruntime on its
first images too), the images are shared out among the processes of a ``torchrun`` job,
evaluated, gathered on rank 0 and checked for soundness. The result is returned, not
printed or written: that is the caller's (the CLI's, or the training run's) business.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from certify.bounds.margins import BoundMethod
from certify.core.datasets import Dataset
from certify.core.devices import describe_device, resolve_device
from certify.core.eps import parse_eps
from certify.core.errors import DataError, ModelError, SoundnessError, UsageError, first_line
from certify.core.shard import device_for, gather, leave, merge_seconds, shard_from_environment
from certify.data import default_data_dir
from certify.evaluation.config import EvalConfig, config_from_flat
from certify.evaluation.images import ProgressFn, evaluate_images
from certify.evaluation.outcomes import SampleOutcomes, check_consistency, summarize
from certify.pipeline.embedded import EMBEDDED_DATA, EMBEDDED_MODEL
from certify.pipeline.eval_images import DataSource, EvalImages, load_eval_images, parse_data
from certify.pipeline.journal import Journal
from certify.pipeline.result import EvalResult
from certify.pipeline.settings import EvalSettings
from model_zoo import LoadedModel, ModelFile
from model_zoo.normalization import NormalizedModel

# Data images that onnxruntime runs too, to check the conversion of an ONNX file.
_CONVERSION_PROBES = 8

ModelLike = str | os.PathLike[str] | ModelFile | LoadedModel | nn.Module


def evaluate(
    model: ModelLike | None = None,
    dataset: str | Dataset | None = None,
    eps: float | str | None = None,
    config: EvalConfig | None = None,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device = "auto",
    progress: ProgressFn | None = None,
    journal: str | os.PathLike[str] | None = None,
    resume: bool = False,
    name: str | None = None,
    **keywords: Any,
) -> EvalResult | None:
    """Clean, PGD and verified error of ``model`` on ``dataset``'s test images at ``eps``.

    ``model`` is a checkpoint or ONNX file (default: the bundled MNIST model), a
    :class:`~model_zoo.ModelFile` (a file with the architecture, classes or
    normalization it does not record), a :class:`~model_zoo.LoadedModel` from
    :func:`model_zoo.load_model`, or any ``nn.Module`` that takes pixel images in [0, 1]
    (its normalization inside it); a module is put in eval mode and moved to ``device``.
    ``dataset`` and ``eps`` (pixel space, ``8/255`` or a number) default to what the
    checkpoint records. ``config`` holds everything else (:class:`EvalConfig`: methods,
    mode, attack, alpha-CROWN, branch and bound, chunk sizes, image range, seed).
    ``data_dir`` defaults to ``$CERTIFY_DATA``, else ``./data`` (for the bundled model on
    MNIST, to the images that ship with it). ``progress(stage, done, total)`` is called
    after every batch; ``name`` names the model in the results (default: its file's name,
    or a module's class).

    With ``journal`` (a file), each slice of images is appended to it as soon as it is
    decided; ``resume`` takes the slices an earlier run with the same settings left there
    and evaluates only the rest (:mod:`certify.pipeline.journal`).

    Raises :class:`~certify.core.errors.SoundnessError` if a verified image was
    misclassified or attacked. Under ``torchrun`` each process evaluates its shard of the
    images; rank 0 returns the merged result and the other processes return None.

    The keyword form of earlier releases (``methods=...``, ``num_samples=...``,
    ``mean=...``, ...) still works for one release, with a :class:`DeprecationWarning`.
    """
    if keywords:
        model, config = _from_keywords(model, config, keywords)
    config = config if config is not None else EvalConfig()
    if not isinstance(config, EvalConfig):
        raise UsageError(f"give an EvalConfig, not {type(config).__name__}", param="config")
    chosen = parse_data(dataset) if dataset is not None else None
    eps_value = parse_eps(eps) if eps is not None else None
    device = device if isinstance(device, torch.device) else resolve_device(device)
    if resume and journal is None:
        raise UsageError("needs a journal file to resume from", param="resume")
    loaded, data = load_inputs(model, chosen, config, data_dir)
    if eps_value is None:
        eps_value = loaded.eps
    if eps_value is None:
        raise UsageError(
            f"{model_name(model, loaded)} does not say its eps: give one, e.g. 8/255", param="eps"
        )
    if journal is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # The processes of a torchrun job share the images out: no one journal holds them.
        if resume:
            raise UsageError("cannot resume a run of several processes: run one", param="resume")
        journal = None
    if journal is not None:
        fingerprint = _fingerprint(model, loaded, data, eps_value, config)
        outcomes, seconds = _evaluate_journaled(
            Journal(Path(journal), fingerprint, resume), loaded.model, data, eps_value,
            config, device, progress,
        )  # fmt: skip
        processes = 1
    else:
        outcomes, seconds, processes = _evaluate_sharded(
            loaded.model, data, eps_value, config, device, progress
        )
    if outcomes is None:  # another process reports
        return None
    settings = EvalSettings(
        model=name or model_name(model, loaded),
        arch=loaded.arch,
        dataset=data.name,
        eps=eps_value,
        config=dataclasses.replace(config, start=data.start),
        device=describe_device(device) + (f" x{processes} processes" if processes > 1 else ""),
        onnx_difference=loaded.conversion_difference,
    )
    result = EvalResult(settings, summarize(outcomes, seconds), outcomes)
    try:
        check_consistency(outcomes)
    except SoundnessError as exc:
        exc.result = result  # the per-image outcomes go with the bug report
        raise
    return result


def load_inputs(
    model: ModelLike | None, source: DataSource | None, config: EvalConfig, data_dir: Any
) -> tuple[LoadedModel, EvalImages]:
    """The model over pixels in [0, 1] and the test images ``config`` asks for, checked
    against each other (``source`` parsed by
    :func:`~certify.pipeline.eval_images.parse_data`)."""
    if isinstance(model, LoadedModel | nn.Module):
        loaded = model if isinstance(model, LoadedModel) else _wrap_module(model)
        source = source or loaded.dataset
        if source is None:
            raise UsageError(
                f"{model_name(model, loaded)} does not say its data set: give one", param="dataset"
            )
        data = _load_data(model, source, config, data_dir)
    else:
        file = _model_file(model)
        if source is None:
            # A checkpoint says its data set; an ONNX file makes load_model ask for one.
            loaded = file.load()
            if loaded.dataset is None:
                raise UsageError(
                    f"{file.path.name} does not say its data set: give one", param="dataset"
                )
            data = _load_data(model, loaded.dataset, config, data_dir)
        else:
            data = _load_data(model, source, config, data_dir)
            probes = data.images[:_CONVERSION_PROBES]
            if isinstance(source, Dataset):
                loaded = file.load(source, probes=probes)
            else:
                loaded = file.load(None, probes=probes, input_shape=tuple(data.images.shape[1:]))
    return loaded, _checked_against_model(loaded.model, data, model_name(model, loaded))


def _model_file(model: str | os.PathLike[str] | ModelFile | None) -> ModelFile:
    if isinstance(model, ModelFile):
        return model
    return ModelFile(Path(model) if model is not None else EMBEDDED_MODEL)


def _wrap_module(module: nn.Module, arch: str | None = None) -> LoadedModel:
    return LoadedModel(
        model=module.eval(),
        arch=arch or type(module).__name__,
        dataset=None,
        num_classes=0,
        input_shape=(0, 0, 0),
        mean=(),
        std=(),
        eps=None,
        source_format="module",
    )


def model_name(model: ModelLike | None, loaded: LoadedModel) -> str:
    """How results name ``model``: its file's name, or a module's class."""
    if loaded.path is not None:
        return loaded.path.name
    if isinstance(model, nn.Module):
        return type(model).__name__
    return loaded.arch


def _load_data(model: Any, source: DataSource, config: EvalConfig, data_dir: Any) -> EvalImages:
    if data_dir:
        folder = Path(data_dir).expanduser()
    else:
        folder = _data_dir(model, source) if isinstance(source, Dataset) else Path()
    return load_eval_images(source, folder, config.start, config.num_samples)


# The keyword arguments of the earlier form of evaluate: those of the model's loading,
# and those that became EvalConfig's.
_MODEL_KEYWORDS = ("mean", "std", "arch", "num_classes")
_CONFIG_KEYWORDS = (
    "methods", "num_samples", "start", "batch_size", "crown_batch_size", "pgd_steps",
    "pgd_restarts", "pgd_loss", "every_method", "check_all", "alpha_iterations",
    "alpha_lr", "timeout", "max_domains", "branching", "bab_batch", "seed",
)  # fmt: skip


def _from_keywords(
    model: ModelLike | None, config: EvalConfig | None, keywords: dict[str, Any]
) -> tuple[ModelLike | None, EvalConfig]:
    """The model and config the keyword form of earlier releases describes."""
    unknown = sorted(set(keywords) - set(_MODEL_KEYWORDS) - set(_CONFIG_KEYWORDS))
    if unknown:
        raise TypeError(f"evaluate() got unexpected keyword arguments: {', '.join(unknown)}")
    if config is not None and set(keywords) & set(_CONFIG_KEYWORDS):
        raise UsageError("give the settings in `config` or as keywords, not both", param="config")
    warnings.warn(
        "certify.evaluate(..., methods=..., num_samples=..., ...) is deprecated: pass "
        "config=certify.EvalConfig(...) (and a model_zoo.ModelFile for arch, num_classes, "
        "mean and std)",
        DeprecationWarning,
        stacklevel=3,
    )
    model = _model_from_keywords(model, **{k: keywords.pop(k) for k in _MODEL_KEYWORDS
                                          if k in keywords})  # fmt: skip
    if config is None:
        config = config_from_flat(**keywords)
    return model, config


def _model_from_keywords(
    model: ModelLike | None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    arch: str | None = None,
    num_classes: int | None = None,
) -> ModelLike | None:
    if isinstance(model, nn.Module):
        if (mean is None) != (std is None):
            raise UsageError("`mean` and `std` go together: give both or neither", param="std")
        if num_classes is not None:
            raise UsageError(
                "applies to checkpoint files; a module's outputs give its classes",
                param="num_classes",
            )
        module = NormalizedModel(model, mean, std) if mean is not None else model
        return _wrap_module(module, arch) if arch is not None else module
    if isinstance(model, LoadedModel | ModelFile):
        given = [
            name
            for name, value in (
                ("mean", mean),
                ("std", std),
                ("arch", arch),
                ("num_classes", num_classes),
            )
            if value is not None
        ]
        if given:
            raise UsageError(
                f"a {type(model).__name__} carries them: leave out {', '.join(given)}",
                param=given[0],
            )
        return model
    path = Path(model) if model is not None else EMBEDDED_MODEL
    return ModelFile(path, arch=arch, num_classes=num_classes, mean=mean, std=std)


def _data_dir(model: Any, dataset: Dataset) -> Path:
    """The bundled model's own images for MNIST, else the default data folder."""
    if isinstance(model, ModelFile):
        model = model.path
    bundled = model is None or (
        isinstance(model, str | os.PathLike) and Path(model) == EMBEDDED_MODEL
    )
    if bundled and dataset is Dataset.MNIST:
        return EMBEDDED_DATA
    return default_data_dir()


def _checked_against_model(model: nn.Module, data: EvalImages, source: str) -> EvalImages:
    """``data``, once the model takes its images and gives one output per class (the
    model's outputs give the class count of a file that does not say it)."""
    # A converted ONNX model may hold its weights as buffers only.
    weight = next(itertools.chain(model.parameters(), model.buffers()), None)
    try:
        with torch.no_grad():
            out = model.eval()(data.images[:1].to(weight.device if weight is not None else "cpu"))
    except (RuntimeError, ValueError) as exc:
        raise ModelError(
            f"{source} does not accept {data.name} images of shape "
            f"{tuple(data.images.shape[1:])}: {first_line(exc)}; check the data set and "
            "architecture"
        ) from None
    if out.ndim != 2 or (data.num_classes is not None and out.shape[1] != data.num_classes):
        raise ModelError(
            f"{source} gives outputs of shape {tuple(out.shape[1:])}, but {data.name} "
            f"has {data.num_classes} classes; check the data set and the number of classes"
        )
    classes = int(out.shape[1])
    if int(data.labels.max()) >= classes:
        raise DataError(
            f"{data.name} has a label {int(data.labels.max())}, but {source} gives {classes} "
            "outputs; check the labels or the model"
        )
    return dataclasses.replace(data, num_classes=classes)


# Images per journal entry: a killed run loses at most the slice it was in.
_SLICE = 1000
_BAB_SLICE = 8


def _evaluate_journaled(
    journal: Journal,
    model: nn.Module,
    data: EvalImages,
    eps: float,
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
    for lo in range(0, len(data.labels), size):
        hi = min(lo + size, len(data.labels))
        if all(data.start + i in covered for i in range(lo, hi)):
            continue
        outcomes, spent = evaluate_images(
            model, data.images[lo:hi], data.labels[lo:hi], eps, config, device,
            data.start + lo, progress,
        )  # fmt: skip
        journal.append(outcomes, spent)
        parts.append(outcomes)
        _add_seconds(seconds, spent)
    return SampleOutcomes.concatenate(parts), seconds


def _add_seconds(total: dict[str, float], spent: dict[str, float]) -> None:
    for stage, value in spent.items():
        total[stage] = total.get(stage, 0.0) + value


def _fingerprint(
    model: Any, loaded: LoadedModel, data: EvalImages, eps: float, config: EvalConfig
) -> dict[str, Any]:
    """What decides the results of an evaluation: a resumed run must match it."""
    file = _file_identity(loaded.path) if loaded.path is not None else None
    given = None
    if isinstance(model, ModelFile):
        definition = model.definition
        source = None
        if definition is not None:
            source = (
                _file_identity(Path(definition.source)) if definition.is_file else definition.source
            )
        given = {
            "arch": model.arch, "num_classes": model.num_classes,
            "mean": list(model.mean) if model.mean else None,
            "std": list(model.std) if model.std else None,
            "definition": [source, definition.factory, dict(definition.args)]
            if definition else None,
        }  # fmt: skip
    return {
        "model": file or model_name(model, loaded),
        "model_file": given,
        "dataset": data.identity(),
        "start": data.start,
        "num_samples": len(data.labels),
        "eps": eps,
        **config.fingerprint(),
    }


def _file_identity(path: Path) -> list[Any]:
    """A file as a resumed run must find it again: where it is, its size and its time."""
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


def _evaluate_sharded(
    model: nn.Module,
    data: EvalImages,
    eps: float,
    config: EvalConfig,
    device: torch.device,
    progress: ProgressFn | None,
) -> tuple[SampleOutcomes | None, dict[str, float], int]:
    """This process's shard of the images evaluated; on rank 0 every shard's outcomes
    merged in index order (None on the others), the slowest process's seconds per stage,
    and the number of processes."""
    shard = shard_from_environment(device)
    try:
        lo, hi = shard.bounds(len(data.labels))
        outcomes, seconds = evaluate_images(
            model,
            data.images[lo:hi],
            data.labels[lo:hi],
            eps,
            config,
            device_for(shard, device),
            data.start + lo,
            progress if shard.is_main else None,
        )
        parts = gather(outcomes, shard)
        seconds = merge_seconds(seconds, shard)
    finally:
        leave(shard)
    merged = SampleOutcomes.concatenate(parts) if parts is not None else None
    return merged, seconds, shard.world_size
