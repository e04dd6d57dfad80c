"""How many more images the cascade's default PGD attacks than a 100-step, 1-restart PGD
on the margin, on the public models beside the checkout (``../shared/models``).

The same images, eps and normalization as ``benchmarks/public_models.py``; both attacks
run on every image. The cascade's attack starts with the single run (same random start),
so it attacks every image that one does; the table counts the rest.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from certify.core.allocator import keep_freed_memory
from certify.core.datasets import Dataset
from certify.core.eps import parse_eps
from certify.data import load_split
from certify.evaluation.attack import PGDConfig, pgd_attack
from certify.evaluation.config import DEFAULT_PGD, EvalMode
from model_zoo import load_model

SHARED = Path(__file__).resolve().parents[2] / "shared"
MODELS = {
    "mnistfc_256x4.onnx": ("mnist", "0.02", 200, {}),
    "mnistfc_256x6.onnx": ("mnist", "0.02", 200, {}),
    "verivital_convnet_avgpool.onnx": ("mnist", "0.02", 200, {}),
    "cifar10_resnet_4b.onnx": ("cifar", "1/255", 100,
                               {"mean": (0.4914, 0.4822, 0.4465), "std": (0.2471, 0.2435, 0.2616)}),
    "oval21_cifar_wide_kw.onnx": ("cifar", "2/255", 100,
                                  {"mean": (0.485, 0.456, 0.406), "std": (0.225, 0.225, 0.225)}),
    "oval21_cifar_deep_kw.onnx": ("cifar", "2/255", 100,
                                  {"mean": (0.485, 0.456, 0.406), "std": (0.225, 0.225, 0.225)}),
}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=SHARED / "data")
    parser.add_argument("--models-dir", type=Path, default=SHARED / "models")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    single = PGDConfig(steps=100, restarts=1)
    cascade = DEFAULT_PGD[EvalMode.CASCADE]
    print(f"machine: {platform.machine()}, {args.threads} torch threads, torch {torch.__version__}")
    print(f"cascade attack: {cascade.steps} steps, {cascade.restarts} restarts of "
          f"{', '.join(loss.value for loss in cascade.losses)}")  # fmt: skip
    print()
    header = "| model | eps | images | clean wrong | attacked by 1 run | by the cascade's | more |"
    print(header + " seconds |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    for name in args.models.split(","):
        dataset, eps_text, count, normalization = MODELS[name]
        loaded = load_model(args.models_dir / name, dataset=Dataset(dataset), **normalization)
        data = load_split(dataset, args.data_dir, "test", 0, count)
        eps, model = parse_eps(eps_text), loaded.model.eval()
        with torch.no_grad():
            wrong = int((model(data.images).argmax(1) != data.labels).sum())
        t0 = time.perf_counter()
        weak, _ = pgd_attack(model, data.images, data.labels, eps, single)
        t1 = time.perf_counter()
        strong, _ = pgd_attack(model, data.images, data.labels, eps, cascade)
        t2 = time.perf_counter()
        more = int((~strong & weak).sum())
        print(f"| {name.removesuffix('.onnx')} | {eps_text} | {count} | {wrong} | "
              f"{int((~weak).sum()) - wrong} | {int((~strong).sum()) - wrong} | {more} | "
              f"{t1 - t0:.0f} / {t2 - t1:.0f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
