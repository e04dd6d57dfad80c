"""How much slower verified evaluation is than a plain forward pass.

Times, on the full MNIST test set, a clean forward pass of a model and the IBP and
CROWN-IBP margin bounds of the same model over the same batches, and prints the
ratios with the machine they were measured on. Target: IBP <= 2.5x the clean pass.
The clean pass is the model as loaded (BatchNorm not folded), as a user would run it.
Like the ``certify`` command, it first tunes the allocator to keep freed memory
(``certify.core.allocator``); ``--system-malloc`` measures without that.

    python benchmarks/eval_speed.py --data-dir ../shared/data
    python benchmarks/eval_speed.py --arch cnn --dataset cifar --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

from certify.bounds.interval import IntervalNetwork
from certify.bounds.margins import BoundMethod, MarginBounder, parse_methods
from certify.core.allocator import keep_freed_memory
from certify.core.datasets import get_spec
from certify.core.devices import describe_device, resolve_device
from certify.data import load_split
from certify.pipeline.embedded import EMBEDDED_MODEL
from model_zoo import create_model
from model_zoo.checkpoint import load_checkpoint


def _best_time(fn: Callable[[], None], repeats: int, device: torch.device) -> float:
    """Best of ``repeats``: wall time on a GPU, CPU time of this process on the CPU
    (other processes on a shared machine then distort the ratio far less)."""
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    times = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(clock() - t0)
    return min(times)


def _model(args: argparse.Namespace) -> torch.nn.Module:
    """The bundled model, or a registered architecture with random weights (the cost of
    a bound does not depend on the weights)."""
    if args.arch is None:
        return load_checkpoint(EMBEDDED_MODEL).model
    spec = get_spec(args.dataset)
    return create_model(args.arch, spec.channels, spec.size, spec.num_classes)


@torch.no_grad()
def _relu_units(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Units (channels x positions) of every ReLU of ``model`` on one image ``x``, as
    the interval pass meets them (functional ReLUs included)."""
    return sum(p.lower[0].numel() for p in IntervalNetwork(model)(x, 0.0).pre_relu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data")
    )
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument(
        "--arch", help="registered architecture (random weights); default: the bundled model"
    )
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--num-samples", type=int, help="the first N test images (default: all)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--methods", default="ibp,crown-ibp", help="bound methods to time")
    parser.add_argument("--system-malloc", action="store_true", help="leave the allocator as it is")
    parser.add_argument(
        "--lirpa-ibp", action="store_true", help="IBP through auto_LiRPA, not the hand pass"
    )
    args = parser.parse_args()
    tuned = False if args.system_malloc else keep_freed_memory()
    torch.set_num_threads(args.threads)

    device = resolve_device(args.device)
    data = load_split(args.dataset, args.data_dir, "test")
    model = _model(args).eval().to(device)
    images, labels = data.images[: args.num_samples], data.labels[: args.num_samples]
    images, labels = images.to(device), labels.to(device)
    batches = [
        (images[i : i + args.batch_size], labels[i : i + args.batch_size])
        for i in range(0, len(images), args.batch_size)
    ]
    bounder = MarginBounder(model, tuple(images.shape[1:]), device, hand_ibp=not args.lirpa_ibp)

    def clean(network: torch.nn.Module = model) -> None:
        with torch.no_grad():
            for x, _ in batches:
                network(x)

    def bounds(method: BoundMethod) -> Callable[[], None]:
        return lambda: [bounder.lower_bounds(x, y, args.eps, method) for x, y in batches]

    bounds(BoundMethod.IBP)()  # warm up: first calls build caches
    clean_s = _best_time(clean, args.repeats, device)
    print(
        f"machine: {platform.machine()} {platform.processor() or ''}, "
        f"{torch.get_num_threads()} torch threads, device {describe_device(device)}, "
        f"torch {torch.__version__}"
    )
    print(
        f"model: {args.arch or EMBEDDED_MODEL.name}, {len(images)} {args.dataset} test images, "
        f"batch {args.batch_size}, eps {args.eps}"
    )
    print(
        f"allocator: {'keeps freed memory' if tuned else 'system default'}; "
        f"IBP through {'the hand-written pass' if bounder.hand_ibp else 'auto_LiRPA'}"
    )
    print(
        f"bounds taken on a twin with BatchNorm folded and dead units removed: "
        f"{_relu_units(model, images[:1])} -> {_relu_units(bounder.twin, images[:1])} ReLU units"
    )
    clock = "wall" if device.type == "cuda" else "CPU"
    print(f"{'clean forward':<13} {clean_s:8.3f} s {clock} time  1.00x")
    twin_s = _best_time(lambda: clean(bounder.twin), args.repeats, device)
    print(f"{'twin forward':<13} {twin_s:8.3f} s {clock} time {twin_s / clean_s:5.2f}x")
    for method in parse_methods(args.methods):
        s = _best_time(bounds(method), args.repeats, device)
        print(f"{method.value:<13} {s:8.3f} s {clock} time {s / clean_s:5.2f}x")


if __name__ == "__main__":
    main()
