"""How much slower one epoch of ``fast`` certified training is than clean training.

Trains the same model on the same data for one epoch of ``--method fast`` in the
middle of the warmup (eps > 0 and both regularizers on, the most expensive kind of
epoch) and for one epoch of clean training through the same loop, and prints the ratio
with the machine it was measured on. Target: <= 2.5x. By default one thread and CPU
time, so that other processes on a shared machine do not distort the ratio. Like the
``certify`` command, it first tunes the allocator to keep freed memory
(``certify.core.allocator``).

It then times the phases of the same steps (loss forward, backward, optimizer) and
prints the floor that the exact method cannot go below on this machine: as in
auto_LiRPA, the BatchNorm statistics of the clean pass carry gradient, so every layer
runs three forwards and three backwards (clean values, centre, radius) where a clean
step runs one of each; the floor counts each of the three as one clean forward and
backward and adds one optimizer step.

    python benchmarks/train_speed.py --data-dir ../shared/data
    python benchmarks/train_speed.py --arch cnn --dataset cifar --batch-size 128
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from certify.bounds.training_bounders import IBPBounder
from certify.core.allocator import keep_freed_memory
from certify.core.datasets import get_spec
from certify.core.devices import describe_device, resolve_device
from certify.data import load_split
from model_zoo import create_model
from model_zoo.normalization import NormalizedModel
from training.data import Augmentation, Split, batches, epoch_length
from training.init import ibp_init
from training.loop import Meter, Method, StepConfig, chunk_loss, train_epoch
from training.schedulers import EpsSchedule


@dataclass
class Phases:
    """Mean seconds per step of each phase."""

    forward: float  # the loss, bounds included
    backward: float
    optimizer: float  # gradient clipping and the Adam step

    @property
    def total(self) -> float:
        return self.forward + self.backward + self.optimizer


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
        if method is Method.FAST:
            ibp_init(self.model)
        self.model.to(self.device)
        self.bounder = IBPBounder(self.model)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=5e-4)
        length = epoch_length(len(split), args.batch_size)
        # Clean training: the same loop with eps = 0 throughout (the ramp starts later).
        start = 1 if method is Method.FAST else 10**6
        self.schedule = EpsSchedule(args.eps, start=start, length=3, epoch_length=length)
        self.step = StepConfig(method, max_eps=args.eps, num_classes=spec.num_classes)
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


# Epoch 2 of a run whose ramp spans epochs 1-3: eps > 0 and the regularizers on.
_EPOCH = 2


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
            _EPOCH,
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
    regularize = setup.step.method is Method.FAST and setup.schedule.last_warmup_epoch >= _EPOCH
    params = list(setup.model.parameters())
    sums = [0.0, 0.0, 0.0]
    setup.bounder.train(True)
    for index, (x, y) in enumerate(setup.data):
        eps = setup.schedule.eps(_EPOCH, index)
        x, y = x.to(setup.device), y.to(setup.device)
        setup.optimizer.zero_grad(set_to_none=True)
        marks = [clock()]
        loss = chunk_loss(setup.model, setup.bounder, x, y, eps, regularize, setup.step, Meter())
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
    return Phases(*(s / steps for s in sums))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data")
    )
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--arch", default="cnn_4layer")
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-train", type=int, help="images (default: all)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
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
    clean = _measure(args, Method.VANILLA, split)
    fast = _measure(args, Method.FAST, split)
    device = resolve_device(args.device)
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"machine: {describe_device(device)} ({machine}), torch {torch.__version__}")
    print(f"{args.arch} on {len(split)} {args.dataset} images, batch {args.batch_size}")
    clock = "CPU" if device.type == "cpu" and torch.get_num_threads() == 1 else "wall"
    print(f"clean epoch: {clean.epoch:.2f} s ({clock} time, best of {args.repeats})")
    print(f"fast epoch (eps > 0, regularizers on): {fast.epoch:.2f} s")
    print(f"ratio: {fast.epoch / clean.epoch:.2f}x (target <= 2.5x)")
    c, f = clean.phases, fast.phases
    print("per step, ms      forward  backward  optimizer  total")
    for name, p in (("clean", c), ("fast", f)):
        print(
            f"  {name:<15}{p.forward * 1e3:8.1f}{p.backward * 1e3:10.1f}"
            f"{p.optimizer * 1e3:11.1f}{p.total * 1e3:7.1f}"
        )
    print(
        f"  fast / clean   {f.forward / c.forward:7.2f}x{f.backward / c.backward:9.2f}x"
        f"{f.optimizer / c.optimizer:10.2f}x{f.total / c.total:6.2f}x"
    )
    floor = (3 * (c.forward + c.backward) + c.optimizer) / c.total
    print(
        f"floor of the exact method: {floor:.2f}x (three clean forwards and backwards, "
        "one optimizer step)"
    )


if __name__ == "__main__":
    main()
