"""Flags of the seed's ``train.py`` that ``certify train`` does not implement.

``certify train`` takes the seed's flags for what it implements as aliases of its own
options (``--num-epochs`` for ``--epochs`` and so on, in :mod:`certify.commands.train_command`).
Every other flag of the seed's parser is declared here as a hidden option that refuses
itself by name with one line (exit 2), so that a command copied from the seed does not
run with part of it silently dropped. A few are accepted at the one value that is what
certify does anyway (``--opt Adam``, ``--weight-decay 0``, ...); they change nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class SeedFlag:
    """One flag of the seed's parser: its names, why certify refuses it, and for a flag
    with a value, the value that matches certify's behaviour (accepted, no effect; a
    flag without a value is accepted when ``accepted`` is set at all)."""

    names: tuple[str, ...]
    reason: str
    takes_value: bool = True
    accepted: str | None = None

    def accepts(self, value: str) -> bool:
        if self.accepted is None:
            return False
        if not self.takes_value:
            return True
        try:
            return float(value) == float(self.accepted)
        except ValueError:
            return value == self.accepted

    def message(self) -> str:
        text = f"{self.names[0]} (a flag of the seed's train.py) is not implemented: {self.reason}"
        if self.accepted is not None and self.takes_value:
            text += f"; only {self.names[0]} {self.accepted} is accepted"
        return text


def _flag(*names: str, reason: str) -> SeedFlag:
    return SeedFlag(names, reason, takes_value=False)


_USE_EVAL = "use `certify eval` on the trained checkpoint"
_USE_RESUME = "--resume continues the run in --out-dir"
_OTHER_METHOD = "certify implements the methods fast, vanilla and crown-ibp only"

# The seed's parser (argparser.py), less the flags certify implements.
SEED_ONLY: tuple[SeedFlag, ...] = (
    _flag("--debug", reason="certify has no debugger stops"),
    _flag("--verify", "--infer", reason=_USE_EVAL),
    SeedFlag(("--load",), _USE_RESUME),
    SeedFlag(("--log-interval",), "certify shows its progress every batch"),
    _flag("--loss-fusion", reason="certify's CROWN-IBP bounds the margins, without loss fusion"),
    _flag("--auto-load", reason=_USE_RESUME),
    SeedFlag(("--test-interval",), "certify validates after every epoch", accepted="1"),
    _flag("--plot", reason="use `certify plot` on the run folder"),
    SeedFlag(("--bound-type",), "use --method crown-ibp for CROWN-IBP bounds", accepted="IBP"),
    _flag("--natural", reason="certify trains for certified robustness only"),
    _flag("--check-nan", reason="certify always stops with an error at a NaN loss or gradient"),
    SeedFlag(("--w-scale-cls",), "certify does not rescale the last layer's weights"),
    _flag("--multi-gpu", reason="use --nproc N (torch.distributed)"),
    _flag("--save-all", reason="certify keeps last.pth and best.pth"),
    SeedFlag(("--model-params",), "certify's command line takes no architecture options"),
    SeedFlag(("--mode",), "certify trains for certified robustness only", accepted="cert"),
    _flag("--eval", reason=_USE_EVAL),
    _flag("--complete", reason=_USE_EVAL),
    SeedFlag(("--random-crop",), "use --crop-padding (the seed's data pipeline ignores it)"),
    # The seed's CIFAR pipeline keeps its flips without augmentation; it drops the crops.
    _flag("--no-data-aug", reason="use --crop-padding 0 (the seed keeps the flips)"),
    SeedFlag(("--min-eps",), "certify's eps follows the schedule from 0", accepted="0"),
    SeedFlag(("--init-eps",), "certify's eps schedules start at 0"),
    _flag("--fix-eps", reason="--scheduler_opts start=1,length=0 trains at full eps throughout"),
    SeedFlag(("--train-eps-mul",), "certify trains at the scheduled eps", accepted="1"),
    SeedFlag(("--opt",), "certify trains with Adam", accepted="Adam"),
    SeedFlag(("--momentum",), "certify trains with Adam"),
    SeedFlag(("--weight-decay", "--wd"), "certify's Adam has no weight decay", accepted="0"),
    SeedFlag(("--loss",), "certify trains with the cross-entropy loss", accepted="ce"),
    SeedFlag(("--ls",), "certify's robust loss has no label smoothing", accepted="0"),
    SeedFlag(
        ("--reg-obj", "--pre-obj"), "--method fast uses both regularizers, relu and tightness"
    ),
    _flag("--reg", reason="--method fast turns the warmup regularizers on"),
    _flag("--vol-reg", reason=_OTHER_METHOD),
    SeedFlag(("--colt-coeff",), _OTHER_METHOD),
    _flag("--xiao_reg", reason=_OTHER_METHOD),
    SeedFlag(("--xiao_coeff",), _OTHER_METHOD),
    SeedFlag(("--l1_coeff",), _OTHER_METHOD),
    SeedFlag(("--num-reg-epochs",), "the regularizers of --method fast last through the warmup"),
    _flag("--no-reg-dec", reason="the regularizers of --method fast decay with eps"),
    _flag("--manual-init", reason="--method fast uses the IBP initialization"),
    SeedFlag(("--init-method",), "--method fast uses the IBP initialization", accepted="ibp"),
    _flag("--kaiming_init", reason="--method vanilla keeps PyTorch's initialization"),
    _flag("--no-init", reason=_OTHER_METHOD),
    SeedFlag(("--length",), "give --scheduler_opts, --lr-decay-milestones and --num-epochs"),
    _flag("--lip", reason="certify does not train Lipschitz networks"),
    _flag("--global-lip", reason="certify does not train Lipschitz networks"),
    # What certify does anyway: accepted, no effect.
    SeedFlag(("--no-loss-fusion",), "certify has no loss fusion", takes_value=False, accepted=""),
)


def seed_only_options(command: F) -> F:
    """Add every flag of :data:`SEED_ONLY` to ``command`` as a hidden option that refuses
    itself (one line, exit 2) unless given its accepted value."""
    for flag in reversed(SEED_ONLY):
        name = "seed_" + flag.names[0].lstrip("-").replace("-", "_")
        command = click.option(
            *flag.names,
            name,
            is_flag=not flag.takes_value,
            hidden=True,
            expose_value=False,
            callback=_checker(flag),
        )(command)
    return command


def hidden_names() -> frozenset[str]:
    """Every name of the flags in :data:`SEED_ONLY`."""
    return frozenset(name for flag in SEED_ONLY for name in flag.names)


def _checker(flag: SeedFlag) -> Callable[[click.Context, click.Parameter, Any], None]:
    def check(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if value is None or value is False:
            return  # not given
        if not flag.accepts(str(value)):
            raise click.UsageError(flag.message())

    return check
