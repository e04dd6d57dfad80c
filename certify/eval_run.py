"""One evaluation run from user-level options to written reports.

:class:`EvalRequest` validates everything that can be checked cheaply (eps, methods,
paths, devices) before any model or data is loaded, so that bad input fails fast and
leaves no output behind. :func:`run_evaluation` loads the model and data, evaluates,
checks consistency and writes the CSV files; it returns the result and prints nothing.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

import certify
from certify.attack import PGDConfig
from certify.bounds import BoundMethod, parse_methods
from certify.datasets import Dataset, get_spec, parse_dataset
from certify.devices import describe_device, resolve_device
from certify.distributed import (
    device_for,
    gather_outcomes,
    leave,
    merge_seconds,
    shard_from_environment,
)
from certify.eps import format_eps, parse_eps
from certify.errors import ModelError, UsageError, first_line
from certify.evaluation import (
    EvalConfig,
    EvalSummary,
    ProgressFn,
    SampleOutcomes,
    check_batch_sizes,
    check_consistency,
    evaluate,
    summarize,
)

EMBEDDED_DIR = Path(__file__).resolve().parent / "embedded"
EMBEDDED_MODEL = EMBEDDED_DIR / "mnist_cnn_4layer.pth"


@dataclass
class EvalRequest:
    model_path: Path
    dataset: Dataset | None
    data_dir: Path | None
    eps: float | None
    methods: list[BoundMethod]
    pgd: PGDConfig
    device: torch.device
    arch: str | None = None
    num_classes: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    num_samples: int | None = None
    start: int = 0
    batch_size: int = 256
    crown_batch_size: int = 32
    out: Path | None = None
    per_sample: Path | None = None
    as_json: bool = False
    seed: int = 0

    @classmethod
    def from_cli(cls, model_path: str | None, **opts: Any) -> EvalRequest:
        """Build a request from CLI option values, rejecting bad ones with a clear message."""
        path = Path(model_path) if model_path else EMBEDDED_MODEL
        mean, std = _parse_floats(opts["mean"], "--mean"), _parse_floats(opts["std"], "--std")
        if (mean is None) != (std is None):
            raise UsageError("--mean and --std go together: give both or neither")
        if mean is not None and len(mean) != len(std):
            raise UsageError("--mean and --std need the same number of channels")
        if opts["num_samples"] is not None and opts["num_samples"] < 1:
            raise UsageError(f"--num-samples {opts['num_samples']}: give at least 1")
        if opts["start"] < 0:
            raise UsageError(f"--start {opts['start']}: give an index >= 0")
        check_batch_sizes(opts["batch_size"], opts["crown_batch_size"])
        request = cls(
            model_path=path,
            dataset=parse_dataset(opts["dataset"]) if opts["dataset"] else None,
            data_dir=Path(opts["data_dir"]) if opts["data_dir"] else None,
            eps=parse_eps(opts["eps_text"]) if opts["eps_text"] is not None else None,
            methods=parse_methods(opts["methods"]),
            pgd=PGDConfig(steps=opts["pgd_steps"], restarts=opts["pgd_restarts"]),
            device=resolve_device(opts["device"]),
            arch=opts["arch"],
            num_classes=opts["num_classes"],
            mean=mean,
            std=std,
            num_samples=opts["num_samples"],
            start=opts["start"],
            batch_size=opts["batch_size"],
            crown_batch_size=opts["crown_batch_size"],
            out=Path(opts["out"]) if opts["out"] else None,
            per_sample=Path(opts["per_sample"]) if opts["per_sample"] else None,
            as_json=opts["as_json"],
            seed=opts["seed"],
        )
        request.check_outputs()
        return request

    def check_outputs(self) -> None:
        """Fail before the run if an output could not be written."""
        from reports.eval_csv import EVAL_COLUMNS, check_appendable

        if self.out and self.per_sample and self.out.resolve() == self.per_sample.resolve():
            raise UsageError("--out and --per-sample name the same file; give two files")
        for path in (self.out, self.per_sample):
            if path is None:
                continue
            folder = path.parent
            if not folder.is_dir():
                raise UsageError(f"cannot write {path}: folder {folder} does not exist")
            if not _writable(folder) or (path.exists() and not os.access(path, os.W_OK)):
                raise UsageError(f"cannot write {path}: the folder is not writable; choose another")
        if self.out is not None:
            check_appendable(self.out, EVAL_COLUMNS)


def _writable(folder: Path) -> bool:
    """Try it: os.access says yes for root on read-only file systems such as /proc."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def _parse_floats(text: str | None, flag: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise UsageError(f"{flag} {text!r}: give comma-separated numbers, e.g. 0.5,0.5") from None
    if not values:
        raise UsageError(f"{flag} is empty: give comma-separated numbers")
    return values


@dataclass
class EvalResult:
    meta: dict[str, Any]
    summary: EvalSummary
    outcomes: SampleOutcomes
    written: list[Path] = field(default_factory=list)

    def title(self) -> str:
        m = self.meta
        return (
            f"{m['model']} ({m['arch']}) on {m['dataset']} [{m['start']}:"
            f"{m['start'] + self.summary.num_samples}], eps {m['eps']}, {m['device']}"
        )

    def table(self):
        from reports.terminal_table import summary_table

        return summary_table(self.title(), self.summary)

    def to_json(self) -> dict[str, Any]:
        s = self.summary
        return self.meta | {
            "num_samples": s.num_samples,
            "clean_error": s.clean_error,
            "pgd_error": s.pgd_error,
            "verified_error": {m.value: e for m, e in s.verified_error.items()},
            "best_verified_error": s.best_verified_error,
            "seconds": s.seconds,
            # run_evaluation raises before a result exists when this does not hold.
            "checked": "every verified image is classified correctly and withstood PGD",
        }


def run_evaluation(request: EvalRequest, progress: ProgressFn | None = None) -> EvalResult | None:
    """Load, evaluate, check and write reports for one request.

    Under ``torchrun`` each process evaluates its shard; rank 0 merges, checks, writes the
    reports and returns the result, the other processes return None.
    """
    from certify.data import load_split
    from model_zoo.loading import load_model

    loaded = load_model(
        request.model_path,
        arch=request.arch,
        dataset=request.dataset,
        num_classes=request.num_classes,
        mean=request.mean,
        std=request.std,
    )
    if request.dataset is None and loaded.dataset is None:
        raise UsageError(f"{request.model_path} does not say its data set: pass --dataset")
    dataset = parse_dataset(request.dataset or loaded.dataset)
    eps = request.eps if request.eps is not None else loaded.eps
    if eps is None:
        raise UsageError(f"{request.model_path} does not say its eps: pass --eps, e.g. 8/255")
    data_dir = request.data_dir or _default_data_dir(request, dataset)
    data = load_split(dataset, data_dir, "test", request.start, request.num_samples)
    _check_input_shape(loaded.model, data.images, dataset, request.model_path)
    config = EvalConfig(
        eps=eps,
        methods=tuple(request.methods),
        pgd=request.pgd,
        batch_size=request.batch_size,
        crown_batch_size=request.crown_batch_size,
        seed=request.seed,
    )
    shard = shard_from_environment(request.device)
    try:
        lo, hi = shard.bounds(len(data.labels))
        outcomes, seconds = evaluate(
            loaded.model,
            data.images[lo:hi],
            data.labels[lo:hi],
            config,
            device_for(shard, request.device),
            data.start + lo,
            progress if shard.is_main else None,
        )
        outcomes, seconds = gather_outcomes(outcomes, shard), merge_seconds(seconds, shard)
    finally:
        leave(shard)
    if outcomes is None:  # another process reports
        return None
    check_consistency(outcomes)
    summary = summarize(outcomes, seconds)
    meta = _meta(request, loaded.arch, dataset, eps, data.start, shard.world_size)
    result = EvalResult(meta, summary, outcomes)
    _write_reports(request, result)
    return result


def _default_data_dir(request: EvalRequest, dataset: Dataset) -> Path:
    if request.model_path == EMBEDDED_MODEL and dataset is Dataset.MNIST:
        return EMBEDDED_DIR / "data"
    raise UsageError(f"pass --data-dir: the folder that holds the {dataset.value} files")


def _check_input_shape(model, images: torch.Tensor, dataset: Dataset, path: Path) -> None:
    spec = get_spec(dataset)
    try:
        with torch.no_grad():
            out = model.eval()(images[:1].cpu())
    except (RuntimeError, ValueError) as exc:
        raise ModelError(
            f"{path.name} does not accept {dataset.value} images of shape "
            f"{tuple(images.shape[1:])}: {first_line(exc)}; check --dataset and --arch"
        ) from None
    if out.ndim != 2 or out.shape[1] != spec.num_classes:
        raise ModelError(
            f"{path.name} gives outputs of shape {tuple(out.shape[1:])}, but {dataset.value} "
            f"has {spec.num_classes} classes; check --dataset and --num-classes"
        )


def _meta(
    request: EvalRequest, arch: str, dataset: Dataset, eps: float, start: int, processes: int
) -> dict:
    return {
        "model": request.model_path.name,
        "arch": arch,
        "dataset": dataset.value,
        "eps": format_eps(eps),
        "eps_value": eps,
        "start": start,
        "pgd_steps": request.pgd.steps,
        "pgd_restarts": request.pgd.restarts,
        "device": describe_device(request.device)
        + (f" x{processes} processes" if processes > 1 else ""),
        "torch": torch.__version__,
        "certify": certify.__version__,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"),
    }


def _write_reports(request: EvalRequest, result: EvalResult) -> None:
    from reports.eval_csv import (
        EVAL_COLUMNS,
        append_rows,
        sample_columns,
        sample_rows,
        summary_rows,
        write_rows,
    )

    if request.out is not None:
        append_rows(request.out, summary_rows(result.meta, result.summary), EVAL_COLUMNS)
        result.written.append(request.out)
    if request.per_sample is not None:
        columns = sample_columns(list(result.outcomes.margin_lower))
        write_rows(request.per_sample, sample_rows(result.outcomes), columns)
        result.written.append(request.per_sample)
