"""A whole training run: data, model, epochs, checkpoints, log and the final report.

:func:`train` takes a :class:`~training.config.TrainConfig` and returns a
:class:`TrainResult`; it prints nothing and reports progress through
:class:`TrainCallbacks`. The run folder holds ``last.pth`` (every epoch, with the state
to resume from), ``best.pth`` (the epoch with the lowest IBP-verified error at eps_max
on the validation split, among epochs trained at eps_max), ``train_log.csv`` and, after
the final evaluation of the selected model on the test set (:func:`certify.evaluate` on
the weights in memory), the appended results CSV. ``certify.train`` is this function.

Under ``torchrun`` (``WORLD_SIZE`` > 1) every process joins the process group and trains
its shard of each global batch (see :mod:`training.loop`); rank 0 alone validates, writes
the checkpoints, the log and the final evaluation, and reports through the callbacks.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from certify.bounds.bounder import TrainingBounder
from certify.bounds.training_bounders import CrownIBPBounder, IBPBounder
from certify.core.datasets import get_spec
from certify.core.devices import resolve_device
from certify.core.errors import CheckpointError, UsageError
from certify.core.shard import SINGLE, Shard, device_for, leave, shard_from_environment
from certify.data import load_split
from certify.evaluation.config import EvalConfig, EvalMode, attack_config
from certify.evaluation.images import ProgressFn
from certify.pipeline.evaluate import evaluate
from certify.pipeline.result import EvalResult
from model_zoo import LoadedModel, create_model
from model_zoo.normalization import NormalizedModel
from model_zoo.registry import canonical_name
from reports.eval_csv import check_result_files
from reports.training_log import LOG_NAME, EpochRow, read_log, rows_up_to, write_log
from training.checkpointing import (
    BEST,
    LAST,
    TrainingState,
    load_training_checkpoint,
    save_training_checkpoint,
)
from training.config import TrainConfig
from training.data import Augmentation, Split, batches, epoch_length, split_validation
from training.init import InitReport, ibp_init
from training.loop import (
    BatchCallback,
    EpochStats,
    SplitStats,
    StepConfig,
    evaluate_split,
    train_epoch,
)
from training.methods import Method
from training.objective import AttackObjective
from training.schedulers import EpsSchedule
from training.selection import Best, SelectedWeights, is_candidate, select


@dataclass(frozen=True)
class RunInfo:
    """Reported once, before the first epoch."""

    num_train: int
    num_val: int
    first_epoch: int
    epochs: int
    batches_per_epoch: int
    device: str
    resumed: bool
    init: InitReport | None


@dataclass
class TrainCallbacks:
    on_start: Callable[[RunInfo], None] | None = None
    on_batch: BatchCallback | None = None
    on_epoch: Callable[[EpochRow], None] | None = None
    on_eval: ProgressFn | None = None


@dataclass
class TrainResult:
    out_dir: Path
    last_path: Path
    best_path: Path
    log_path: Path
    best: Best
    rows: list[EpochRow] = field(default_factory=list)
    evaluation: EvalResult | None = None  # when the final evaluation ran, on rank 0
    results_path: Path | None = None  # where its rows were appended
    seconds: float = 0.0
    is_main: bool = True  # False in the processes of rank > 0 under torchrun


def lr_at(config: TrainConfig, epoch: int) -> float:
    """Step decay: x factor for every milestone already passed (MultiStepLR stepped
    once after each epoch, as in the seed)."""
    passed = sum(1 for m in config.lr_milestones if m < epoch)
    return config.lr * config.lr_decay_factor**passed


def build_model(config: TrainConfig) -> NormalizedModel:
    spec = get_spec(config.dataset)
    network = create_model(
        config.arch, spec.channels, spec.size, config.classes, **config.model_options
    )
    # The normalization lives in the model, so bounds are taken in pixel space.
    return NormalizedModel(network, spec.mean, spec.std)


def train(config: TrainConfig, callbacks: TrainCallbacks | None = None) -> TrainResult:
    """Run (or resume) training as configured; see the module docstring for outputs."""
    threads = torch.get_num_threads()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    shard = SINGLE
    try:
        device = resolve_device(config.device)
        shard = shard_from_environment(device)
        return _train(config, callbacks, device_for(shard, device), shard)
    finally:
        leave(shard)
        torch.set_num_threads(threads)


def _train(
    config: TrainConfig, callbacks: TrainCallbacks | None, device: torch.device, shard: Shard
) -> TrainResult:
    callbacks = callbacks if callbacks is not None and shard.is_main else TrainCallbacks()
    started = time.perf_counter()
    out_dir = _check_out_dir(config)
    if config.batch_size < 2 * shard.world_size:
        raise UsageError(
            f"{config.batch_size} is the global batch of {shard.world_size} processes: "
            f"give at least {2 * shard.world_size} (2 images per process)",
            param="batch_size",
        )
    train_split, val_split = _load_data(config)
    # Before the run folder: the architecture and its options must build, and the
    # method must be able to train it.
    model = _new_model(config)
    objective = config.objective()
    if objective is not None:
        objective.check(model)
    # Every process takes its shard of the final evaluation; rank 0 writes the results.
    check_results = config.final_eval and shard.is_main
    in_new_dir = _results_file(config, out_dir).parent.resolve() == out_dir.resolve()
    in_new_dir = in_new_dir and not out_dir.is_dir()
    if check_results and not in_new_dir:
        _check_results_file(config, out_dir)
    # Created only now, so that bad options or data leave nothing behind.
    if shard.is_main:
        _make_dir(out_dir)
    if check_results and in_new_dir:
        _check_results_file(config, out_dir)
    start = _start(config, out_dir, device, model)
    runner = _EpochRunner(config, start, device, train_split, shard, objective)
    if callbacks.on_start:
        callbacks.on_start(
            RunInfo(len(train_split), len(val_split), start.first_epoch, config.epochs,
                    runner.schedule.epoch_length, _device_name(device, shard), start.resumed,
                    start.init)
        )  # fmt: skip
    log_path = out_dir / LOG_NAME
    rows = rows_up_to(read_log(log_path), start.first_epoch - 1)
    best = start.best
    # The network's weights at the best epoch, kept for the final evaluation.
    selected = SelectedWeights()
    for epoch in range(start.first_epoch, config.epochs + 1):
        stats = runner.run(epoch, callbacks.on_batch)
        if not shard.is_main:
            continue  # the next epoch's first gradient sum waits for rank 0
        val = runner.validate(val_split)
        candidate = is_candidate(runner.schedule.eps_after(epoch), config.eps)
        chosen = select(best, epoch, candidate, (val.verified_err, val.clean_err) if val else None)
        is_best = chosen is not None
        if chosen is not None:
            best = chosen
            selected.keep(epoch, start.model)
        rows.append(_row(config, epoch, stats, val, is_best))
        write_log(log_path, rows)
        _save(config, out_dir, start.model, epoch, runner.state(epoch, best), is_best)
        if callbacks.on_epoch:
            callbacks.on_epoch(rows[-1])
    if shard.is_main:
        best = _ensure_best(config, out_dir, best)
    result = TrainResult(out_dir, out_dir / LAST, out_dir / BEST, log_path, best, rows)
    result.is_main = shard.is_main
    if shard.world_size > 1:
        # Rank 0 has written best.pth; a process that left the group early could abort
        # at exit ("terminate called without an active exception").
        dist.barrier()
    if config.final_eval:
        last_epoch = max(start.first_epoch - 1, config.epochs)
        model = selected.model(
            lambda: build_model(config), out_dir / BEST, best, start.model, last_epoch, shard
        )
        result.evaluation = _final_evaluation(config, out_dir, model, device, callbacks.on_eval)
        result.results_path = _results_file(config, out_dir)
        if shard.world_size > 1:
            dist.barrier()  # all leave the group together, once rank 0 has written
    result.seconds = time.perf_counter() - started
    return result


def _device_name(device: torch.device, shard: Shard) -> str:
    return str(device) if shard.world_size == 1 else f"{device} x{shard.world_size} processes"


@dataclass
class _Start:
    """The model and optimizer at the first epoch to train, fresh or resumed."""

    model: NormalizedModel
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    first_epoch: int
    best: Best
    resumed: bool
    init: InitReport | None


def _new_model(config: TrainConfig) -> NormalizedModel:
    """The freshly initialized model, seeded (a resumed run then loads its weights)."""
    torch.manual_seed(config.seed)
    return build_model(config)


def _start(
    config: TrainConfig, out_dir: Path, device: torch.device, model: NormalizedModel
) -> _Start:
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    resumed = _resume_state(config, out_dir, model, optimizer, generator, device)
    if resumed is not None:
        return _Start(model, optimizer, generator, resumed.epoch + 1, resumed.best, True, None)
    init = ibp_init(model) if config.method.builds_on_fast else None
    model.to(device)
    return _Start(model, optimizer, generator, 1, Best(), False, init)


class _EpochRunner:
    """The pieces one epoch needs, built once per run."""

    def __init__(
        self,
        config: TrainConfig,
        start: _Start,
        device: torch.device,
        train_split: Split,
        shard: Shard = SINGLE,
        objective: AttackObjective | None = None,
    ) -> None:
        self.config, self.device, self.train_split = config, device, train_split
        self.shard = shard
        model = self.model = start.model
        self.optimizer, self.generator = start.optimizer, start.generator
        self.schedule = _schedule(config, len(train_split))
        self.augment = Augmentation(config.crop_padding, config.flip)
        if config.method is Method.CROWN_IBP:
            shape = get_spec(config.dataset).input_shape
            self.bounder: TrainingBounder = CrownIBPBounder(model, shape, device, config.eps)
            self.network = IBPBounder(model).network
        else:
            self.bounder = IBPBounder(model)
            self.network = self.bounder.network
        self.step = StepConfig(
            method=config.method,
            max_eps=config.eps,
            num_classes=config.classes,
            tol=config.tol,
            reg_lambda=config.reg_lambda,
            min_reg_eps=config.min_reg_eps,
            grad_clip=config.grad_clip,
            grad_acc_steps=config.grad_acc_steps,
            objective=objective,
            seed=config.seed,
            l1=config.l1 or 0.0,
        )

    def run(self, epoch: int, on_batch: BatchCallback | None) -> EpochStats:
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.config, epoch)
        data = batches(self.train_split, self.config.batch_size, self.generator, self.augment)
        return train_epoch(
            self.model, self.bounder, self.optimizer, data, self.schedule, epoch, self.step,
            self.device, on_batch, self.shard,
        )  # fmt: skip

    def validate(self, split: Split) -> SplitStats | None:
        if len(split) == 0:
            return None
        return evaluate_split(
            self.model, self.network, split.images, split.labels, self.config.test_eps,
            self.config.classes, self.config.eval_batch_size, self.device,
        )  # fmt: skip

    def state(self, epoch: int, best: Best) -> TrainingState:
        schedule = self.schedule
        return TrainingState(
            epoch=epoch,
            optimizer=self.optimizer.state_dict(),
            torch_rng=torch.get_rng_state(),
            data_rng=self.generator.get_state(),
            best=best,
            lr=lr_at(self.config, epoch),
            schedules={
                "eps": schedule.eps_after(epoch),
                "eps_kind": schedule.kind.value,
                "epoch_length": schedule.epoch_length,
                "lr_milestones": list(self.config.lr_milestones),
                "lr_decay_factor": self.config.lr_decay_factor,
            },
        )


def _schedule(config: TrainConfig, num_train: int) -> EpsSchedule:
    return EpsSchedule(
        max_eps=config.eps,
        start=config.schedule_start,
        length=config.schedule_length,
        epoch_length=epoch_length(num_train, config.batch_size),
        kind=config.schedule,
    )


def _load_data(config: TrainConfig) -> tuple[Split, Split]:
    data = load_split(config.dataset, config.data_dir, "train", 0, config.num_train)
    if config.num_classes is not None and int(data.labels.max()) >= config.num_classes:
        raise UsageError(
            f"{config.num_classes}: the data has label {int(data.labels.max())}",
            param="num_classes",
        )
    return split_validation(data.images, data.labels, config.val_size, config.seed)


def _check_out_dir(config: TrainConfig) -> Path:
    out_dir = Path(config.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{out_dir} is a file: give a folder", param="out_dir")
    if (out_dir / LAST).exists() and not config.resume:
        raise UsageError(
            f"{out_dir} already holds a run ({LAST}): pass `resume` to continue it, "
            "or choose another `out_dir`"
        )
    if config.resume and not (out_dir / LAST).exists():
        raise UsageError(f"{out_dir / LAST} does not exist; start without `resume`", param="resume")
    return out_dir


def _make_dir(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create {out_dir}: {exc.strerror}", param="out_dir") from None


def _resume_state(
    config: TrainConfig,
    out_dir: Path,
    model: NormalizedModel,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    device: torch.device,
) -> TrainingState | None:
    if not config.resume:
        return None
    path = out_dir / LAST
    raw, state = load_training_checkpoint(path)
    stored = raw.get("train_args") or {}
    changed = config.differences(stored)
    if changed:
        shown = ", ".join(f"{k} ({stored[k]!r} in the run)" for k in changed)
        raise UsageError(
            f"these settings differ from the run in {out_dir}: {shown}", param="resume"
        )
    try:
        model.model.load_state_dict(raw["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: the weights do not fit: {exc}") from None
    model.to(device)
    optimizer.load_state_dict(state.optimizer)
    torch.set_rng_state(state.torch_rng)
    generator.set_state(state.data_rng)
    return state


def _meta(config: TrainConfig, epoch: int) -> dict[str, Any]:
    return {
        "arch": config.arch,
        "arch_options": dict(config.model_options),
        "dataset": config.dataset,
        "num_classes": config.classes,
        # The eps `certify eval` takes for the checkpoint: the one it was made for.
        "eps": config.test_eps,
        "method": config.method.value,
        "train_args": config.to_plain(),
        "epoch": epoch,
    }


def _save(
    config: TrainConfig,
    out_dir: Path,
    model: nn.Module,
    epoch: int,
    state: TrainingState,
    is_best: bool,
) -> None:
    if is_best:
        save_training_checkpoint(out_dir / BEST, model, _meta(config, epoch), None)
    # last.pth goes last: a run killed in between resumes from the previous epoch and
    # redoes this one, rewriting best.pth identically.
    save_training_checkpoint(out_dir / LAST, model, _meta(config, epoch), state)


def _ensure_best(config: TrainConfig, out_dir: Path, best: Best) -> Best:
    """Without a candidate epoch (eps_max never reached), the last epoch is the result."""
    if best.epoch > 0 and (out_dir / BEST).exists():
        return best
    raw, state = load_training_checkpoint(out_dir / LAST)
    model = build_model(config)
    model.model.load_state_dict(raw["state_dict"])
    save_training_checkpoint(out_dir / BEST, model, _meta(config, state.epoch), None)
    return Best(state.epoch, float("nan"), float("nan"))


def _row(
    config: TrainConfig, epoch: int, stats: EpochStats, val: SplitStats | None, is_best: bool
) -> EpochRow:
    m = stats.meter
    return EpochRow(
        epoch=epoch,
        eps=stats.eps,
        eps_max=config.eps,
        lr=lr_at(config, epoch),
        loss=m.mean("loss"),
        clean_ce=m.mean("clean_ce"),
        robust_ce=m.mean("robust_ce"),
        reg_tightness=m.mean("reg_tightness"),
        reg_relu=m.mean("reg_relu"),
        train_clean_err=m.mean("clean_err"),
        train_verified_err=m.mean("verified_err"),
        # The error at the training attack's points (the methods with an attack).
        train_adv_err=m.mean("adv_err"),
        val_clean_err=val.clean_err if val else None,
        val_verified_err=val.verified_err if val else None,
        active=m.mean("active"),
        inactive=m.mean("inactive"),
        epoch_seconds=stats.seconds,
        val_seconds=val.seconds if val else None,
        best=is_best,
    )


def _results_file(config: TrainConfig, out_dir: Path) -> Path:
    return Path(config.results_csv) if config.results_csv else out_dir / "results.csv"


def _check_results_file(config: TrainConfig, out_dir: Path) -> None:
    """Fail before training if the final evaluation could not write its rows."""
    try:
        check_result_files(_results_file(config, out_dir), None)
    except UsageError as exc:
        raise UsageError(exc.reason, param="results_csv") from None


def _final_evaluation(
    config: TrainConfig,
    out_dir: Path,
    model: NormalizedModel,
    device: torch.device,
    progress: ProgressFn | None,
) -> EvalResult | None:
    """``certify.evaluate`` of the selected model on the test set; rank 0 appends its
    rows to the results file and returns the result."""
    spec = get_spec(config.dataset)
    loaded = LoadedModel(
        model=model, arch=canonical_name(config.arch), dataset=spec.name,
        num_classes=config.classes, input_shape=spec.input_shape, mean=spec.mean, std=spec.std,
        eps=config.test_eps, source_format="module",
    )  # fmt: skip
    evaluation = EvalConfig(
        methods=config.eval_methods,
        attack=attack_config(EvalMode.CASCADE, config.pgd_steps),
        batch_size=config.eval_batch_size,
        num_samples=config.test_samples,
    )
    result = evaluate(
        loaded, spec.name, config.test_eps, evaluation, data_dir=config.data_dir, device=device,
        progress=progress, name=BEST,
    )  # fmt: skip
    if result is not None:
        # Every run names its model best.pth: the run folder tells runs apart, in full, as
        # two runs may both be ./model of different folders.
        result.settings = dataclasses.replace(result.settings, run=str(out_dir.resolve()))
        result.write_csv(out=_results_file(config, out_dir))
    return result
