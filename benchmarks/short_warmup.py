"""Training methods side by side on the same short schedule: by default ``fast``
against ``vanilla`` IBP (does the short warmup work?).

Trains ``cnn_4layer`` with each ``--methods`` on the training images of ``--data-dir``
(500 of them held out for model selection) with the same short schedule (20 epochs, eps
ramp over the first 8), then evaluates each selected model on the test images with
``certify.evaluate`` (every ``--eval-methods`` on every image, PGD included; with
``bab``, the cascade, bab's column the complete verifier's with ``--timeout``) and prints
the clean, PGD, IBP-verified and each method's verified error, with the training time.
The methods with an attack take the paper's settings for the data set and eps. By
default: the 5,000 MNIST training images and the 10,000 MNIST test images at eps 0.1;
``--dataset cifar`` takes the real CIFAR-10 images of ``../shared/data`` (4,660 and
846), with the ``cifar`` preset's augmentation.

    python benchmarks/short_warmup.py --data-dir ../shared/data
    python benchmarks/short_warmup.py --dataset cifar --eps 2/255 \
        --methods fast,vanilla,mtl-ibp,cc-ibp,exp-ibp,sabr --eval-methods ibp,crown
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from pathlib import Path

import torch

import certify
from certify.bounds.interval import IntervalNetwork
from certify.bounds.options import BabLimits, BabOptions
from certify.core.datasets import get_spec
from certify.core.eps import parse_eps
from certify.data import load_split
from certify.evaluation.config import EvalConfig, EvalMode, attack_config
from model_zoo.checkpoint import load_checkpoint
from training.config import TrainConfig
from training.loop import evaluate_split
from training.methods import Method
from training.presets import preset_values
from training.run import train


def _run(args: argparse.Namespace, method: Method, out_dir: Path) -> dict[str, float]:
    preset = preset_values(args.dataset)  # its augmentation only: the schedule is short
    config = TrainConfig(
        dataset=args.dataset,
        data_dir=Path(args.data_dir),
        out_dir=out_dir / method.value,
        arch=args.arch,
        method=method,
        eps=args.eps,
        epochs=args.epochs,
        batch_size=args.batch_size,
        crop_padding=preset["crop_padding"],
        flip=preset["flip"],
        schedule_start=1,
        schedule_length=args.warmup,
        lr_milestones=tuple(args.milestones),
        num_train=args.num_train,
        val_size=500,
        seed=args.seed,
        device="cpu",
        threads=args.threads,
        final_eval=False,
        # The papers' head for CNN7 at 2/255 (17 layers) does not fit a small network.
        taps_head_layers=args.taps_head_layers if method.value in ("taps", "staps") else None,
    )
    result = train(config)
    model = load_checkpoint(result.best_path).model
    test = load_split(args.dataset, args.data_dir, "test")
    stats = evaluate_split(
        model, IntervalNetwork(model), test.images, test.labels, args.eps,
        get_spec(args.dataset).num_classes, 500, torch.device("cpu"),
    )  # fmt: skip
    # Branch and bound on every image would take hours: with it, the cascade decides each
    # image by the cheapest stage, and each method's column counts the stages up to it.
    mode = EvalMode.CASCADE if "bab" in args.eval_methods else EvalMode.EVERY_METHOD
    config = EvalConfig(
        methods=args.eval_methods, mode=mode, num_samples=args.test_samples,
        attack=attack_config(mode, args.pgd_steps),
        bab=BabOptions(BabLimits(timeout=args.timeout)),
    )  # fmt: skip
    evaluation = certify.evaluate(
        model, args.dataset, args.eps, config, data_dir=args.data_dir, device="cpu"
    )
    summary = evaluation.summary
    return {
        "best_epoch": result.best.epoch,
        "val_verified": result.best.val_verified_err,
        "test_clean": stats.clean_err,
        "test_verified": stats.verified_err,
        "pgd": summary.pgd_error,
        "verified": {m.value: e for m, e in summary.verified_error.items()},
        "seconds": result.seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data")
    )
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--arch", default="cnn_4layer")
    parser.add_argument("--eps", type=parse_eps, default=0.1, help="e.g. 0.1 or 2/255")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=8, help="epochs of the eps ramp")
    parser.add_argument("--milestones", type=int, nargs="*", default=[15, 18])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-train", type=int, help="training images, 500 of them held out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--methods", default="fast,vanilla", help="training methods")
    parser.add_argument(
        "--eval-methods", default="ibp,crown", help="bound methods of the test evaluation"
    )
    parser.add_argument("--test-samples", type=int, help="test images (default: all)")
    parser.add_argument("--timeout", type=float, default=10.0, help="bab: seconds per image")
    parser.add_argument("--pgd-steps", type=int, default=100)
    parser.add_argument(
        "--taps-head-layers", type=int, default=4, help="taps and staps: the head's layers"
    )
    args = parser.parse_args()
    methods = [Method(m.strip()) for m in args.methods.split(",") if m.strip()]
    eval_methods = [m.value for m in EvalConfig(methods=args.eval_methods).methods]

    train_images = len(load_split(args.dataset, args.data_dir, "train", 0, args.num_train).labels)
    test_images = len(load_split(args.dataset, args.data_dir, "test").labels)
    with tempfile.TemporaryDirectory() as tmp:
        results = {m: _run(args, m, Path(tmp)) for m in methods}
    threads = args.threads or torch.get_num_threads()
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{threads} threads")  # fmt: skip
    print(
        f"{args.arch}, {args.dataset} {train_images - 500:,} train / 500 val, "
        f"{args.epochs} epochs, eps ramp over {args.warmup}, "
        f"test: {test_images:,} images at eps {args.eps:.6g}"
    )
    tested = args.test_samples or test_images
    print(f"errors on the first {tested:,} test images for PGD and {', '.join(eval_methods)}")
    verified = "".join(f" {m + '-ver':>12}" for m in eval_methods)
    print(f"{'method':<8} {'best ep':>7} {'val ver':>8} {'test clean':>10} "
          f"{'test IBP-ver':>12} {'PGD':>8}{verified} {'train s':>8}")  # fmt: skip
    for method, r in results.items():
        errors = "".join(f" {r['verified'][m]:>12.2%}" for m in eval_methods)
        print(
            f"{method.value:<8} {r['best_epoch']:>7} {r['val_verified']:>8.2%} "
            f"{r['test_clean']:>10.2%} {r['test_verified']:>12.2%} {r['pgd']:>8.2%}"
            f"{errors} {r['seconds']:>8.0f}"
        )


if __name__ == "__main__":
    main()
