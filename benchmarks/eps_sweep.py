"""An eps sweep against separate runs: ``certify eval --eps a,b,c,d`` once, against one
``certify eval --eps x`` per radius, each a fresh process as a user would run them.

Prints the machine, then per case the wall seconds of the sweep and of the separate
runs (their sum), the ratio, and whether every radius verified the same images in both.
The cases: the bundled MNIST model at 0.1 to 0.4 and the public ``mnistfc_256x4`` ONNX
model (its normalization as the models' README gives it: none) at 0.01 to 0.05.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

SHARED = Path(__file__).resolve().parents[2] / "shared"


def _cases(args: argparse.Namespace) -> dict[str, tuple[list[str], list[str]]]:
    """name -> (the model's arguments, the radii)."""
    return {
        "bundled": ([], ["0.1", "0.2", "0.3", "0.4"]),
        "mnistfc_256x4": (
            [str(args.models_dir / "mnistfc_256x4.onnx"), "--dataset", "mnist",
             "--data-dir", str(args.data_dir)],
            ["0.01", "0.02", "0.03", "0.05"],
        ),
    }  # fmt: skip


def _run(arguments: list[str], folder: Path, name: str) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "certify", "eval", *arguments, "--per-sample",
         str(folder / f"{name}.csv")],
        check=True, capture_output=True,
    )  # fmt: skip
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=SHARED / "data")
    parser.add_argument("--models-dir", type=Path, default=SHARED / "models")
    parser.add_argument("--num-samples", type=int, default=500)
    parser.add_argument("--methods", default="ibp,crown-ibp,crown")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cases", default="bundled,mnistfc_256x4")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {args.threads} torch threads per process")
    print(
        "| case | radii | images | sweep s | separate runs s | separate / sweep | same verified |"
    )
    print("|---|---|---:|---:|---:|---:|---|")
    common = ["--num-samples", str(args.num_samples), "--methods", args.methods,
              "--threads", str(args.threads)]  # fmt: skip
    for name in args.cases.split(","):
        model, radii = _cases(args)[name]
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            sweep = _run([*model, *common, "--eps", ",".join(radii)], folder, "sweep")
            separate = sum(
                _run([*model, *common, "--eps", eps], folder, f"alone{k}")
                for k, eps in enumerate(radii)
            )
            same = all(
                (
                    pd.read_csv(folder / f"sweep_eps{eps}.csv")["verified_any"]
                    == pd.read_csv(folder / f"alone{k}.csv")["verified_any"]
                ).all()
                for k, eps in enumerate(radii)
            )
        ratio = f"{separate / sweep:.2f}x"
        cells = [name, ", ".join(radii), str(args.num_samples), f"{sweep:.1f}",
                 f"{separate:.1f}", ratio, "yes" if same else "NO"]  # fmt: skip
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
