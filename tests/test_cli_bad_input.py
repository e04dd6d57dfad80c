"""Bad input to `certify eval`: one line saying what to fix, exit code 2 for a flag's
value and 1 for a file or the data, no traceback, and no output file left behind."""

from __future__ import annotations

import shutil

import pytest
import torch
from click.testing import CliRunner

from certify.cli import cli
from model_zoo import create_model
from model_zoo.checkpoint import save_checkpoint
from tests.conftest import RunsCommandOnLoad


@pytest.fixture(scope="module")
def files(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("bad")
    model = create_model("cnn_4layer", in_ch=1, in_dim=28, num_classes=10).eval()
    good = root / "good.pth"
    save_checkpoint(good, model, {"arch": "cnn_4layer", "dataset": "mnist", "eps": 0.1})
    (root / "empty.pth").write_bytes(b"")
    (root / "truncated.pth").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (root / "corrupt.pth").write_bytes(b"\x00garbage" * 100)
    cifar = create_model("cnn_4layer", in_ch=3, in_dim=32, num_classes=10).eval()
    torch.save(cifar.state_dict(), root / "cifar_bare.pth")
    torch.save(create_model("cnn_4layer", 1, 28, 7).state_dict(), root / "seven.pth")
    (root / "other.csv").write_text("a,b\n1,2\n")
    torch.onnx.export(_Floored(), torch.zeros(1, 1, 28, 28), root / "floor.onnx", dynamo=False)
    torch.onnx.export(cifar, torch.zeros(1, 3, 32, 32), root / "cifar.onnx", dynamo=False)
    (root / "empty_dir").mkdir()
    broken = root / "broken_data" / "MNIST" / "raw"
    broken.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        shutil.copy(shared_data / "MNIST" / "raw" / f"{name}.gz", broken)
    (broken / "t10k-images-idx3-ubyte.gz").write_bytes(
        (broken / "t10k-images-idx3-ubyte.gz").read_bytes()[:5000]
    )
    return root


class _Floored(torch.nn.Module):
    """A network with an operator that converts from ONNX but has no bound."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(784, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.floor(x.flatten(1) * 4))


CASES = {
    "missing file": (["{root}/nope.pth"], "does not exist"),
    "empty file": (["{root}/empty.pth"], "empty"),
    "truncated file": (["{root}/truncated.pth"], "truncated"),
    "corrupt file": (["{root}/corrupt.pth"], "corrupt"),
    "other architecture": (
        ["{root}/cifar_bare.pth", "--arch", "cnn", "--dataset", "mnist", "--eps", "0.1"],
        "does not fit architecture",
    ),
    "other class count": (
        ["{root}/seven.pth", "--arch", "cnn_4layer", "--dataset", "mnist", "--eps", "0.1"],
        "has 10 classes",
    ),
    "unknown data set": (["{root}/good.pth", "--dataset", "imagenet22k"], "unknown data set"),
    "unknown architecture": (["{root}/seven.pth", "--arch", "vgg99"], "unknown architecture"),
    "missing data dir": (["{root}/good.pth", "--data-dir", "{root}/nodata"], "does not exist"),
    "empty data dir": (["{root}/good.pth", "--data-dir", "{root}/empty_dir"], "not found"),
    "truncated data file": (["{root}/good.pth", "--data-dir", "{root}/broken_data"], "truncated"),
    "eps 8/0": (["{root}/good.pth", "--eps", "8/0"], "division by zero"),
    "eps -1": (["{root}/good.pth", "--eps", "-1"], "outside [0, 1]"),
    "eps abc": (["{root}/good.pth", "--eps", "abc"], "not a number"),
    "eps 2": (["{root}/good.pth", "--eps", "2"], "outside [0, 1]"),
    "num-samples 0": (["{root}/good.pth", "--num-samples", "0"], "at least 1"),
    "unwritable out": (["{root}/good.pth", "--out", "/proc/results.csv"], "not writable"),
    "out folder missing": (["{root}/good.pth", "--out", "{root}/no/r.csv"], "does not exist"),
    "csv columns differ": (["{root}/good.pth", "--out", "{root}/other.csv"], "other columns"),
    "mean without std": (["{root}/good.pth", "--mean", "0.5"], "--mean and --std"),
    "mean on a checkpoint": (["{root}/good.pth", "--mean", "0.5", "--std", "0.5"], "ONNX"),
    "unknown method": (["{root}/good.pth", "--methods", "ibp,deepz"], "unknown bound method"),
    "unknown device": (["{root}/good.pth", "--device", "tpu"], "unknown device"),
    "same output twice": (
        ["{root}/good.pth", "--out", "{root}/x.csv", "--per-sample", "{root}/x.csv"],
        "same file",
    ),
    "onnx operator without bounds": (
        ["{root}/floor.onnx", "--dataset", "mnist", "--eps", "0.1"],
        "cannot bound these operators: onnx::Floor",
    ),
    "onnx input shape of another data set": (
        ["{root}/cifar.onnx", "--dataset", "mnist", "--eps", "0.1"],
        "1x28x28 image",
    ),
    "negative start": (["{root}/good.pth", "--start", "-3"], "--start"),
    "seed past 64 bits": (["{root}/good.pth", "--seed", "99999999999999999"], "--seed"),
    "start past the end": (["{root}/good.pth", "--start", "20000"], "10,000"),
}
if not torch.cuda.is_available():
    CASES["cuda without GPU"] = (["{root}/good.pth", "--device", "cuda"], "no CUDA GPU")
# Input errors (a file or the data at fault) exit 1; every other case is a usage error,
# a flag's value at fault, which exits 2 and names the flag, as click's own do.
INPUT_CASES = {
    "missing file",
    "empty file",
    "truncated file",
    "corrupt file",
    "other architecture",
    "other class count",
    "missing data dir",
    "empty data dir",
    "truncated data file",
    "onnx operator without bounds",
    "onnx input shape of another data set",
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gives_one_clean_line(case: str, files, shared_data) -> None:
    args, fragment = CASES[case]
    args = [a.format(root=files) for a in args]
    if "--data-dir" not in args:
        args += ["--data-dir", str(shared_data)]
    if "--num-samples" not in args:
        args += ["--num-samples", "4"]
    before = set(files.rglob("*"))
    result = CliRunner().invoke(cli, ["eval", *args, "--pgd-steps", "2"])
    assert result.exit_code == (1 if case in INPUT_CASES else 2)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    message = result.output.strip()
    assert "Traceback" not in message
    assert len(message.splitlines()) == 1, message
    assert message.startswith("Error: ")
    assert fragment in message
    if case not in INPUT_CASES:
        assert "Invalid value for --" in message
    print(f"{case}: {message}")
    assert set(files.rglob("*")) == before  # nothing written, no temporary files


# --------------------------------------------------------------------------------------
# Hostile checkpoints (a pickle whose loading would run a command): exit 1, one line that
# says so and names the function, and the command never runs.


@pytest.mark.parametrize("container", ["zip", "pickle"])
def test_hostile_checkpoint_exits_1_with_one_line(tmp_path, container: str) -> None:
    import os
    import pickle

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = {"state_dict": {"0.weight": torch.zeros(2)}, "x": RunsCommandOnLoad(str(marker))}
    if container == "zip":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=4))
    result = CliRunner().invoke(cli, ["eval", str(path), "--arch", "cnn_4layer"])
    assert result.exit_code == 1, result.output
    message = result.output.strip()
    assert len(message.splitlines()) == 1 and message.startswith("Error: "), message
    assert "tries to run code" in message and "refused for safety" in message
    assert f"{os.system.__module__}.system" in message
    assert not marker.exists()


# ---------------------------------------------------------------------------------------
# `certify train`: bad input fails in one line before the run folder (r1/) is created.

TRAIN_CASES = {
    "unknown architecture": (
        ["--arch", "no_such_model", "--out-dir", "r1"], 2, "unknown architecture"
    ),
    "unknown architecture, seed's flags": (
        ["--model", "no_such_model", "--dir", "r1"], 2, "unknown architecture"
    ),
    # A config file at fault is an input error, like a missing or corrupt model file.
    "config with a bad key": (["--config", "bad_key.json", "--dir", "r1"], 1, "'optimizer'"),
    "config not JSON": (["--config", "broken.json", "--dir", "r1"], 1, "not valid JSON"),
    "config missing": (
        ["--config", "nope.json", "--dir", "r1"], 1, "--config file nope.json does not exist"
    ),
    "seed past 64 bits": (["--seed", str(2**64), "--out-dir", "r1"], 2, "--seed"),
    "unknown data set": (["--dataset", "svhn", "--out-dir", "r1"], 2, "unknown data set"),
    "no data in the folder": (
        ["--data-dir", "empty_dir", "--out-dir", "r1"], 1, "not found"
    ),
    "eps abc": (["--eps", "abc", "--out-dir", "r1"], 2, "not a number"),
    "eps 2": (["--eps", "2", "--out-dir", "r1"], 2, "outside [0, 1]"),
    "unknown final-evaluation method": (
        ["--eval-methods", "ibp,deepz", "--out-dir", "r1"], 2, "unknown bound method"
    ),
    "results in a missing folder": (
        ["--results", "no/r.csv", "--out-dir", "r1"], 2, "does not exist"
    ),
    "seed flag certify lacks": (["--opt", "SGD", "--dir", "r1"], 2, "--opt (a flag of the seed"),
    "scheduler_opts without length": (
        ["--scheduler_opts", "start=2", "--dir", "r1"], 2, "lacks length"
    ),
    "batch of one image": (["--batch-size", "1", "--out-dir", "r1"], 2, "at least 2"),
    "attack setting of a method without attack": (
        ["--ibp-coef", "0.5", "--out-dir", "r1"], 2, "--ibp-coef"
    ),
    "ibp coefficient above 1": (
        ["--method", "cc-ibp", "--ibp-coef", "1.5", "--out-dir", "r1"], 2, "must be in [0, 1]"
    ),
    "taps on a network it cannot split": (
        ["--method", "taps", "--arch", "wide_resnet_8", "--out-dir", "r1"], 2,
        "split a Sequential network",
    ),
    "taps head as large as the network": (
        ["--method", "taps", "--taps-head-layers", "11", "--out-dir", "r1"], 2,
        "--taps-head-layers",
    ),
    "no attack step": (
        ["--method", "mtl-ibp", "--attack-steps", "0", "--out-dir", "r1"], 2, "--attack-steps"
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_bad_train_input_leaves_nothing_behind(case: str, tmp_path, shared_data, monkeypatch):
    args, code, fragment = TRAIN_CASES[case]
    (tmp_path / "bad_key.json").write_text('{"data": "MNIST", "optimizer": "SGD"}')
    (tmp_path / "broken.json").write_text('{"data": "MNIST",')
    (tmp_path / "empty_dir").mkdir()
    monkeypatch.chdir(tmp_path)
    if "--dataset" not in args and "--config" not in args:
        args = [*args, "--dataset", "mnist"]
    if "--data-dir" not in args:
        args = [*args, "--data-dir", str(shared_data)]
    before = set(tmp_path.rglob("*"))
    result = CliRunner().invoke(cli, ["train", *args, "--num-train", "64", "--val-size", "8"])
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    message = result.output.strip()
    assert "Traceback" not in message
    assert len(message.splitlines()) == 1 and message.startswith("Error: "), message
    assert fragment in message, message
    assert set(tmp_path.rglob("*")) == before  # no r1/, no model/


def test_architecture_options_that_do_not_build_leave_no_run_folder(tmp_path, shared_data):
    from certify.core.errors import ModelError
    from training.config import TrainConfig
    from training.run import train

    config = TrainConfig(
        dataset="mnist", data_dir=shared_data, out_dir=tmp_path / "r1", num_train=64,
        val_size=8, model_options={"depth": 3},
    )  # fmt: skip
    with pytest.raises(ModelError, match="has no option depth"):
        train(config)
    assert not (tmp_path / "r1").exists()
