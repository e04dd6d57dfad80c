"""One epoch of certified training, and the evaluation of a split between epochs.

Per batch: eps_t comes from the schedule; while eps_t = 0 the loss is the clean
cross-entropy, afterwards the robust cross-entropy of the margin lower bounds, or, for
a method with an attack, its objective's loss (:mod:`training.objective`; each image
gets a seed for its random starts, the same in a resumed or distributed run). During
the warmup of ``fast`` and the methods built on it (epochs up to the end of the eps
ramp) the two regularizers are added with weight lambda * (1 - eps_t / eps_max); at
eps_t = 0 their bounds are taken at a tiny eps (1e-6), as in the seed. Gradients are
accumulated over ``grad_acc_steps`` chunks of each batch, the L1 penalty's
(:mod:`training.l1`) added once, their norm clipped, then Adam steps.

Under ``torchrun`` every process draws the same global batch, bounds its own contiguous
shard of it (in ``grad_acc_steps`` chunks) and the gradients are summed over processes,
each chunk weighted by its share of the global batch: the same gradient as one process
with ``grad_acc_steps`` = processes x chunks (BatchNorm statistics are per chunk in both).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor, nn

from certify.bounds.bounder import TrainingBounder
from certify.bounds.interval import IntervalNetwork
from certify.bounds.margins import margin_matrix
from certify.bounds.training_bounders import IBPBounder
from certify.core.eps_box import eps_box
from certify.core.errors import TrainingDivergedError
from certify.core.shard import SINGLE, Shard
from training.l1 import l1_norm, l1_reach
from training.losses import (
    clean_cross_entropy,
    clean_errors,
    robust_cross_entropy,
    verified_errors,
)
from training.methods import Method
from training.objective import AttackObjective
from training.regularizers import regularizer_weight, relu_states, warmup_regularizers
from training.schedulers import EpsSchedule


@dataclass(frozen=True)
class StepConfig:
    method: Method
    max_eps: float
    num_classes: int
    tol: float = 0.5
    reg_lambda: float = 0.5
    min_reg_eps: float = 1e-6
    grad_clip: float = 10.0
    grad_acc_steps: int = 1
    # The loss of a method with an attack (training.objectives).
    objective: AttackObjective | None = None
    # Seeds the attacks' random starts (one seed per image of each batch).
    seed: int = 0
    # The L1 penalty's coefficient, summed over the method's reach (training.l1).
    l1: float = 0.0


@dataclass(frozen=True)
class BatchProgress:
    """Reported after every batch."""

    epoch: int
    batch: int  # from 1
    num_batches: int
    eps: float
    loss: float


BatchCallback = Callable[[BatchProgress], None]


@dataclass
class Meter:
    """Sums of per-sample quantities; ``mean(name)`` is None for what was never seen."""

    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, value: float, count: int) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + value * count
        self.counts[name] = self.counts.get(name, 0) + count

    def mean(self, name: str) -> float | None:
        count = self.counts.get(name, 0)
        return self.sums[name] / count if count else None


@dataclass
class EpochStats:
    epoch: int
    eps: float  # eps of the epoch's last batch
    meter: Meter
    seconds: float


def train_epoch(
    model: nn.Module,
    bounder: TrainingBounder,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[tuple[Tensor, Tensor]],
    schedule: EpsSchedule,
    epoch: int,
    config: StepConfig,
    device: torch.device,
    on_batch: BatchCallback | None = None,
    shard: Shard = SINGLE,
) -> EpochStats:
    """Train for one epoch; returns averages of losses, errors and ReLU states (over the
    global batches when ``shard`` is one of several processes)."""
    start = time.perf_counter()
    bounder.train(True)
    meter = Meter()
    eps = 0.0
    regularize = config.method.builds_on_fast and epoch <= schedule.last_warmup_epoch
    params = [p for p in model.parameters() if p.requires_grad]
    for index, (x, y) in enumerate(batches):
        eps = schedule.eps(epoch, index)
        optimizer.zero_grad(set_to_none=True)
        total = len(y)
        lo, hi = shard.bounds(total)
        seeds = _sample_seeds(config.seed, epoch, index, total)[lo:hi]
        x, y = x[lo:hi].to(device), y[lo:hi].to(device)
        chunks = zip(
            x.tensor_split(config.grad_acc_steps),
            y.tensor_split(config.grad_acc_steps),
            seeds.tensor_split(config.grad_acc_steps),
            strict=True,
        )
        loss_sum = 0.0
        for xc, yc, sc in chunks:
            if len(yc) == 0:
                continue
            loss = chunk_loss(model, bounder, xc, yc, eps, regularize, config, meter, sc)
            if shard.world_size == 1:
                _check_finite("the loss", loss, epoch, index)
            (loss * len(yc) / total).backward()
            loss_sum += loss.item() * len(yc)
        if shard.world_size > 1:
            loss_sum = _all_reduce_gradients(params, loss_sum)
            # Checked after the sum, so that every process stops at the same batch.
            _check_finite("the loss", torch.tensor(loss_sum), epoch, index)
        if config.l1 > 0:
            # Once per step, after the processes' gradients are summed: each process
            # holds the same weights, so each adds the same gradient.
            penalty = config.l1 * l1_norm(model, l1_reach(config.method))
            penalty.backward()
            loss_sum += penalty.item() * total
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm=config.grad_clip)
        _check_finite("the gradient norm", norm, epoch, index)
        optimizer.step()
        if on_batch is not None:
            on_batch(BatchProgress(epoch, index + 1, schedule.epoch_length, eps, loss_sum / total))
    bounder.sync()
    if shard.world_size > 1:
        meter = _merge_meters(meter, shard)
    return EpochStats(epoch, eps, meter, time.perf_counter() - start)


def _sample_seeds(seed: int, epoch: int, index: int, total: int) -> Tensor:
    """One seed per image of a global batch, for the random starts of the attacks: the
    same whichever process or chunk takes the image, and in a resumed run."""
    base = ((seed * 1_000_003 + epoch) * 1_000_003 + index) * 4_099
    return (base + torch.arange(total, dtype=torch.int64)) % 2**62


def _all_reduce_gradients(params: list[nn.Parameter], loss_sum: float) -> float:
    """Sum the gradients (and the summed loss) over all processes, in one flat buffer."""
    for p in params:
        if p.grad is None:  # e.g. a process whose shard of a short last batch is empty
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads] + [grads[0].new_tensor([loss_sum])])
    dist.all_reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()
    return float(flat[-1])


def _merge_meters(meter: Meter, shard: Shard) -> Meter:
    parts: list[Meter | None] = [None] * shard.world_size
    dist.all_gather_object(parts, meter)
    merged = Meter()
    for part in parts:
        assert part is not None
        for name, value in part.sums.items():
            merged.sums[name] = merged.sums.get(name, 0.0) + value
            merged.counts[name] = merged.counts.get(name, 0) + part.counts[name]
    return merged


def _check_finite(what: str, value: Tensor, epoch: int, index: int) -> None:
    """Stop before a NaN or inf reaches the weights; the checkpoints on disk are those
    of the last complete epoch, which stays the last good one."""
    if not torch.isfinite(value).all():
        raise TrainingDivergedError(
            f"training diverged: {what} is {value.item()} at epoch {epoch}, batch {index + 1}; "
            "last.pth holds the last complete epoch: lower `lr` or `eps` and `resume`"
        )


def chunk_loss(
    model: nn.Module,
    bounder: TrainingBounder,
    x: Tensor,
    y: Tensor,
    eps: float,
    regularize: bool,
    config: StepConfig,
    meter: Meter,
    seeds: Tensor | None = None,
) -> Tensor:
    """The training loss of one chunk of a batch at ``eps`` (clean cross-entropy at
    eps = 0 without regularizers, else from the bounder's bounds, plus the warmup
    regularizers when ``regularize``); adds the chunk's statistics to ``meter``.
    ``seeds``, one per image, seed the random starts of the methods with an attack
    (by default the images' positions in the chunk)."""
    n = len(y)
    if eps <= 0 and not regularize:
        logits = model(x)
        loss = clean_cross_entropy(logits, y)
        meter.add("clean_ce", loss.item(), n)
        meter.add("clean_err", float(clean_errors(logits, y).float().mean()), n)
        meter.add("loss", loss.item(), n)
        return loss
    bound_eps = eps if eps > 0 else config.min_reg_eps
    spec = margin_matrix(y, config.num_classes)
    if eps > 0 and config.objective is not None:
        if not isinstance(bounder, IBPBounder):
            raise TypeError(f"{config.method} takes IBP bounds")
        if seeds is None:
            seeds = torch.arange(n, dtype=torch.int64)
        terms = config.objective.terms(model, bounder, x, y, eps, spec, seeds, regularize)
        loss, result, clean_logits = terms.loss, terms.result, terms.clean_logits
        for name, value in terms.stats.items():
            meter.add(name, value, n)
    else:
        result = bounder.bounds(x, bound_eps, spec)
        clean_logits = result.logits
        if eps > 0:
            loss = robust_cross_entropy(result.lower)
            meter.add("robust_ce", loss.item(), n)
            meter.add("verified_err", float(verified_errors(result.lower).float().mean()), n)
        else:
            loss = clean_cross_entropy(clean_logits, y)
    clean_ce = clean_cross_entropy(clean_logits, y)
    meter.add("clean_ce", clean_ce.item(), n)
    meter.add("clean_err", float(clean_errors(clean_logits, y).float().mean()), n)
    active, inactive = relu_states(result.pre_relu)
    meter.add("active", active, n)
    meter.add("inactive", inactive, n)
    if regularize:
        input_radius = result.input_bounds.radius if result.input_bounds is not None else None
        if input_radius is None:  # auto_LiRPA path: the pixel box, normalized
            input_radius = _input_radius(model, x, bound_eps)
        terms = warmup_regularizers(input_radius, result.pre_relu, config.tol)
        meter.add("reg_tightness", terms.tightness.item(), n)
        meter.add("reg_relu", terms.relu.item(), n)
        loss = loss + regularizer_weight(config.reg_lambda, eps, config.max_eps) * terms.total
    meter.add("loss", loss.item(), n)
    return loss


def _input_radius(model: nn.Module, x: Tensor, eps: float) -> Tensor:
    lower, upper = eps_box(x, eps)
    radius = (upper - lower) * 0.5
    normalize = getattr(model, "normalize", None)
    return radius / normalize.std if normalize is not None else radius


@dataclass
class SplitStats:
    clean_err: float
    verified_err: float
    robust_ce: float
    seconds: float


@torch.no_grad()
def evaluate_split(
    model: nn.Module,
    network: IntervalNetwork,
    images: Tensor,
    labels: Tensor,
    eps: float,
    num_classes: int,
    batch_size: int,
    device: torch.device,
) -> SplitStats:
    """Clean and IBP-verified error at ``eps`` in eval mode (BatchNorm: running stats)."""
    start = time.perf_counter()
    model.eval()
    meter = Meter()
    for i in range(0, len(labels), batch_size):
        x, y = images[i : i + batch_size].to(device), labels[i : i + batch_size].to(device)
        result = network(x, eps, margin_matrix(y, num_classes))
        meter.add("clean_err", float(clean_errors(result.logits, y).float().mean()), len(y))
        meter.add("verified_err", float(verified_errors(result.lower).float().mean()), len(y))
        meter.add("robust_ce", float(robust_cross_entropy(result.lower)), len(y))
    return SplitStats(
        meter.mean("clean_err") or 0.0,
        meter.mean("verified_err") or 0.0,
        meter.mean("robust_ce") or 0.0,
        time.perf_counter() - start,
    )
