"""What alpha-CROWN costs against CROWN: seconds, their ratio, and peak memory.

Bounds the same images with CROWN and with alpha-CROWN (20 steps, certify's default)
through :class:`~certify.bounds.margins.MarginBounder`, and prints, per model, the best
of a few runs of each, the ratio, how many images each verifies, and the peak resident
memory of a process that runs alpha-CROWN alone on those images (the number a user sees
in ``/usr/bin/time -v certify eval``). Like the ``certify`` command, it first tunes the
allocator to keep freed memory (``certify.core.allocator``).
Target: alpha-CROWN at most 40x CROWN, at most 2 GB peak on 32 bundled images.

    python benchmarks/alpha_crown.py                       # the bundled model, 32 images
    python benchmarks/alpha_crown.py --model ../shared/models/cifar10_resnet_4b.onnx \
        --dataset cifar --eps 1/255 --num-samples 2 --data-dir ../shared/data \
        --mean 0.4914,0.4822,0.4465 --std 0.2471,0.2435,0.2616
"""

from __future__ import annotations

import argparse
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from certify.bounds.bounder import AlphaCrownOptions
from certify.bounds.margins import BoundMethod, MarginBounder
from certify.core.allocator import keep_freed_memory
from certify.core.eps import parse_eps
from certify.data import load_split
from certify.pipeline.embedded import EMBEDDED_DATA, EMBEDDED_MODEL
from model_zoo import load_model


def _best(fn: Callable[[], torch.Tensor], repeats: int) -> tuple[float, torch.Tensor]:
    """Best wall time of ``repeats`` runs, and the last result."""
    best, result = float("inf"), torch.empty(0)
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def _setup(args: argparse.Namespace) -> tuple[MarginBounder, torch.Tensor, torch.Tensor, float]:
    if args.model is None:
        loaded = load_model(EMBEDDED_MODEL)
        data_dir, dataset = EMBEDDED_DATA, "mnist"
    else:
        loaded = load_model(args.model, dataset=args.dataset, mean=args.mean, std=args.std)
        data_dir, dataset = Path(args.data_dir), args.dataset
    data = load_split(dataset, data_dir, num_samples=args.num_samples)
    eps = parse_eps(args.eps) if args.eps else float(loaded.eps)
    bounder = MarginBounder(
        loaded.model,
        tuple(loaded.input_shape),
        torch.device("cpu"),
        alpha=AlphaCrownOptions(iterations=args.iterations),
    )
    return bounder, data.images, data.labels, eps


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def _alpha_only(args: argparse.Namespace) -> None:
    """Run alpha-CROWN once in this process (for the peak memory of a fresh process)."""
    bounder, x, y, eps = _setup(args)
    bounder.lower_bounds(x, y, eps, BoundMethod.ALPHA_CROWN)


def _peak_of_alpha_run(argv: list[str]) -> float:
    """Peak resident memory (GiB) of a fresh process that bounds the images by alpha-CROWN."""
    subprocess.run([sys.executable, __file__, *argv, "--alpha-only"], check=True)
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="checkpoint or ONNX file (default: the bundled model)")
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--eps", help="default: the model's own eps")
    parser.add_argument("--mean", type=_floats, help="per-channel mean of an ONNX model")
    parser.add_argument("--std", type=_floats, help="per-channel std of an ONNX model")
    parser.add_argument("--num-samples", type=int, default=32)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2, help="runs of alpha-CROWN")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--alpha-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    if args.alpha_only:
        _alpha_only(args)
        return
    # First, while this process holds nothing: the two must not share the memory.
    peak = _peak_of_alpha_run(sys.argv[1:])
    bounder, x, y, eps = _setup(args)
    # One untimed run of each: the first call imports and sets up what later ones reuse.
    for method in (BoundMethod.CROWN, BoundMethod.ALPHA_CROWN):
        bounder.lower_bounds(x[:2], y[:2], eps, method)
    crown_s, crown = _best(lambda: bounder.lower_bounds(x, y, eps, BoundMethod.CROWN), 5)
    alpha_s, alpha = _best(
        lambda: bounder.lower_bounds(x, y, eps, BoundMethod.ALPHA_CROWN), args.repeats
    )
    name = Path(args.model).name if args.model else EMBEDDED_MODEL.name
    print(f"{platform.machine()} CPU, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{name}, {len(x)} images, eps {eps:g}, {args.iterations} alpha steps")
    print(f"  CROWN        {crown_s:8.2f} s   verifies {int((crown.min(1).values > 0).sum())}")
    print(f"  alpha-CROWN  {alpha_s:8.2f} s   verifies {int((alpha.min(1).values > 0).sum())}")
    print(f"  ratio        {alpha_s / crown_s:8.1f}x  (target <= 40x)")
    print(f"  peak memory of a process running alpha-CROWN alone: {peak:.2f} GiB")
    worse = int((alpha < crown - 1e-6).sum())
    print(f"  margins where alpha-CROWN is below CROWN: {worse} (must be 0)")


if __name__ == "__main__":
    main()
