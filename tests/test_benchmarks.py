"""The benchmarks still run end to end, on a few real images: their figures come
from full runs (see docs/benchmarks.md), but a renamed function or a broken import would
otherwise only show when someone next measures."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from certify.core.datasets import Dataset
from tests.conftest import REPO_ROOT
from training.methods import Method
from training.objectives import published_objective


def _figure(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in the output:\n{text}"
    return float(match.group(1))


def _run_benchmark(script: str, *args: str) -> str:
    run = subprocess.run(
        [sys.executable, f"benchmarks/{script}", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    return run.stdout


@pytest.mark.slow
def test_train_speed_prints_ratio_phases_and_floor(shared_data: Path) -> None:
    out = _run_benchmark(
        "train_speed.py", "--data-dir", str(shared_data),
        "--num-train", "256", "--batch-size", "64", "--repeats", "1", "--methods", "mtl-ibp,sabr",
    )  # fmt: skip
    assert "cnn_4layer on 256 mnist images, batch 64" in out
    # A fast step runs three passes of every layer against one: well above 1.5x.
    assert _figure(r"ratio of fast: ([\d.]+)x", out) > 1.5
    # The methods with an attack spend time in it, and fast none.
    for method in ("mtl-ibp", "sabr"):
        assert _figure(rf"(?m)^  {method}\s.*?\s([\d.]+)x\s+[\d.]+x$", out) > 1.0
        assert _figure(rf"(?m)^  {method}\s+([\d.]+)\s+[\d.]+\s+[\d.]+\s+[\d.]+", out) > 0
    assert _figure(r"(?m)^  fast\s+([\d.]+)\s+[\d.]+\s+[\d.]+\s+[\d.]+", out) == 0
    assert _figure(r"fast / clean\s+([\d.]+)x", out) > 1.5  # the forward
    assert _figure(r"fast / clean\s+[\d.]+x\s+([\d.]+)x", out) > 1.5  # the backward
    # Three clean passes plus one optimizer step, over one clean step: between 2 and 3
    # as long as the optimizer takes less than half a clean step.
    assert 2.0 < _figure(r"floor of the exact method: ([\d.]+)x", out) < 3.0


@pytest.mark.slow
def test_short_warmup_trains_the_methods_on_real_cifar(shared_data: Path) -> None:
    out = _run_benchmark(
        "short_warmup.py", "--data-dir", str(shared_data), "--dataset", "cifar",
        "--eps", "2/255", "--num-train", "800", "--epochs", "2", "--warmup", "1",
        "--milestones", "--threads", "1", "--methods", "fast,cc-ibp",
        "--test-samples", "60", "--pgd-steps", "10",
    )  # fmt: skip
    assert "cifar 300 train / 500 val" in out
    assert "test: 846 images at eps 0.00784314" in out
    for method in ("fast", "cc-ibp"):
        number = r"\s+([\d.]+)%"
        row = re.search(rf"^{method}\s+(\d+){number * 6}", out, re.M)
        assert row, f"no {method} row in:\n{out}"
        best_epoch, *errors = row.groups()
        assert best_epoch in ("1", "2")
        val_verified, clean, ibp_all, pgd, ibp, crown = map(float, errors)
        # Verified error can never be below PGD error, nor PGD error below clean error
        # (the PGD and bound errors are on the first 60 test images, the others on all).
        assert 0 <= clean <= ibp_all <= 100 and 0 <= val_verified <= 100
        assert pgd <= ibp <= 100 and pgd <= crown <= 100


@pytest.mark.slow
def test_gpu_check_runs_every_step_on_the_cpu(shared_data: Path, shared_models: Path) -> None:
    models = shared_models
    run = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--device", "cpu", "--quick",
         "--data-dir", str(shared_data), "--models-dir", str(models)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHON": sys.executable},
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = run.stdout
    assert 0.5 < _figure(r"ibp\s+[\d.]+ s \w+ time\s+([\d.]+)x", out) < 10
    assert 0 <= _figure(r"CROWN verified error ([\d.]+)", out) <= 1
    assert _figure(r"([\d.]+) s of bab", out) > 0
    assert _figure(r"epoch time ([\d.]+) s", out) > 0
    assert _figure(r"1 process\(es\): ([\d.]+) s wall", out) > 0


def test_train_speed_sets_only_the_options_a_method_takes() -> None:
    """`--set` times a method with another tool's settings: each method takes the
    options it has, and keeps the paper's for the rest."""
    spec = importlib.util.spec_from_file_location(
        "train_speed", REPO_ROOT / "benchmarks" / "train_speed.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_speed"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    overrides = ["taps_steps=8", "attack_steps=3"]
    sabr = module._objective(Method.SABR, Dataset.CIFAR, 8 / 255, overrides).settings()
    paper = published_objective(Method.SABR, Dataset.CIFAR, 8 / 255).settings()
    assert sabr == {**paper, "attack_steps": 3} and paper["attack_steps"] != 3
    taps = module._objective(Method.TAPS, Dataset.CIFAR, 8 / 255, overrides).settings()
    assert taps["taps_steps"] == 8 and "attack_steps" not in taps
    assert module._objective(Method.FAST, Dataset.CIFAR, 8 / 255, overrides) is None


def test_ctrain_speed_asks_for_the_unpacked_wheel(tmp_path: Path) -> None:
    """CTRAIN is not installed here: the script says in one line what to give it."""
    run = subprocess.run(
        [sys.executable, "benchmarks/ctrain_speed.py", "--ctrain-dir", str(tmp_path),
         "--method", "sabr"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 2
    assert (
        run.stderr.strip().splitlines()[-1].endswith("no CTRAIN package there (unpack the wheel)")
    )
