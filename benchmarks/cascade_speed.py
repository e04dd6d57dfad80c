"""The default cascade against ``--every-method``: seconds and verified (best) counts.

Each case is evaluated twice in one process, first as a cascade (every image decided by
the cheapest stage that can; the cascade's stronger PGD) and then with every method and
PGD on every image (``every_method=True``, today's PGD), with the same bound methods
(IBP, CROWN-IBP, CROWN; IBP and CROWN-IBP for the seed's CIFAR cnn unless
``--cnn-methods`` says otherwise). Both must verify the same images; the cascade's target
is at most half the time. Prints the machine, then one line per case.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

import certify
from certify.core.allocator import keep_freed_memory
from certify.evaluation.config import EvalConfig, EvalMode
from certify.pipeline.embedded import EMBEDDED_MODEL
from model_zoo import ModelFile, create_model
from model_zoo.normalization import NormalizedModel

SHARED = Path(__file__).resolve().parents[2] / "shared"
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)


def _cases(args: argparse.Namespace) -> dict[str, dict]:
    torch.manual_seed(0)
    seed_cnn = create_model("cnn", 3, 32, 10).eval()
    return {
        "bundled": {"model": EMBEDDED_MODEL, "num_samples": args.num_samples or 1000},
        "cnn-cifar": {
            "model": NormalizedModel(seed_cnn, CIFAR_MEAN, (0.2023, 0.1994, 0.2010)),
            "dataset": "cifar",
            "eps": "8/255",
            "data_dir": args.data_dir,
            "num_samples": args.num_samples or 100,
            "name": "seed cnn (random weights)",
            # CROWN on this 13M-parameter network takes about 9.5 GiB and a minute per
            # image on a CPU: the CPU comparison leaves it out.
            "methods": args.cnn_methods,
        },
        "resnet_4b": {
            "model": ModelFile(
                args.models_dir / "cifar10_resnet_4b.onnx", mean=CIFAR_MEAN, std=CIFAR_STD
            ),
            "dataset": "cifar",
            "eps": "1/255",
            "data_dir": args.data_dir,
            "num_samples": args.num_samples or 100,
        },
    }


def _decided(counts: dict[str, int]) -> str:
    return ", ".join(f"{stage} {n}" for stage, n in counts.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=SHARED / "data")
    parser.add_argument("--models-dir", type=Path, default=SHARED / "models")
    parser.add_argument("--cases", default="bundled,cnn-cifar,resnet_4b")
    parser.add_argument("--num-samples", type=int, help="images per case (default: per case)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cnn-methods", default="ibp,crown-ibp", help="methods of the cnn case")
    args = parser.parse_args()
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    print(f"machine: {platform.machine()}, {args.threads} torch threads, torch {torch.__version__}")
    print(f"{'case':<11} {'images':>6} {'cascade s':>10} {'every s':>8} {'ratio':>6}  verified")
    cases = _cases(args)
    for name in args.cases.split(","):
        case = cases[name]
        runs = {}
        for every in (False, True):
            config = EvalConfig(
                methods=case.get("methods", "ibp,crown-ibp,crown"),
                mode=EvalMode.EVERY_METHOD if every else EvalMode.CASCADE,
                num_samples=case["num_samples"],
            )
            t0 = time.perf_counter()
            result = certify.evaluate(
                case["model"], case.get("dataset"), case.get("eps"), config,
                data_dir=case.get("data_dir"), device=args.device, name=case.get("name"),
            )  # fmt: skip
            runs[every] = (time.perf_counter() - t0, result)
        (t_c, cascade), (t_e, every) = runs[False], runs[True]
        same = bool((cascade.samples["verified_any"] == every.samples["verified_any"]).all())
        verified = int(cascade.samples["verified_any"].sum())
        n = cascade.summary.num_samples
        print(
            f"{name:<11} {n:>6} {t_c:>10.1f} {t_e:>8.1f} {t_c / t_e:>5.2f}x  "
            f"{verified} / {n} {'(the same images)' if same else '(DIFFERENT images)'}; "
            f"cascade decided {_decided(cascade.summary.decided)}, "
            f"PGD error {cascade.summary.pgd_error:.3f} "
            f"against {every.summary.pgd_error:.3f}"
        )


if __name__ == "__main__":
    main()
