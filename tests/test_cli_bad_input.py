"""Bad input to `certify eval`: one line saying what to fix, non-zero exit, no traceback,
and no output file left behind."""

from __future__ import annotations

import shutil

import pytest
import torch
from click.testing import CliRunner

from certify.cli import cli
from model_zoo import create_model
from model_zoo.checkpoint import save_checkpoint


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
    "start past the end": (["{root}/good.pth", "--start", "20000"], "10,000"),
}
if not torch.cuda.is_available():
    CASES["cuda without GPU"] = (["{root}/good.pth", "--device", "cuda"], "no CUDA GPU")


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
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    message = result.output.strip()
    assert "Traceback" not in message
    assert len(message.splitlines()) == 1, message
    assert message.startswith("Error: ")
    assert fragment in message
    print(f"{case}: {message}")
    assert set(files.rglob("*")) == before  # nothing written, no temporary files
