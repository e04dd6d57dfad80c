"""`certify train` under torchrun: two CPU processes (gloo) each bound half of every
global batch and sum their gradients, which is exactly what one process computes with
``--grad-acc-steps 2`` (BatchNorm statistics are per half in both); rank 0 alone writes,
and the final evaluation is sharded as ``certify eval``'s."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from certify.commands.train_command import _without_nproc
from model_zoo.checkpoint import read_checkpoint
from tests.launch import run_certify


def _train(
    shared_data: Path,
    out: Path,
    processes: int,
    epochs: int,
    *extra: str,
    final: bool = False,
    shortcut: bool = False,
) -> str:
    args = ["--dataset", "mnist", "--data-dir", str(shared_data), "--out-dir", str(out)]
    args += ["--arch", "cnn_4layer", "--eps", "0.1", "--epochs", str(epochs)]
    args += ["--batch-size", "40", "--num-train", "240", "--val-size", "40"]
    args += ["--schedule-length", "2", "--seed", "5", "--device", "cpu", "--threads", "1"]
    if final:
        args += ["--final-eval", "--test-samples", "20"]
        args += ["--eval-methods", "ibp", "--pgd-steps", "2"]
    else:
        args += ["--no-final-eval"]
    args += list(extra)
    if shortcut:  # certify train --nproc N starts itself under torch.distributed.run
        return run_certify(["train", "--nproc", str(processes), *args], timeout=120)
    return run_certify(["train", *args], processes, timeout=120)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)["state_dict"]


def _log(out: Path) -> list[dict[str, str]]:
    with open(out / "train_log.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_two_processes_train_as_one_with_two_accumulation_steps(
    shared_data: Path, tmp_path: Path
) -> None:
    single, double = tmp_path / "single", tmp_path / "double"
    _train(shared_data, single, 1, 2, "--grad-acc-steps", "2")
    # One epoch with the --nproc shortcut, then --resume for the second under torchrun.
    stderr = _train(shared_data, double, 2, 1, shortcut=True)
    assert stderr.count("starting at epoch 1") == 1  # rank 0 alone reports
    assert "x2 processes" in stderr
    assert len(_log(double)) == 1
    stderr = _train(shared_data, double, 2, 2, "--resume", final=True)
    assert stderr.count("resuming at epoch 2") == 1

    one, two = _weights(single / "last.pth"), _weights(double / "last.pth")
    assert one.keys() == two.keys()
    for name, value in one.items():
        if "running_" in name or "num_batches" in name:
            continue  # running BatchNorm statistics: rank 0's half of each batch only
        assert torch.allclose(value, two[name], atol=1e-5), name
    rows_one, rows_two = _log(single), _log(double)
    assert [r["epoch"] for r in rows_two] == ["1", "2"]
    for a, b in zip(rows_one, rows_two, strict=True):
        for key in ("eps", "lr", "loss", "train_clean_err", "train_verified_err"):
            assert abs(float(a[key]) - float(b[key])) < 1e-4, key
    assert read_checkpoint(double / "last.pth")["training"]["epoch"] == 2
    files = ["best.pth", "last.pth", "results.csv", "train_log.csv"]
    assert sorted(p.name for p in double.iterdir()) == files
    with open(double / "results.csv", newline="") as f:
        results = list(csv.DictReader(f))
    assert len(results) == 1 and results[0]["device"] == "cpu x2 processes"
    assert results[0]["num_samples"] == "20"


def test_nproc_is_dropped_from_the_relaunched_arguments() -> None:
    args = ["--out-dir", "r", "--nproc", "2", "--epochs", "3", "--nproc=4", "--resume"]
    assert _without_nproc(args) == ["--out-dir", "r", "--epochs", "3", "--resume"]
