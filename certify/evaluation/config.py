"""How an evaluation runs: :class:`EvalConfig`, the one set of settings that
``certify.evaluate`` and ``certify eval`` share, with its defaults defined here once.

An evaluation is a model, a data set, an eps and an :class:`EvalConfig`: which bound
methods, in which :class:`EvalMode`, with which attack, alpha-CROWN and branch-and-bound
options, in chunks of which size, on which images, from which seed. The config is frozen
and typed: it parses its few text forms (``methods="ibp,crown"``, ``mode="cascade"``) when
it is built, and from there on enums and numbers travel. A setting at fault raises
:class:`~certify.core.errors.UsageError` naming it in ``param``, which the CLI turns into
its flag.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from certify.bounds.methods import DEFAULT_METHODS, BoundMethod, parse_methods
from certify.bounds.options import AlphaCrownOptions, BabLimits, BabOptions, Branching
from certify.core.choices import parse_choice
from certify.core.errors import UsageError
from certify.evaluation.attack import AttackLoss, PGDConfig, parse_losses
from certify.evaluation.modes import EvalMode

__all__ = [
    "DEFAULT_BATCH",
    "DEFAULT_PGD",
    "DEFAULT_RADIUS_TOLERANCE",
    "EvalConfig",
    "EvalMode",
    "attack_config",
    "config_from_flat",
]


# The attack of each mode when the caller does not choose: the cascade attacks only the
# images that the bounds before it left open, so a stronger attack costs little there.
DEFAULT_PGD = {
    EvalMode.CASCADE: PGDConfig(steps=100, restarts=2, losses=(AttackLoss.MARGIN, AttackLoss.CE)),
    EvalMode.EVERY_METHOD: PGDConfig(steps=100, restarts=1, losses=(AttackLoss.MARGIN,)),
}

# Images per chunk of the clean pass, IBP, CROWN-IBP and PGD.
DEFAULT_BATCH = 256
# The certified radius's bisection stops within this much of the unverified end: about a
# quarter of a grey level of 8-bit images.
DEFAULT_RADIUS_TOLERANCE = 0.001


@dataclass(frozen=True)
class EvalConfig:
    """The settings of an evaluation, all but the model, data set and eps.

    - ``methods``: the bound methods (a tuple of :class:`BoundMethod`, or text such as
      ``"ibp,crown,bab"``); ``bab`` brings ``alpha-crown`` along.
    - ``mode``: :class:`EvalMode`; ``check_all`` attacks every verified image of the
      cascade as a check of the bounds (default: a sample costing about a tenth of the run).
    - ``attack``: PGD's steps, restarts and losses (None: the mode's :data:`DEFAULT_PGD`;
      :attr:`pgd` gives the one that runs).
    - ``alpha``: alpha-CROWN's iterations and learning rate; ``bab``: branch and bound's
      time and subdomain limits, heuristic and batch.
    - ``batch_size``: images per chunk of the cheap stages; ``crown_batch_size``: per chunk
      of CROWN and alpha-CROWN (None: what fits in memory).
    - ``start`` and ``num_samples``: the test images ``[start, start + num_samples)``
      (None: to the end).
    - ``seed``: of PGD's random starts and of the self-check's sample.
    - ``radius_tolerance``: find each image's certified radius per bound method (the
      largest eps, up to the one evaluated, that the method verifies) by bisection to
      this tolerance (None: no radii). Branch and bound gets none: each step would be a
      complete verification.
    """

    methods: tuple[BoundMethod, ...] = DEFAULT_METHODS
    mode: EvalMode = EvalMode.CASCADE
    attack: PGDConfig | None = None
    alpha: AlphaCrownOptions = field(default_factory=AlphaCrownOptions)
    bab: BabOptions = field(default_factory=BabOptions)
    batch_size: int = DEFAULT_BATCH
    crown_batch_size: int | None = None
    start: int = 0
    num_samples: int | None = None
    seed: int = 0
    check_all: bool = False
    radius_tolerance: float | None = None

    def __post_init__(self) -> None:
        # An empty tuple asks for the clean prediction and PGD alone; empty text is a
        # mistake (a flag given nothing).
        if isinstance(self.methods, str) or self.methods:
            names = (
                self.methods if isinstance(self.methods, str) else [str(m) for m in self.methods]
            )
            object.__setattr__(self, "methods", tuple(parse_methods(names)))
        else:
            object.__setattr__(self, "methods", ())
        mode = parse_choice(EvalMode, self.mode, param="mode", what="mode")
        object.__setattr__(self, "mode", mode)
        for name in ("batch_size", "crown_batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"{value} images per batch: give at least 1", param=name)
        if self.num_samples is not None and self.num_samples < 1:
            raise UsageError(f"{self.num_samples}: give at least 1", param="num_samples")
        if self.start < 0:
            raise UsageError(f"{self.start}: give an index >= 0", param="start")
        # PGD's random starts mix the seed with each image's index into torch's 64-bit seed.
        if not 0 <= self.seed < 2**32:
            raise UsageError(f"{self.seed}: give a seed from 0 to 2**32 - 1", param="seed")
        tolerance = self.radius_tolerance
        if tolerance is not None and not (0 < tolerance < 1):
            raise UsageError(
                f"{tolerance}: give a tolerance between 0 and 1, e.g. 0.001",
                param="radius_tolerance",
            )

    @property
    def pgd(self) -> PGDConfig:
        """The attack that runs: ``attack``, or the mode's default."""
        return self.attack if self.attack is not None else DEFAULT_PGD[self.mode]

    def fingerprint(self) -> dict[str, Any]:
        """The settings that decide the per-image outcomes, as JSON values (chunk sizes
        and the image range aside: they change no image's outcome)."""
        pgd = self.pgd
        return {
            "methods": [m.value for m in self.methods],
            "mode": self.mode.value,
            "pgd": [pgd.steps, pgd.restarts, [x.value for x in pgd.losses]],
            "alpha": [self.alpha.iterations, self.alpha.lr],
            "bab": [self.bab.limits.timeout, self.bab.limits.max_domains,
                    self.bab.branching.value],
            "seed": self.seed,
            "check_all": self.check_all,
            "radius_tolerance": self.radius_tolerance,
        }  # fmt: skip


def config_from_flat(
    methods: str | Sequence[str] = DEFAULT_METHODS,
    every_method: bool = False,
    pgd_steps: int = DEFAULT_PGD[EvalMode.CASCADE].steps,
    pgd_restarts: int | None = None,
    pgd_loss: str | None = None,
    alpha_iterations: int = AlphaCrownOptions.iterations,
    alpha_lr: float = AlphaCrownOptions.lr,
    timeout: float = BabLimits.timeout,
    max_domains: int = BabLimits.max_domains,
    branching: str | Branching = Branching.FSB,
    bab_batch: int | None = None,
    batch_size: int = DEFAULT_BATCH,
    crown_batch_size: int | None = None,
    start: int = 0,
    num_samples: int | None = None,
    seed: int = 0,
    check_all: bool = False,
    radius_tolerance: float | None = None,
) -> EvalConfig:
    """The config of flat values, one per setting: the flags of ``certify eval`` and the
    keyword form of ``certify.evaluate`` of earlier releases."""
    mode = EvalMode.EVERY_METHOD if every_method else EvalMode.CASCADE
    return EvalConfig(
        methods=methods,
        mode=mode,
        attack=attack_config(mode, pgd_steps, pgd_restarts, pgd_loss),
        alpha=AlphaCrownOptions(alpha_iterations, alpha_lr),
        bab=BabOptions(
            BabLimits(float(timeout), max_domains),
            parse_choice(Branching, branching, param="branching", what="heuristic"),
            bab_batch,
        ),
        batch_size=batch_size,
        crown_batch_size=crown_batch_size,
        start=start,
        num_samples=num_samples,
        seed=seed,
        check_all=check_all,
        radius_tolerance=radius_tolerance,
    )


def attack_config(
    mode: EvalMode | str,
    steps: int = DEFAULT_PGD[EvalMode.CASCADE].steps,
    restarts: int | None = None,
    losses: str | Sequence[AttackLoss] | None = None,
) -> PGDConfig:
    """PGD with the mode's default restarts and losses where those are None (the CLI
    leaves both to the mode unless they are given)."""
    default = DEFAULT_PGD[parse_choice(EvalMode, mode, param="mode", what="mode")]
    if isinstance(losses, str):
        losses = parse_losses(losses)
    return PGDConfig(
        steps=steps,
        restarts=default.restarts if restarts is None else restarts,
        losses=default.losses if losses is None else tuple(losses),
    )
