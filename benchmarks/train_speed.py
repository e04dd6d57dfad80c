"""How much slower one epoch of ``fast`` certified training is than clean training.

Trains the same model on the same data for one epoch of ``--method fast`` in the
middle of the warmup (eps > 0 and both regularizers on, the most expensive kind of
epoch) and for one epoch of clean training through the same loop, and prints the ratio
with the machine it was measured on. Target: <= 2.5x. By default one thread and CPU
time, so that other processes on a shared machine do not distort the ratio. Like the
``certify`` command, it first tunes the allocator to keep freed memory
(``certify.allocator``).

    python benchmarks/train_speed.py --data-dir ../shared/data
    python benchmarks/train_speed.py --arch cnn --dataset cifar --batch-size 128
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from certify.allocator import keep_freed_memory
from certify.data import load_split
from certify.datasets import get_spec
from certify.devices import describe_device, resolve_device
from model_zoo import create_model
from model_zoo.normalization import NormalizedModel
from training.bounders import IBPBounder
from training.data import Augmentation, Split, batches, epoch_length
from training.init import ibp_init
from training.loop import Method, StepConfig, train_epoch
from training.schedulers import EpsSchedule


def _epoch_seconds(args: argparse.Namespace, method: Method, split: Split) -> float:
    """Best of ``--repeats`` timings of epoch 2 of a run whose ramp spans epochs 1-3."""
    spec = get_spec(args.dataset)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = NormalizedModel(
        create_model(args.arch, spec.channels, spec.size, spec.num_classes), spec.mean, spec.std
    )
    if method is Method.FAST:
        ibp_init(model)
    model.to(device)
    bounder = IBPBounder(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
    length = epoch_length(len(split), args.batch_size)
    # Clean training: the same loop with eps = 0 throughout (the ramp starts later).
    start = 1 if method is Method.FAST else 10**6
    schedule = EpsSchedule(args.eps, start=start, length=3, epoch_length=length)
    step = StepConfig(method, max_eps=args.eps, num_classes=spec.num_classes)
    times = []
    # CPU time, not wall time, when on the CPU with one thread: other processes on a
    # shared machine then do not distort the ratio.
    clock = (
        time.process_time
        if device.type == "cpu" and torch.get_num_threads() == 1
        else time.perf_counter
    )
    for _ in range(args.repeats):
        generator = torch.Generator().manual_seed(0)
        data = list(batches(split, args.batch_size, generator, Augmentation()))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = clock()
        train_epoch(model, bounder, optimizer, data, schedule, 2, step, device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(clock() - t0)
    return min(times)


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
    clean = _epoch_seconds(args, Method.VANILLA, split)
    fast = _epoch_seconds(args, Method.FAST, split)
    device = resolve_device(args.device)
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"machine: {describe_device(device)} ({machine}), torch {torch.__version__}")
    print(f"{args.arch} on {len(split)} {args.dataset} images, batch {args.batch_size}")
    clock = "CPU" if device.type == "cpu" and torch.get_num_threads() == 1 else "wall"
    print(f"clean epoch: {clean:.2f} s ({clock} time, best of {args.repeats})")
    print(f"fast epoch (eps > 0, regularizers on): {fast:.2f} s")
    print(f"ratio: {fast / clean:.2f}x (target <= 2.5x)")


if __name__ == "__main__":
    main()
