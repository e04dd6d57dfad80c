"""The branch-and-bound loop of one image.

The search goes in rounds: every open subdomain is split in two on the neuron the
branching heuristic picks, the children are bounded with beta-CROWN (in batches of
``batch`` subdomains, warm-started from their parent), and the children whose every margin
is proven positive are dropped. After each round the worst subdomains' minimizing corners
go to the caller's counterexample search. The image is verified when no subdomain is
left, attacked when the caller confirms a counterexample.

Because every open subdomain is split in each round, the subdomains a round produces do
not depend on how they are batched, and the limit on the number of subdomains
(:attr:`BabLimits.max_domains`, checked before a round starts) stops every run of the
same image at the same place, on any machine. The time limit is checked between batches.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import torch
from torch import Tensor

from certify.bounds.bab.beta_crown import Optimization, OutOfTime, SplitBounder
from certify.bounds.bab.branching import choose_babsr, choose_fsb
from certify.bounds.bab.domains import Domains
from certify.bounds.options import BabLimits, Branching

_DEFAULT_LIMITS = BabLimits()

CounterexampleSearch = Callable[[Tensor, int], Tensor | None]
"""Called as ``search(points, round)`` with candidate inputs (P x image shape) inside the
eps-box; returns a confirmed counterexample (image shape), or None."""


class BabVerdict(StrEnum):
    VERIFIED = "verified"
    ATTACKED = "attacked"
    TIMEOUT = "timeout"  # the time limit ran out
    DOMAIN_LIMIT = "domain-limit"  # the next round would pass the limit on subdomains


@dataclass(frozen=True)
class BabOutcome:
    verdict: BabVerdict
    seconds: float
    domains: int  # subdomains bounded, the root included
    # Per margin, the smallest lower bound over every subdomain, open or dropped: a sound
    # lower bound over the whole eps-ball (positive everywhere when verified).
    margins: Tensor
    counterexample: Tensor | None = None

    @property
    def lower(self) -> float:
        return float(self.margins.min())


# alpha-CROWN at the root (certify's alpha-CROWN learning rate), then beta-CROWN on the
# subdomains (alpha-beta-CROWN's defaults for branch and bound).
ROOT_OPTIMIZATION = Optimization(lr_alpha=0.5)
SPLIT_OPTIMIZATION = Optimization()

# Subdomains whose minimizing corners are attacked after each round.
_ATTACKED_PER_ROUND = 8
# A subdomain with every ReLU split is bounded exactly by beta-CROWN at the optimum of the
# multipliers; it is optimized this many times longer before it is given up.
_EXHAUSTED_EFFORT = 10


def branch_and_bound(
    bounder: SplitBounder,
    image: Tensor,
    eps: float,
    spec: Tensor,
    find_counterexample: CounterexampleSearch,
    *,
    branching: Branching = Branching.FSB,
    limits: BabLimits = _DEFAULT_LIMITS,
    batch: int = 64,
    root_optimization: Optimization = ROOT_OPTIMIZATION,
    optimization: Optimization = SPLIT_OPTIMIZATION,
    clock: Callable[[], float] = time.perf_counter,
) -> BabOutcome:
    """Decide whether every margin of ``spec`` (1 x M x K) stays positive over the eps-ball
    of ``image`` (1 x ...) clipped to [0, 1]."""
    search = _Search(
        bounder, image, eps, spec, find_counterexample, branching, limits, batch,
        optimization, clock,
    )  # fmt: skip
    return search.run(root_optimization)


class _Search:
    """The state of one image's search: what is proven, what is left, what it cost."""

    def __init__(
        self,
        bounder: SplitBounder,
        image: Tensor,
        eps: float,
        spec: Tensor,
        find_counterexample: CounterexampleSearch,
        branching: Branching,
        limits: BabLimits,
        batch: int,
        optimization: Optimization,
        clock: Callable[[], float],
    ) -> None:
        self.bounder, self.image, self.eps, self.spec = bounder, image, eps, spec
        self.find_counterexample = find_counterexample
        self.branching, self.limits, self.batch = branching, limits, batch
        self.optimization = optimization
        self.clock, self.start = clock, clock()
        self.seen = 0
        # Per margin, the smallest bound over the subdomains dropped so far.
        self.proven = torch.full((spec.shape[1],), math.inf, device=spec.device)
        # The margins the root does not prove: the only ones branch and bound works on.
        self.todo = torch.ones(spec.shape[1], dtype=torch.bool, device=spec.device)

    def run(self, root_optimization: Optimization) -> BabOutcome:
        """Bound the whole ball (the root); search its subdomains unless the root decides."""
        image, eps, spec = self.image, self.eps, self.spec
        open_ = self.bounder.root(image, eps, spec, root_optimization, optimized_intermediate=True)
        self.seen = 1
        if bool((open_.lb > 0).all()):
            self.proven = open_.lb[0].clone()
            return self.outcome(BabVerdict.VERIFIED, None)
        found = self.find_counterexample(self.bounder.primal_points(image, eps, spec, open_), 0)
        if found is not None:
            return self.outcome(BabVerdict.ATTACKED, open_, found)
        return self.rounds(self.leave_out_proven(open_))

    def outcome(
        self, verdict: BabVerdict, domains: Domains | None, found: Tensor | None = None
    ) -> BabOutcome:
        margins = self.proven.clone()
        if domains is not None and len(domains):
            todo = self.todo
            margins[todo] = torch.minimum(margins[todo], domains.lb.min(dim=0).values)
        seconds = self.clock() - self.start
        return BabOutcome(verdict, seconds, self.seen, margins.detach().cpu(), found)

    def out_of_time(self) -> bool:
        return self.clock() - self.start > self.limits.timeout

    def leave_out_proven(self, root: Domains) -> Domains:
        """A margin the root proves is proven on every subdomain: the rest of the search
        works on the others only."""
        self.todo = root.lb[0] <= 0
        self.proven = torch.where(self.todo, self.proven, root.lb[0])
        self.spec = self.spec[:, self.todo]
        return root.margins(self.todo)

    def drop_proven(self, domains: Domains) -> Domains:
        done = domains.worst > 0
        if done.any():
            todo = self.todo
            self.proven[todo] = torch.minimum(self.proven[todo], domains.lb[done].min(dim=0).values)
        return domains.select((~done).nonzero().squeeze(1))

    def rounds(self, open_: Domains) -> BabOutcome:
        """Split every open subdomain, round after round, until none is left or a limit
        or a counterexample ends the search."""
        round_ = 0
        while len(open_):
            round_ += 1
            if self.seen + 2 * len(open_) > self.limits.max_domains:
                return self.outcome(BabVerdict.DOMAIN_LIMIT, open_)
            try:
                splittable, unsplittable = self._split_all(open_)
            except OutOfTime:
                return self.outcome(BabVerdict.TIMEOUT, open_)
            parts = [d for d in (splittable, unsplittable) if d is not None and len(d)]
            if not parts:
                return self.outcome(BabVerdict.VERIFIED, None)
            open_ = Domains.concatenate(parts)
            worst = open_.worst.argsort()[:_ATTACKED_PER_ROUND]
            points = self.bounder.primal_points(
                self.image, self.eps, self.spec, open_.select(worst)
            )
            found = self.find_counterexample(points, round_)
            if found is not None:
                return self.outcome(BabVerdict.ATTACKED, open_, found)
            if splittable is None or not len(splittable):
                # Only subdomains with every ReLU split are left, and longer optimization
                # did not prove them: more rounds would change nothing.
                return self.outcome(BabVerdict.DOMAIN_LIMIT, open_)
        return self.outcome(BabVerdict.VERIFIED, None)

    def _split_all(self, open_: Domains) -> tuple[Domains | None, Domains | None]:
        """One round: the children of every open subdomain that are still open, and the
        subdomains with nothing left to split that longer optimization did not prove.
        Raises :class:`OutOfTime` when the time limit runs out."""
        image, eps, spec = self.image, self.eps, self.spec
        opt = self.optimization
        exhausted_effort = Optimization(
            opt.iterations * _EXHAUSTED_EFFORT, opt.lr_alpha, opt.lr_beta
        )
        step = max(1, self.batch // 2)
        kept: list[Domains] = []
        stuck: list[Domains] = []
        for first in range(0, len(open_), step):
            if self.out_of_time():
                raise OutOfTime
            part = open_.select(torch.arange(first, min(first + step, len(open_))))
            layer, neuron = self._choose(part)
            exhausted = layer < 0
            if exhausted.any():
                done = part.select(exhausted.nonzero().squeeze(1))
                self.bounder.optimize(image, eps, spec, done, exhausted_effort, self.out_of_time)
                stuck.append(self.drop_proven(done))
                self.seen += len(done)
                rows = (~exhausted).nonzero().squeeze(1)
                part, layer, neuron = part.select(rows), layer[rows], neuron[rows]
            if not len(part):
                continue
            children = part.split(layer, neuron)
            self.bounder.optimize(image, eps, spec, children, opt, self.out_of_time)
            self.seen += len(children)
            kept.append(self.drop_proven(children))
        splittable = Domains.concatenate(kept) if kept else None
        unsplittable = Domains.concatenate(stuck) if stuck else None
        return splittable, unsplittable

    def _choose(self, domains: Domains) -> tuple[Tensor, Tensor]:
        """The ReLU to split in each subdomain: (layer, neuron), layer -1 where none is
        left."""
        bounder, image, eps, spec = self.bounder, self.image, self.eps, self.spec
        # One pass with the subdomains' own slopes leaves each ReLU's coefficients behind.
        bounder.quick(image, eps, spec, domains)
        coefficients, biases = bounder.coefficients(), bounder.biases()
        if self.branching is Branching.BABSR:
            return choose_babsr(domains, coefficients, biases)

        def bound_children(children: Domains) -> Tensor:
            return bounder.quick(image, eps, spec, children).min(dim=1).values

        return choose_fsb(domains, coefficients, biases, bound_children)
