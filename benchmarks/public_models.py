"""Clean, PGD and verified error per bound method of public third-party ONNX models.

The models of VNN-COMP 2021 beside the checkout (``../shared/models``, see its README):
each on its first 100 (CIFAR) or 200 (MNIST) test images at its benchmark's eps, with
every method on every image (``every_method=True``), so that each method's column is its
own. Prints the machine, then a Markdown table with seconds per method; a model a method
cannot bound gets the one-line error instead of its numbers.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

import certify
from certify.core.allocator import keep_freed_memory
from certify.core.errors import CertifyError
from certify.evaluation.config import EvalConfig, EvalMode
from model_zoo import ModelFile

SHARED = Path(__file__).resolve().parents[2] / "shared"
CIFAR = {"mean": (0.4914, 0.4822, 0.4465), "std": (0.2471, 0.2435, 0.2616)}
OVAL = {"mean": (0.485, 0.456, 0.406), "std": (0.225, 0.225, 0.225)}
# file: (data set, eps, images, normalization), as the models' README gives them.
MODELS = {
    "mnistfc_256x4.onnx": ("mnist", "0.02", 200, {}),
    "mnistfc_256x6.onnx": ("mnist", "0.02", 200, {}),
    "verivital_convnet_avgpool.onnx": ("mnist", "0.02", 200, {}),
    "cifar10_resnet_4b.onnx": ("cifar", "1/255", 100, CIFAR),
    "oval21_cifar_wide_kw.onnx": ("cifar", "2/255", 100, OVAL),
    "oval21_cifar_deep_kw.onnx": ("cifar", "2/255", 100, OVAL),
}
METHODS = ("ibp", "crown-ibp", "crown", "alpha-crown")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=SHARED / "data")
    parser.add_argument("--models-dir", type=Path, default=SHARED / "models")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--num-samples", type=int, help="images per model (default: per model)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    methods = args.methods.split(",")
    print(f"machine: {platform.machine()}, {args.threads} torch threads, torch {torch.__version__}")
    print()
    columns = " | ".join(f"{m} % (s)" for m in methods)
    print(f"| model | data set | eps | images | clean % | PGD % (s) | {columns} |")
    print("|---|---|---|---:|---:|---:|" + "---:|" * len(methods))
    for name in args.models.split(","):
        dataset, eps, images, normalization = MODELS[name]
        row = f"| {name.removesuffix('.onnx')} | {dataset} | {eps} | {args.num_samples or images} |"
        t0 = time.perf_counter()
        try:
            config = EvalConfig(
                methods=",".join(methods), mode=EvalMode.EVERY_METHOD,
                num_samples=args.num_samples or images,
            )  # fmt: skip
            result = certify.evaluate(
                ModelFile(args.models_dir / name, **normalization), dataset, eps, config,
                data_dir=args.data_dir,
            )  # fmt: skip
        except CertifyError as exc:
            print(f"{row} {exc} ({time.perf_counter() - t0:.0f} s) |")
            continue
        s = result.summary
        cells = [f"{100 * s.clean_error:.1f}", f"{100 * s.pgd_error:.1f} ({s.seconds['pgd']:.0f})"]
        for method, error in s.verified_error.items():
            cells.append(f"{100 * error:.1f} ({s.seconds[method.value]:.0f})")
        print(f"{row} {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
