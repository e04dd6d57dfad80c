"""The training benchmark still runs end to end, on a few real MNIST images: it is not
part of the tests' figures (those come from full runs, see the README), but a renamed
function or a broken import would otherwise only show when someone next measures."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT


def _figure(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in the output:\n{text}"
    return float(match.group(1))


def test_train_speed_prints_ratio_phases_and_floor(shared_data: Path) -> None:
    run = subprocess.run(
        [sys.executable, "benchmarks/train_speed.py", "--data-dir", str(shared_data)]
        + ["--num-train", "256", "--batch-size", "64", "--repeats", "1"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert "cnn_4layer on 256 mnist images, batch 64" in out
    # A fast step runs three passes of every layer against one: well above 1.5x.
    assert _figure(r"ratio: ([\d.]+)x", out) > 1.5
    assert _figure(r"fast / clean\s+([\d.]+)x", out) > 1.5  # the forward
    assert _figure(r"fast / clean\s+[\d.]+x\s+([\d.]+)x", out) > 1.5  # the backward
    # Three clean passes plus one optimizer step, over one clean step: between 2 and 3
    # as long as the optimizer takes less than half a clean step.
    assert 2.0 < _figure(r"floor of the exact method: ([\d.]+)x", out) < 3.0
