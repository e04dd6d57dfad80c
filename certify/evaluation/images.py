"""Evaluating a model on images in memory: clean predictions, PGD and the margin lower
bounds of the bound methods, in chunks that fit in memory.

Two modes (:class:`EvalMode`). The **cascade** (the default) decides each image with the
cheapest stage that can: the clean prediction, then IBP, then CROWN-IBP, then PGD on the
images still open, then CROWN, then alpha-CROWN (the stages of the methods asked for,
in that order). An image leaves as soon as it is misclassified, verified or attacked.
A sample of the verified images is attacked too, as a check of the bounds
(:func:`_self_check`). **Every method** runs each method, and PGD, on every image, for
tables with one column per method.

:func:`evaluate_images` returns the per-image :class:`~certify.evaluation.outcomes.SampleOutcomes`
and the seconds each stage took. It reads no files: :mod:`certify.pipeline` loads the
model and the data, and the training loop validates with its own interval pass.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch
from torch import nn

from certify.bounds.bab import BabVerdict, branch_and_bound
from certify.bounds.bab.beta_crown import Optimization
from certify.bounds.margins import BoundMethod, MarginBounder
from certify.bounds.methods import Chunking
from certify.evaluation.attack import pgd_attack
from certify.evaluation.carried import CarriedVerdicts
from certify.evaluation.config import EvalConfig, EvalMode
from certify.evaluation.counterexamples import (
    Counterexample,
    CounterexampleFinder,
    double_precision_twin,
)
from certify.evaluation.memory import chunk_size
from certify.evaluation.outcomes import PGD_STAGE, SampleOutcomes

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]
"""Called as ``progress(stage, images_just_done, images_in_stage)`` after every batch."""


# The self-check of the cascade attacks verified images until it has taken this share
# of the rest of the run (always at least its first chunk).
CHECK_SHARE = 0.1
_FIRST_CHECK_CHUNK = 8

# Methods that back-substitute through every layer for every ReLU layer: their memory
# grows far faster than IBP's, so they get smaller chunks, chosen from the memory at hand
# (certify.evaluation.memory) up to this many images unless the caller fixes them.
DEFAULT_CROWN_CHUNK = 32
# Subdomains branch and bound bounds at once, at most, when memory allows.
LARGEST_BAB_BATCH = 256


def stages(methods: tuple[BoundMethod, ...]) -> list[str]:
    """The stages of the cascade after the clean prediction, in order of cost."""
    cheap = [m.value for m in BoundMethod if m in methods and m.info.chunking is Chunking.BATCH]
    dear = [m.value for m in BoundMethod if m in methods and m.info.chunking is not Chunking.BATCH]
    return [*cheap, PGD_STAGE, *dear]


def evaluate_images(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    config: EvalConfig,
    device: torch.device,
    first_index: int = 0,
    progress: ProgressFn | None = None,
    carried: CarriedVerdicts | None = None,
    bounder: MarginBounder | None = None,
) -> tuple[SampleOutcomes, dict[str, float]]:
    """Evaluate the eps-balls of ``images`` in ``config.mode`` (``first_index`` is the
    index of the first image: it seeds PGD's starts); return the outcomes and the seconds
    of each stage. ``config.start`` and ``config.num_samples`` are the caller's: every
    image given is evaluated. ``carried`` (a cascade's only) holds what other radii of
    an eps sweep proved of the images: those the cascade then decides without running
    the stage again (:mod:`certify.evaluation.carried`). ``bounder`` is one built
    before for the same model, device and options (building one is not free)."""
    run = _ImageRun(
        model.eval().to(device), images, labels, eps, config, device, first_index, progress,
        carried, bounder,
    )  # fmt: skip
    if config.mode is EvalMode.EVERY_METHOD:
        outcomes, seconds = run.every_method()
    else:
        outcomes, seconds = run.cascade()
    if config.radius_tolerance is not None:
        run.radii(outcomes)
    return outcomes, seconds


class _ImageRun:
    """One evaluation of a batch of images in memory."""

    def __init__(
        self,
        model: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        eps: float,
        config: EvalConfig,
        device: torch.device,
        first_index: int,
        progress: ProgressFn | None,
        carried: CarriedVerdicts | None = None,
        bounder: MarginBounder | None = None,
    ) -> None:
        self.model, self.images, self.labels = model, images, labels
        self.carried = carried
        self.eps, self.config, self.device, self.progress = eps, config, device, progress
        self.indices = torch.arange(first_index, first_index + len(images))
        self.seconds: dict[str, float] = {}
        self._bounder = bounder
        self._chunks: dict[str, int] = {}

    @property
    def bounder(self) -> MarginBounder:
        if self._bounder is None:
            shape = tuple(self.images.shape[1:])
            self._bounder = MarginBounder(
                self.model, shape, self.device, alpha=self.config.alpha, bab=self.config.bab
            )
        return self._bounder

    def every_method(self) -> tuple[SampleOutcomes, dict[str, float]]:
        everything = torch.arange(len(self.images))
        predictions = self._predict()
        robust = self._attack(everything, "pgd")
        outcomes = SampleOutcomes(self.indices, self.labels.cpu(), predictions, robust)
        for method in self.config.methods:
            if method is BoundMethod.BAB:
                outcomes.margin_lower[method] = self._branch_and_bound(everything, outcomes)
            else:
                outcomes.margin_lower[method] = self._bound(everything, method)
        return outcomes, self.seconds

    def cascade(self) -> tuple[SampleOutcomes, dict[str, float]]:
        n = len(self.images)
        if self.config.methods:
            # Built first, so that a model the methods cannot bound is refused before any
            # work, whatever the images turn out to need.
            _ = self.bounder
        predictions = self._predict()
        correct = predictions == self.labels.cpu()
        decided = ["" if ok else "clean" for ok in correct.tolist()]
        outcomes = SampleOutcomes(
            self.indices, self.labels.cpu(), predictions, correct.clone(),
            pgd_run=torch.zeros(n, dtype=torch.bool), decided_by=decided,
        )  # fmt: skip
        if self.carried is not None:
            # Attacked at a smaller eps: no bound can verify it here, and PGD need not
            # look again.
            for i in (self.carried.attacked & correct).nonzero().squeeze(1).tolist():
                decided[i] = PGD_STAGE
                outcomes.pgd_robust[i] = False
        for stage in stages(self.config.methods):
            todo = torch.tensor([i for i in range(n) if not decided[i]], dtype=torch.long)
            todo = self._take_carried(stage, todo, outcomes, decided)
            if stage == PGD_STAGE:
                robust = self._attack(todo, PGD_STAGE)
                outcomes.pgd_run[todo] = True
                outcomes.pgd_robust[todo] = robust
                newly = todo[~robust]
            elif stage == BoundMethod.BAB:
                lower = outcomes.margin_lower.setdefault(
                    BoundMethod.BAB, torch.full((n,), float("nan"))
                )
                lower[todo] = self._branch_and_bound(todo, outcomes)
                attacked = torch.tensor(
                    [outcomes.bab_verdict[i] == BabVerdict.ATTACKED for i in todo.tolist()],
                    dtype=torch.bool,
                )
                newly = todo[(lower[todo] > 0) | attacked]
            else:
                method = BoundMethod(stage)
                lower = outcomes.margin_lower.setdefault(method, torch.full((n,), float("nan")))
                lower[todo] = self._bound(todo, method)
                newly = todo[lower[todo] > 0]
            for i in newly.tolist():
                decided[i] = stage
        self._self_check(outcomes)
        return outcomes, self.seconds

    def radii(self, outcomes: SampleOutcomes) -> None:
        """Each image's certified radius per bound method (branch and bound aside), into
        ``outcomes.radius``: the largest eps in [0, eps] that the method verifies, found by
        bisection until the unverified end lies within ``radius_tolerance`` of it (eps
        itself where the method verifies eps; 0 for a misclassified image). Every radius
        reported is one the method verified."""
        tolerance = self.config.radius_tolerance
        n = len(self.images)
        correct = outcomes.clean_correct.nonzero().squeeze(1)
        for method in self.config.methods:
            if method is BoundMethod.BAB:
                continue
            radius = torch.zeros(n)
            key = f"radius {method.value}"
            at_eps = self._bound(correct, method, torch.full((len(correct),), self.eps), key) > 0
            radius[correct[at_eps]] = self.eps
            which = correct[~at_eps]
            lo, hi = torch.zeros(len(which)), torch.full((len(which),), self.eps)
            while len(which) and float((hi - lo).max()) > tolerance:
                mid = (lo + hi) / 2
                verified = self._bound(which, method, mid, key) > 0
                lo, hi = torch.where(verified, mid, lo), torch.where(verified, hi, mid)
            radius[which] = lo
            outcomes.radius[method] = radius

    def _take_carried(
        self, stage: str, todo: torch.Tensor, outcomes: SampleOutcomes, decided: list[str]
    ) -> torch.Tensor:
        """The images of ``todo`` that ``stage`` still has to run on, once another radius
        has settled the rest (the images attacked at a smaller eps were decided before
        any stage). PGD skips the images verified at a larger eps: they are robust here,
        so it cannot succeed (``pgd_run`` stays False). A bound method decides the images
        it verified at a larger eps with the margin bound from there, valid here; the
        cheaper methods before it have run on them, as in a run of this eps alone."""
        if self.carried is None or len(todo) == 0:
            return todo
        carried = [self.carried.verified_by[i] for i in todo.tolist()]
        if stage == PGD_STAGE:
            return todo[torch.tensor([method is None for method in carried])]
        method = BoundMethod(stage)
        settled = torch.tensor([by is method for by in carried])
        if settled.any():
            lower = outcomes.margin_lower.setdefault(
                method, torch.full((len(self.images),), float("nan"))
            )
            lower[todo[settled]] = self.carried.margin[todo[settled]]
            if method is BoundMethod.BAB and outcomes.bab_verdict is None:
                outcomes.bab_verdict = [""] * len(self.images)
                outcomes.bab_seconds = torch.full((len(self.images),), float("nan"))
            for i in todo[settled].tolist():
                decided[i] = stage
                if method is BoundMethod.BAB:
                    outcomes.bab_verdict[i] = BabVerdict.VERIFIED.value
        return todo[~settled]

    def _self_check(self, outcomes: SampleOutcomes) -> None:
        """PGD on verified images, in a random order fixed by the seed: all of them with
        ``check_all``, else chunk after chunk (8 images, then doubling) until the check has
        taken :data:`CHECK_SHARE` of the time of the rest of the run. An attacked one makes
        the consistency check fail, naming it."""
        verified = outcomes.verified_any() & ~outcomes.pgd_run
        candidates = verified.nonzero().squeeze(1)
        order = torch.randperm(
            len(candidates), generator=torch.Generator().manual_seed(self.config.seed)
        )
        candidates = candidates[order]
        rest = sum(self.seconds.values())
        self.seconds["check"] = 0.0
        done, chunk = 0, _FIRST_CHECK_CHUNK
        while done < len(candidates):
            if not self.config.check_all and done and self.seconds["check"] >= CHECK_SHARE * rest:
                break
            part = candidates[done : done + chunk]
            robust = self._attack(part, "check")
            outcomes.pgd_run[part] = True
            outcomes.pgd_robust[part] = robust
            done += len(part)
            chunk *= 2

    def _predict(self) -> torch.Tensor:
        predictions = []

        def predict(start: int, stop: int) -> None:
            t0 = time.perf_counter()
            with torch.no_grad():
                x = self.images[start:stop].to(self.device)
                predictions.append(self.model(x).argmax(dim=1).cpu())
            self._add("clean", t0)
            self._report("clean", stop - start, len(self.images))

        _in_chunks(len(self.images), self.config.batch_size, "clean", predict)
        return torch.cat(predictions) if predictions else torch.zeros(0, dtype=torch.long)

    def _attack(self, which: torch.Tensor, stage: str) -> torch.Tensor:
        """PGD on images ``which`` (positions in the batch): whether each is robust."""
        results = []
        self.seconds.setdefault(stage, 0.0)

        def attack(start: int, stop: int) -> None:
            part = which[start:stop]
            x, y = self.images[part].to(self.device), self.labels[part].to(self.device)
            t0 = time.perf_counter()
            robust, _ = pgd_attack(
                self.model, x, y, self.eps, self.config.pgd, self.config.seed,
                self.indices[part],
            )  # fmt: skip
            # Only a chunk that completes counts: one that ran out of memory is redone.
            results.append(robust.cpu())
            self._add(stage, t0)
            self._report(stage, stop - start, len(which))

        _in_chunks(len(which), self.config.batch_size, stage, attack)
        return torch.cat(results) if results else torch.zeros(0, dtype=torch.bool)

    def _bound(
        self,
        which: torch.Tensor,
        method: BoundMethod,
        radii: torch.Tensor | None = None,
        key: str | None = None,
    ) -> torch.Tensor:
        """The smallest margin lower bound of each of images ``which``, over the eps-ball
        (or over the ball of each one's own radius in ``radii``); its seconds go to ``key``
        (default: the method's stage)."""
        chunk = self._chunk(which, method)
        key = key or method.value
        stage = f"{key} (chunks of {chunk})"
        self.seconds.setdefault(key, 0.0)
        results = []
        if len(which) == 0:
            return torch.zeros(0)
        bounder = self.bounder

        def bound(start: int, stop: int) -> None:
            part = which[start:stop]
            t0 = time.perf_counter()
            x = self.images[part]
            # One radius per image, broadcast over its pixels.
            eps = self.eps if radii is None else radii[start:stop].view(-1, *[1] * (x.ndim - 1))
            lower = bounder.lower_bounds(x, self.labels[part], eps, method)
            results.append(lower.min(dim=1).values.cpu())
            self._add(key, t0)
            self._report(stage, stop - start, len(which))

        _in_chunks(len(which), chunk, method.value, bound)
        return torch.cat(results)

    def _branch_and_bound(self, which: torch.Tensor, outcomes: SampleOutcomes) -> torch.Tensor:
        """Branch and bound on images ``which``, one at a time: the smallest margin lower
        bound of each, its verdict and seconds in ``outcomes``; an attacked image's
        counterexample goes to ``outcomes.counterexamples`` and it counts as attacked."""
        n = len(self.images)
        if outcomes.bab_verdict is None:
            outcomes.bab_verdict = [""] * n
            outcomes.bab_seconds = torch.full((n,), float("nan"))
        self.seconds.setdefault(BoundMethod.BAB.value, 0.0)
        results = []
        if len(which) == 0:
            return torch.zeros(0)
        split = self.bounder.split_bounder()
        shape = tuple(self.images.shape[1:])
        model64 = double_precision_twin(self.model, shape)
        batch = self.config.bab.batch or self._bab_batch(which)
        stage = f"bab ({self.config.bab.branching.value}, {batch} domains at once)"
        for i in which.tolist():
            t0 = time.perf_counter()
            image = self.images[i : i + 1].to(self.device)
            label = int(self.labels[i])
            index = int(self.indices[i])
            finder = CounterexampleFinder(
                self.model, model64, image, label, self.eps, index, self.config.seed
            )
            outcome = branch_and_bound(
                split, image, self.eps, self.bounder.margin_spec(self.labels[i : i + 1]),
                finder, branching=self.config.bab.branching, limits=self.config.bab.limits,
                batch=batch,
            )  # fmt: skip
            outcomes.bab_verdict[i] = outcome.verdict.value
            outcomes.bab_seconds[i] = outcome.seconds
            if outcome.verdict is BabVerdict.ATTACKED:
                outcomes.counterexamples[index] = Counterexample(
                    index, image[0].cpu(), outcome.counterexample[0].detach().cpu(), label
                )
                outcomes.pgd_robust[i] = False
                if outcomes.pgd_run is not None:
                    outcomes.pgd_run[i] = True
            results.append(outcome.lower)
            self._add(BoundMethod.BAB.value, t0)
            self._report(stage, 1, len(which))
        return torch.tensor(results)

    def _bab_batch(self, which: torch.Tensor) -> int:
        """Subdomains per beta-CROWN call that fit in memory (probed once, on copies of
        the first image's root)."""
        if "bab" not in self._chunks:
            split = self.bounder.split_bounder()
            i = int(which[0])
            image = self.images[i : i + 1].to(self.device)
            spec = self.bounder.margin_spec(self.labels[i : i + 1])
            root = split.root(image, self.eps, spec, Optimization(iterations=1))

            def probe(k: int) -> None:
                copies = root.select(torch.zeros(k, dtype=torch.long, device=root.lb.device))
                split.optimize(image, self.eps, spec, copies, Optimization(iterations=1))

            self._chunks["bab"] = chunk_size(probe, self.device, LARGEST_BAB_BATCH, "bab")
        return max(2, self._chunks["bab"])

    def _chunk(self, which: torch.Tensor, method: BoundMethod) -> int:
        """Images per call of ``method``: the batch size for IBP and CROWN-IBP; for the
        linear methods the caller's chunk, else what fits in memory (probed once)."""
        if method.info.chunking is Chunking.BATCH:
            return self.config.batch_size
        if self.config.crown_batch_size is not None:
            return self.config.crown_batch_size
        if method not in self._chunks:
            if len(which) < 2:
                return 1
            x, y = self.images[which[:2]], self.labels[which[:2]]
            eps = self.eps

            def probe(k: int) -> None:
                self.bounder.probe_memory(x[:k], y[:k], eps, method)

            self._chunks[method] = chunk_size(probe, self.device, DEFAULT_CROWN_CHUNK, method.value)
        return self._chunks[method]

    def _add(self, stage: str, t0: float) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t0

    def _report(self, stage: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(stage, done, total)


def _in_chunks(total: int, chunk: int, what: str, step: Callable[[int, int], None]) -> None:
    """Call ``step(start, stop)`` over ``[0, total)``; on running out of GPU memory, halve
    the chunk, say so, and redo the chunk that failed."""
    start = 0
    while start < total:
        stop = min(start + chunk, total)
        try:
            step(start, stop)
        except torch.OutOfMemoryError:
            if chunk == 1:
                raise
            chunk = max(1, chunk // 2)
            log.warning("%s ran out of GPU memory; going on with %d images at a time", what, chunk)
            torch.cuda.empty_cache()
            continue
        start = stop
