"""How much slower one epoch of certified training is than clean training, per method.

Trains the same model on the same data for one epoch of each ``--methods`` (default
``fast``) in the middle of the warmup (eps > 0 and both regularizers on, the most
expensive kind of epoch) and for one epoch of clean training through the same loop,
and prints each ratio to the clean epoch and to ``fast``'s, with the machine it was
measured on. Target for ``fast``: <= 2.5x. By default one thread and CPU time, so that
other processes on a shared machine do not distort the ratio. Like the ``certify``
command, it first tunes the allocator to keep freed memory (``certify.core.allocator``).
The methods with an attack take the paper's settings for the data set and eps;
``--set NAME=VALUE`` changes one (for example another tool's step counts, as
``docs/benchmarks.md`` compares with CTRAIN's ``benchmarks/ctrain_speed.py``).

It then times the phases of the same steps (the attack, the rest of the loss's
forward, backward, optimizer) and prints the floor that ``fast`` cannot go below on
this machine: as in auto_LiRPA, the BatchNorm statistics of the clean pass carry
gradient, so every layer runs three forwards and three backwards (clean values,
centre, radius) where a clean step runs one of each; the floor counts each of the
three as one clean forward and backward and adds one optimizer step.

    python benchmarks/train_speed.py --data-dir ../shared/data
    python benchmarks/train_speed.py --arch cnn --dataset cifar --batch-size 128 \
        --methods fast,mtl-ibp,cc-ibp,exp-ibp,sabr,taps,staps
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from certify.bounds.training_bounders import IBPBounder
from certify.core.allocator import keep_freed_memory
from certify.core.datasets import Dataset, get_spec, parse_dataset
from certify.core.devices import describe_device, resolve_device
from certify.core.eps import parse_eps
from certify.data import load_split
from model_zoo import create_model
from model_zoo.normalization import NormalizedModel
from training import expressive, sabr, taps
from training.data import Augmentation, Split, batches, epoch_length
from training.init import ibp_init
from training.loop import Meter, StepConfig, chunk_loss, train_epoch
from training.methods import Method
from training.objective import AttackObjective
from training.objectives import ENTRIES, objective_from, published_objective
from training.schedulers import EpsSchedule


@dataclass
class Phases:
    """Mean seconds per step of each phase."""

    attack: float  # the training attack of the methods with one
    forward: float  # the rest of the loss, bounds included
    backward: float
    optimizer: float  # gradient clipping and the Adam step

    @property
    def total(self) -> float:
        return self.attack + self.forward + self.backward + self.optimizer


@dataclass
class Measurement:
    epoch: float  # best of --repeats
    phases: Phases


class _Setup:
    """A fresh model, optimizer and schedule for one method, and the epoch's batches."""

    def __init__(self, args: argparse.Namespace, method: Method, split: Split) -> None:
        spec = get_spec(args.dataset)
        self.device = resolve_device(args.device)
        torch.manual_seed(0)
        self.model = NormalizedModel(
            create_model(args.arch, spec.channels, spec.size, spec.num_classes),
            spec.mean,
            spec.std,
        )
        if method.builds_on_fast:
            ibp_init(self.model)
        self.model.to(self.device)
        self.bounder = IBPBounder(self.model)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=5e-4)
        length = epoch_length(len(split), args.batch_size)
        # Clean training: the same loop with eps = 0 throughout (the ramp starts later).
        start = 1 if method.builds_on_fast else 10**6
        self.schedule = EpsSchedule(args.eps, start=start, length=3, epoch_length=length)
        objective = _objective(method, parse_dataset(args.dataset), args.eps, args.set)
        self.step = StepConfig(
            method, max_eps=args.eps, num_classes=spec.num_classes, objective=objective
        )
        generator = torch.Generator().manual_seed(0)
        self.data = list(batches(split, args.batch_size, generator, Augmentation()))

    def clock(self) -> Callable[[], float]:
        # CPU time, not wall time, when on the CPU with one thread: other processes on
        # a shared machine then do not distort the ratio.
        if self.device.type == "cpu" and torch.get_num_threads() == 1:
            return time.process_time
        return time.perf_counter

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def _objective(
    method: Method, dataset: Dataset, eps: float, overrides: list[str]
) -> AttackObjective | None:
    """The paper's objective, with the options of ``overrides`` (``NAME=VALUE``) that
    ``method`` takes set to their values: to time a method with another tool's settings."""
    paper = published_objective(method, dataset, eps)
    if paper is None or not overrides:
        return paper
    values: dict[str, object] = dict(paper.settings())
    for item in overrides:
        name, _, value = item.partition("=")
        if name in ENTRIES[method].options:
            values[name] = value
    return objective_from(method, values, dataset, eps)


# Epoch 2 of a run whose ramp spans epochs 1-3: eps > 0 and the regularizers on.
_EPOCH = 2
# TAPS and STAPS search the feature box only once the ramp is over (before, they take
# IBP's loss): epoch 5, at eps_max, is their most expensive kind.
_AFTER_WARMUP = {Method.TAPS: 5, Method.STAPS: 5}


def _epoch(method: Method) -> int:
    return _AFTER_WARMUP.get(method, _EPOCH)


def _measure(args: argparse.Namespace, method: Method, split: Split) -> Measurement:
    setup = _Setup(args, method, split)
    # The phase pass first: it also warms up the caches and the allocator, so that a
    # single timed epoch (--repeats 1) is not charged for them.
    phases = _phases(setup)
    clock = setup.clock()
    times = []
    for _ in range(args.repeats):
        setup.sync()
        t0 = clock()
        train_epoch(
            setup.model,
            setup.bounder,
            setup.optimizer,
            setup.data,
            setup.schedule,
            _epoch(setup.step.method),
            setup.step,
            setup.device,
        )
        setup.sync()
        times.append(clock() - t0)
    return Measurement(min(times), phases)


def _phases(setup: _Setup) -> Phases:
    """A pass over the epoch's batches, the same steps as ``train_epoch``'s, timed
    phase by phase."""
    clock = setup.clock()
    # As train_epoch decides it.
    epoch = _epoch(setup.step.method)
    regularize = setup.step.method.builds_on_fast and setup.schedule.last_warmup_epoch >= epoch
    params = list(setup.model.parameters())
    sums = [0.0, 0.0, 0.0]
    attack_seconds = [0.0]
    setup.bounder.train(True)
    for index, (x, y) in enumerate(setup.data):
        eps = setup.schedule.eps(epoch, index)
        seeds = torch.arange(len(y), dtype=torch.int64) + index * len(y)
        x, y = x.to(setup.device), y.to(setup.device)
        setup.optimizer.zero_grad(set_to_none=True)
        marks = [clock()]
        with _timed_attacks(setup, clock, attack_seconds):
            loss = chunk_loss(
                setup.model, setup.bounder, x, y, eps, regularize, setup.step, Meter(), seeds
            )
        setup.sync()
        marks.append(clock())
        loss.backward()
        setup.sync()
        marks.append(clock())
        torch.nn.utils.clip_grad_norm_(params, max_norm=setup.step.grad_clip)
        setup.optimizer.step()
        setup.sync()
        marks.append(clock())
        for i in range(3):
            sums[i] += marks[i + 1] - marks[i]
    steps = len(setup.data)
    attack = attack_seconds[0] / steps
    return Phases(attack, sums[0] / steps - attack, sums[1] / steps, sums[2] / steps)


@contextlib.contextmanager
def _timed_attacks(
    setup: _Setup, clock: Callable[[], float], seconds: list[float]
) -> Iterator[None]:
    """Adds the time of every training attack (TAPS's search in the feature box
    included) to ``seconds[0]``."""
    targets = [
        (expressive, "adversarial_points"),
        (sabr, "adversarial_points"),
        (taps, "adversarial_points"),
        (taps, "pivotal_points"),
    ]
    originals = [getattr(module, name) for module, name in targets]

    def timed(original: Callable) -> Callable:
        def run(*args, **kwargs):
            setup.sync()
            t0 = clock()
            point = original(*args, **kwargs)
            setup.sync()
            seconds[0] += clock() - t0
            return point

        return run

    for (module, name), original in zip(targets, originals, strict=True):
        setattr(module, name, timed(original))
    try:
        yield
    finally:
        for (module, name), original in zip(targets, originals, strict=True):
            setattr(module, name, original)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data")
    )
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--arch", default="cnn_4layer")
    parser.add_argument("--eps", type=parse_eps, default=0.1, help="e.g. 0.1 or 8/255")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-train", type=int, help="images (default: all)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--methods", default="fast", help="comma-separated training methods (fast included)"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="OPTION=VALUE",
        help="a training option (TrainConfig's name, e.g. taps_steps=8) for the methods "
        "that take it; the others keep the paper's settings",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads; 1 measures CPU time, which "
        "other processes on a shared machine do not distort (0: torch's default, wall time)",
    )
    args = parser.parse_args()
    keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)

    data = load_split(args.dataset, args.data_dir, "train", 0, args.num_train)
    split = Split(data.images, data.labels)
    methods = [Method(m.strip()) for m in args.methods.split(",") if m.strip()]
    if Method.FAST not in methods:
        methods.insert(0, Method.FAST)
    clean = _measure(args, Method.VANILLA, split)
    found = {method: _measure(args, method, split) for method in methods}
    fast = found[Method.FAST]
    device = resolve_device(args.device)
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"machine: {describe_device(device)} ({machine}), torch {torch.__version__}")
    print(f"{args.arch} on {len(split)} {args.dataset} images, batch {args.batch_size}")
    clock = "CPU" if device.type == "cpu" and torch.get_num_threads() == 1 else "wall"
    print(f"clean epoch: {clean.epoch:.2f} s ({clock} time, best of {args.repeats})")
    print("epoch                                seconds  / clean  / fast")
    for method, m in found.items():
        kind = "at eps_max" if method in _AFTER_WARMUP else "in the ramp, regularizers on"
        print(
            f"  {method.value:<8}{kind:<28}{m.epoch:7.2f}{m.epoch / clean.epoch:8.2f}x"
            f"{m.epoch / fast.epoch:7.2f}x"
        )
    print(f"ratio of fast: {fast.epoch / clean.epoch:.2f}x (target <= 2.5x)")
    c = clean.phases
    print("per step, ms      attack  forward  backward  optimizer     total")
    for name, p in (("clean", c), *((m.value, f.phases) for m, f in found.items())):
        print(
            f"  {name:<15}{p.attack * 1e3:8.1f}{p.forward * 1e3:9.1f}{p.backward * 1e3:10.1f}"
            f"{p.optimizer * 1e3:11.1f}{p.total * 1e3:10.1f}"
        )
    f = fast.phases
    print(
        f"  fast / clean   {'':8}{f.forward / c.forward:8.2f}x{f.backward / c.backward:9.2f}x"
        f"{f.optimizer / c.optimizer:10.2f}x{f.total / c.total:9.2f}x"
    )
    floor = (3 * (c.forward + c.backward) + c.optimizer) / c.total
    print(
        f"floor of the exact method: {floor:.2f}x (three clean forwards and backwards, "
        "one optimizer step)"
    )


if __name__ == "__main__":
    main()
