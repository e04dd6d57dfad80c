"""Faults during long runs: a run killed mid-epoch resumes to the same result, and a
loss that turns NaN stops training with the last good checkpoint kept."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import training.loop
from certify.cli import cli
from model_zoo.checkpoint import read_checkpoint


def _train_args(shared_data: Path, out: Path, epochs: int, method: str = "fast") -> list[str]:
    return [
        "train", "--dataset", "mnist", "--data-dir", str(shared_data), "--out-dir", str(out),
        "--eps", "0.1", "--epochs", str(epochs), "--batch-size", "20", "--num-train", "1200",
        "--val-size", "100", "--schedule-length", "2", "--no-final-eval", "--device", "cpu",
        "--seed", "3", "--threads", "1", "--method", method,
    ]  # fmt: skip


@pytest.mark.slow
# mtl-ibp: the attack's random starts must be drawn again as they were.
@pytest.mark.parametrize("method", ["fast", "mtl-ibp"])
def test_killed_run_resumes_to_the_uninterrupted_result(
    shared_data: Path, tmp_path: Path, method: str
) -> None:
    straight = CliRunner().invoke(cli, _train_args(shared_data, tmp_path / "a", 3, method))
    assert straight.exit_code == 0, straight.output

    killed = tmp_path / "b"
    cmd = [sys.executable, "-m", "certify", *_train_args(shared_data, killed, 3, method)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not (killed / "last.pth").exists():  # epoch 1 is complete, epoch 2 running
        assert proc.poll() is None and time.monotonic() < deadline, "run ended early"
        time.sleep(0.05)
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert read_checkpoint(killed / "last.pth")["epoch"] < 3  # killed before the end
    assert not [p for p in killed.iterdir() if p.name.endswith(".tmp")]

    resume = ["train", "--out-dir", str(killed), "--resume", "--data-dir", str(shared_data)]
    resumed = CliRunner().invoke(cli, resume)
    assert resumed.exit_code == 0, resumed.output
    a, b = read_checkpoint(tmp_path / "a" / "last.pth"), read_checkpoint(killed / "last.pth")
    assert a["epoch"] == b["epoch"] == 3
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key


def test_nan_loss_stops_with_epoch_and_batch_and_keeps_the_checkpoint(
    shared_data: Path, tmp_path: Path, monkeypatch
) -> None:
    out = tmp_path / "run"
    calls = {"n": 0}
    real = training.loop.robust_cross_entropy

    def poisoned(lower: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        loss = real(lower)
        return loss * float("nan") if calls["n"] == 60 else loss

    monkeypatch.setattr(training.loop, "robust_cross_entropy", poisoned)
    result = CliRunner().invoke(cli, _train_args(shared_data, out, 3))
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    last_line = result.output.strip().splitlines()[-1]  # after the per-epoch progress lines
    assert last_line.startswith("Error: training diverged: the loss is nan at epoch 2, batch")
    assert read_checkpoint(out / "last.pth")["epoch"] == 1
