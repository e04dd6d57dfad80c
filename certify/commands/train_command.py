"""``certify train``: certified robust training (IBP with the short warmup of Shi et al.)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from certify.commands.base import CertifyCommand, write_soundness_evidence
from certify.commands.seed_flags import hidden_names, seed_only_options
from certify.core.datasets import Dataset
from certify.core.eps import parse_eps
from certify.core.errors import SoundnessError, UsageError
from training.attack import AttackStart
from training.config import TrainConfig
from training.methods import Method
from training.presets import PRESETS
from training.schedulers import parse_schedule_kind, parse_scheduler_opts

if TYPE_CHECKING:
    from reports.training_log import EpochRow

# The seed's default run folder: its TinyImageNet command names none.
DEFAULT_OUT_DIR = "model"

_METHOD_HELP = (
    "fast: IBP initialization + warmup regularizers; vanilla: plain IBP; "
    "crown-ibp: CROWN-IBP/IBP mix; mtl-ibp, cc-ibp, exp-ibp: an attack and IBP mixed; "
    "sabr: IBP over a small box around an attack's point; taps, staps: IBP to the "
    "features, PGD through the head (all of these on fast's initialization and "
    "regularizers). [default: fast]"
)


def _int_list(ctx: click.Context, param: click.Parameter, value: str | None):
    if value is None:
        return None
    try:
        return tuple(int(v) for v in value.replace(" ", "").split(",") if v)
    except ValueError:
        raise click.BadParameter("give comma-separated epochs, e.g. 50,60") from None


def _methods(ctx: click.Context, param: click.Parameter, value: str | None):
    if value is None:
        return None
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _parsed(parse: Callable[[str], Any]) -> Callable[..., Any]:
    """A click callback that parses a value with ``parse`` and turns its UsageError into
    click's, which names the flag."""

    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
        try:
            return None if value is None else parse(value)
        except UsageError as exc:
            raise click.BadParameter(exc.reason) from None

    return callback


_eps = _parsed(parse_eps)
_schedule_kind = _parsed(parse_schedule_kind)
_scheduler_opts = _parsed(parse_scheduler_opts)


class _TrainCommand(CertifyCommand):
    """Keeps the raw arguments, for ``--nproc`` to start itself again under torchrun."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta["certify.train.args"] = list(args)
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as exc:  # suggest no refused seed flag
            exc.possibilities = [p for p in exc.possibilities or () if p not in hidden_names()]
            raise


# Second names are the seed's flags of the same meaning (its README's commands run as
# typed); the seed's other flags are refused by name (certify.commands.seed_flags).
@click.command("train", cls=_TrainCommand)
@click.option(
    "--preset",
    type=click.Choice(list(PRESETS)),
    help="Settings of the seed's README command for this data set.",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="A config JSON in the seed's schema (data set, batch size, eps, ...); flags win.",
)
@click.option("--dataset", help=f"{', '.join(d.value for d in Dataset)} (set by --preset).")
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    help="Folder with the data set. [default: $CERTIFY_DATA, else ./data]",
)
@click.option(
    "--out-dir",
    "--dir",
    "out_dir",
    type=click.Path(file_okay=False),
    default=DEFAULT_OUT_DIR,
    show_default=True,
    help="Run folder: checkpoints, train_log.csv, results.csv.",
)
@click.option(
    "--arch", "--model", "arch", help="Architecture (see `certify models`). [default: cnn_4layer]"
)
@click.option("--method", type=click.Choice([m.value for m in Method]), help=_METHOD_HELP)
@click.option("--eps", callback=_eps, help="Training eps in [0,1] pixels, e.g. 0.1 or 8/255.")
@click.option(
    "--eval-eps",
    callback=_eps,
    help="Eps of validation, model selection and the final evaluation. [default: --eps]",
)
@click.option(
    "--num-classes",
    "--num-class",
    "num_classes",
    type=int,
    help="Classes (default: the data set's).",
)
@click.option("--epochs", "--num-epochs", "epochs", type=int, help="Number of epochs.")
@click.option("--batch-size", type=int)
@click.option("--lr", type=float, help="Adam learning rate. [default: 5e-4]")
@click.option("--lr-decay-factor", type=float, help="[default: 0.2]")
@click.option(
    "--lr-decay-milestones",
    "lr_milestones",
    callback=_int_list,
    help="Epochs after which the lr decays, e.g. 50,60.",
)
@click.option(
    "--grad-clip", "--grad-norm", "grad_clip", type=float, help="Max gradient norm. [default: 10]"
)
@click.option("--grad-acc-steps", type=int, help="Split each batch into this many steps.")
@click.option(
    "--scheduler",
    "--scheduler_name",
    "schedule",
    callback=_schedule_kind,
    help="eps schedule: smoothed or linear (or SmoothedScheduler, LinearScheduler). "
    "[default: smoothed]",
)
@click.option(
    "--scheduler_opts",
    "--scheduler-opts",
    "scheduler_opts",
    callback=_scheduler_opts,
    help="The eps ramp as start=S,length=L: --schedule-start S --schedule-length L.",
)
@click.option("--schedule-start", type=int, help="First epoch of the eps ramp (from 1).")
@click.option("--schedule-length", type=int, help="Epochs of the eps ramp (the warmup).")
@click.option("--tol", type=float, help="Regularizer tolerance tau. [default: 0.5]")
@click.option(
    "--reg-lambda",
    "--pi",
    "reg_lambda",
    type=float,
    help="Regularizer weight lambda. [default: 0.5]",
)
@click.option(
    "--min-eps-reg",
    "min_reg_eps",
    type=float,
    help="eps of the regularizers' bounds while the schedule is at 0. [default: 1e-6]",
)
@click.option(
    "--ibp-coef",
    type=float,
    help="mtl-ibp, cc-ibp, exp-ibp: weight of IBP's term, in [0, 1] (default: the paper's).",
)
@click.option(
    "--sabr-ratio",
    type=float,
    help="sabr, staps: the small box's radius as a fraction of eps's (default: the paper's).",
)
@click.option(
    "--taps-grad-scale",
    type=float,
    help="taps, staps: the factor on the gradient of TAPS's term (default: the paper's).",
)
@click.option(
    "--taps-head-layers",
    type=int,
    help="taps, staps: the network's last layers that form the head (default: the paper's).",
)
@click.option(
    "--taps-steps", type=int, help="taps, staps: PGD steps in the feature box (default: 20)."
)
@click.option(
    "--attack-steps", type=int, help="PGD steps of the training attack (default: the paper's)."
)
@click.option(
    "--attack-step-size",
    type=float,
    help="PGD step as a fraction of the attack box's half-width (default: the paper's).",
)
@click.option(
    "--attack-restarts", type=int, help="Random starts of the training attack. [default: 1]"
)
@click.option(
    "--attack-start",
    type=click.Choice([s.value for s in AttackStart]),
    help="Where the training attack starts: random in the box, or its centre. "
    "[default: random, as the papers]",
)
@click.option(
    "--attack-eps-factor",
    type=float,
    help="mtl-ibp, cc-ibp, exp-ibp: the attack searches eps times this (default: the paper's).",
)
@click.option(
    "--l1",
    type=float,
    help="Coefficient of the L1 penalty on the weights, summed as the method's paper sums "
    "it (default: the paper's; 0 for fast, vanilla, crown-ibp).",
)
@click.option("--crop-padding", type=int, help="Random crop after edge padding (0: none).")
@click.option("--flip/--no-flip", default=None, help="Random horizontal flips.")
@click.option("--num-train", type=int, help="Use only the first N training images.")
@click.option("--val-size", type=int, help="Validation images carved from the training data.")
@click.option("--seed", type=int, help="Seed of initialization, split and batches. [default: 0]")
@click.option("--device", help="auto, cpu or cuda. [default: auto]")
@click.option("--threads", type=int, help="CPU threads for torch (default: torch's choice).")
@click.option("--resume", is_flag=True, default=None, help="Continue the run in --out-dir.")
@click.option("--eval-batch-size", "--test-batch-size", "eval_batch_size", type=int)
@click.option(
    "--final-eval/--no-final-eval",
    default=None,
    help="Evaluate best.pth on the test set at the end. [default: on]",
)
@click.option("--eval-methods", callback=_methods, help="Bound methods of the final evaluation.")
@click.option("--pgd-steps", type=int, help="PGD steps of the final evaluation. [default: 20]")
@click.option(
    "--test-samples", type=int, help="Test images of the final evaluation (default: all)."
)
@click.option(
    "--results",
    "results_csv",
    type=click.Path(dir_okay=False),
    help="Append the final evaluation row here (default: OUT_DIR/results.csv).",
)
@click.option(
    "--nproc",
    type=click.IntRange(min=1),
    help="Start this many processes with torch.distributed.run (torchrun --nproc-per-node).",
)
@seed_only_options
@click.pass_context
def train_command(ctx: click.Context, nproc: int | None, **options: Any) -> None:
    """Train a certifiably robust classifier with IBP and a short warmup."""  # fmt: skip
    if nproc is not None and nproc > 1 and "WORLD_SIZE" not in os.environ:
        ctx.exit(_relaunch(ctx, nproc))
    from training.run import train

    config = build_config(**options)
    console = Console(stderr=True)
    try:
        with _progress(console) as callbacks:
            result = train(config, callbacks)
    except SoundnessError as exc:  # in the final evaluation
        write_soundness_evidence(exc, None, Path(config.out_dir))
        raise
    if not result.is_main:
        return  # rank > 0 under torchrun: rank 0 reports
    b = result.best
    console.print(
        f"best epoch {b.epoch}: validation IBP-verified error {b.val_verified_err:.4f}, "
        f"clean error {b.val_clean_err:.4f} ({result.seconds:.0f} s)"
    )
    if result.evaluation is not None:
        Console().print(result.evaluation.table())
        click.echo(f"wrote {result.results_path}", err=True)
    click.echo(f"wrote {result.best_path}, {result.last_path}, {result.log_path}", err=True)


def build_config(
    preset: str | None = None,
    config_file: str | None = None,
    scheduler_opts: tuple[int, int] | None = None,
    **options: Any,
) -> TrainConfig:
    """The run's settings from the command's parsed options (``ctx.params`` without
    ``nproc``), without training: stored run (``--resume``), then preset, then the
    ``--config`` file, then the flags."""
    from training.presets import resolve_config

    given = {name: value for name, value in options.items() if value is not None}
    if scheduler_opts is not None:
        if "schedule_start" in given or "schedule_length" in given:
            raise UsageError(
                "sets what `schedule_start` and `schedule_length` set: give one or the other",
                param="scheduler_opts",
            )
        given["schedule_start"], given["schedule_length"] = scheduler_opts
    return resolve_config(preset, config_file, **given)


def config_from_args(args: Sequence[str]) -> TrainConfig:
    """The settings ``certify train ARGS`` would train with, resolved without training
    (click's errors for bad flags, the library's for bad settings)."""
    ctx = train_command.make_context("train", list(args))
    params = dict(ctx.params)
    params.pop("nproc", None)
    return build_config(**params)


def _relaunch(ctx: click.Context, nproc: int) -> int:
    """Run this command again in ``nproc`` processes under torch.distributed.run."""
    args = _without_nproc(ctx.meta["certify.train.args"])
    verbose = (ctx.parent.params.get("verbose") or 0) if ctx.parent else 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc-per-node={nproc}", "-m", "certify", *["-v"] * verbose, "train", *args]
    return subprocess.run(cmd, check=False).returncode


def _without_nproc(args: list[str]) -> list[str]:
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


@contextlib.contextmanager
def _progress(console: Console) -> Iterator[Any]:
    """Rich progress bars: one per epoch with the current eps and loss."""
    from training.run import RunInfo, TrainCallbacks

    columns = (
        TextColumn("{task.description:<12}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, disable=not console.is_terminal) as bar:
        tasks: dict[Any, Any] = {}

        def on_start(info: RunInfo) -> None:
            what = "resuming at" if info.resumed else "starting at"
            console.print(
                f"{info.num_train} training and {info.num_val} validation images, "
                f"{info.batches_per_epoch} batches per epoch on {info.device}; "
                f"{what} epoch {info.first_epoch} of {info.epochs}"
            )

        def on_batch(p) -> None:
            if p.epoch not in tasks:
                tasks[p.epoch] = bar.add_task(f"epoch {p.epoch}", total=p.num_batches, status="")
            status = f"eps {p.eps:.5f}  loss {p.loss:.4f}"
            bar.update(tasks[p.epoch], advance=1, status=status)

        def on_epoch(row: EpochRow) -> None:
            if row.epoch in tasks:
                bar.remove_task(tasks.pop(row.epoch))
            console.print(_epoch_line(row))

        def on_eval(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage[:12], total=total, status="test set")
            bar.advance(tasks[stage], done)

        yield TrainCallbacks(on_start, on_batch, on_epoch, on_eval)


def _epoch_line(row: EpochRow) -> str:
    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    star = " *" if row.best else ""
    return (
        f"epoch {row.epoch:>3}  eps {row.eps:.5f}  lr {row.lr:.2e}  loss {fmt(row.loss)}  "
        f"train err {fmt(row.train_clean_err)}/{fmt(row.train_verified_err)}  "
        f"val err {fmt(row.val_clean_err)}/{fmt(row.val_verified_err)}  "
        f"{row.epoch_seconds:.1f}s{star}"
    )
