"""The options of the costlier bound methods, as plain values: alpha-CROWN's
optimization (:class:`AlphaCrownOptions`) and branch and bound's limits, heuristic and
batch (:class:`BabOptions`).

They live apart from the code that uses them, importing nothing but
:mod:`certify.core.errors`, so that a configuration
(:class:`~certify.evaluation.config.EvalConfig`) and the CLI's defaults can name them
without loading the bounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from certify.core.errors import UsageError


@dataclass(frozen=True)
class AlphaCrownOptions:
    """The optimization of alpha-CROWN's ReLU lower slopes: Adam for ``iterations``
    steps at learning rate ``lr`` (decayed by 0.98 a step), auto_LiRPA's defaults."""

    iterations: int = 20
    lr: float = 0.5

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise UsageError(f"{self.iterations}: give at least 1", param="alpha_iterations")
        if not self.lr > 0:
            raise UsageError(f"{self.lr}: give a positive learning rate", param="alpha_lr")


class Branching(StrEnum):
    """Which unstable ReLU a subdomain of branch and bound splits on: the one with the
    best BaBSR score, or the best of a few candidates after one bound each (filtered
    smart branching)."""

    BABSR = "babsr"
    FSB = "fsb"


@dataclass(frozen=True)
class BabLimits:
    """When branch and bound gives up on an image: after ``timeout`` seconds, or before a
    round that would bring the subdomains bounded to more than ``max_domains``."""

    timeout: float = 60.0
    max_domains: int = 100_000

    def __post_init__(self) -> None:
        if not self.timeout > 0 or math.isnan(self.timeout):
            raise UsageError(f"{self.timeout}: give a positive number of seconds", param="timeout")
        if self.max_domains < 1:
            raise UsageError(f"{self.max_domains}: give at least 1", param="max_domains")


@dataclass(frozen=True)
class BabOptions:
    """Branch and bound as evaluation runs it: the limits, the branching heuristic, and
    the subdomains bounded at once (None: as many as fit in memory, up to 256)."""

    limits: BabLimits = BabLimits()
    branching: Branching = Branching.FSB
    batch: int | None = None

    def __post_init__(self) -> None:
        if self.batch is not None and self.batch < 2:
            raise UsageError(f"{self.batch}: give at least 2 subdomains", param="bab_batch")
