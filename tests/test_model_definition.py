"""``certify eval CHECKPOINT --model-def FILE.py:FACTORY``: a checkpoint of an architecture
the registry does not know, built by the user's own code (a small ResNet written here),
evaluated end to end and against the same module given to the API; and the one-line
errors of a missing file, a missing factory and a state dict that does not fit."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

import certify
from certify.cli import cli
from certify.data import load_split
from certify.evaluation.config import EvalMode, attack_config
from model_zoo import ModelDefinition, ModelFile

RESNET = """
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + x)


class SmallResNet(nn.Module):
    def __init__(self, width=4, num_classes=10):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, stride=2, padding=1)
        self.block = Block(width)
        self.head = nn.Linear(width * 16 * 16, num_classes)

    def forward(self, x):
        x = self.block(torch.relu(self.stem(x)))
        return self.head(x.flatten(1))


def small_resnet(width=4, num_classes=10):
    return SmallResNet(width, num_classes)
"""

ARGS = ["--dataset", "cifar", "--eps", "1/255", "--num-samples", "8", "--pgd-steps", "5",
        "--methods", "ibp,crown"]  # fmt: skip


@pytest.fixture
def definition(tmp_path: Path) -> tuple[Path, Path, torch.nn.Module]:
    """resnet.py, a bare state dict of small_resnet(width=6) with BatchNorm statistics
    that are not the defaults, and the module itself."""
    source = tmp_path / "resnet.py"
    source.write_text(RESNET)
    network = ModelDefinition(str(source), "small_resnet", {"width": 6}).build()
    torch.manual_seed(0)
    with torch.no_grad():
        for bn in (network.block.bn1, network.block.bn2):
            bn.running_mean.uniform_(-0.1, 0.1)
            bn.running_var.uniform_(0.5, 1.5)
    checkpoint = tmp_path / "model_best.pth"
    torch.save(network.state_dict(), checkpoint)
    return source, checkpoint, network.eval()


def _eval(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["eval", *args])
    return result.exit_code, result.output


def test_a_defined_network_evaluates_as_the_same_module_through_the_api(
    definition, shared_data: Path, tmp_path: Path
) -> None:
    source, checkpoint, network = definition
    per_sample = tmp_path / "samples.csv"
    code, output = _eval(
        str(checkpoint), "--model-def", f"{source}:small_resnet",
        "--model-args", json.dumps({"width": 6}), "--data-dir", str(shared_data),
        "--per-sample", str(per_sample), *ARGS,
    )  # fmt: skip
    assert code == 0, output
    assert "resnet.py:small_resnet" in output  # the architecture column names the factory
    attack = attack_config(EvalMode.CASCADE, 5)
    config = certify.EvalConfig(methods="ibp,crown", num_samples=8, attack=attack)
    direct = certify.evaluate(network, "cifar", "1/255", config, data_dir=shared_data)
    cli_rows = pd.read_csv(per_sample)
    assert list(cli_rows["clean_pred"]) == list(direct.samples["clean_pred"])
    assert list(cli_rows["verified_any"]) == list(direct.samples["verified_any"])
    both = cli_rows["margin_lower_ibp"].notna()
    diff = (cli_rows["margin_lower_ibp"][both] - direct.samples["margin_lower_ibp"][both]).abs()
    assert diff.max() <= 1e-4 * (1 + cli_rows["margin_lower_ibp"].abs().max())


def test_a_module_factory_on_the_python_path_builds_the_network(
    definition, shared_data: Path, monkeypatch
) -> None:
    source, checkpoint, network = definition
    monkeypatch.syspath_prepend(str(source.parent))
    defined = ModelDefinition.parse("resnet:small_resnet", '{"width": 6}')
    result = certify.evaluate(
        ModelFile(checkpoint, definition=defined), "cifar", "1/255",
        certify.EvalConfig(methods="ibp", num_samples=4), data_dir=shared_data,
    )  # fmt: skip
    images = load_split("cifar", shared_data, "test", 0, 4).images
    with torch.no_grad():
        assert result.samples["clean_pred"].tolist() == network(images).argmax(1).tolist()


def test_bad_definitions_get_one_line_each(definition, shared_data: Path, tmp_path: Path) -> None:
    source, checkpoint, _ = definition
    common = [str(checkpoint), "--data-dir", str(shared_data), *ARGS]
    cases = [
        # (extra flags, exit code, words the line must hold)
        (["--model-def", f"{tmp_path / 'nope.py'}:small_resnet"], 2,
         ["--model-def", "nope.py does not exist"]),
        (["--model-def", f"{source}:resnet50"], 2, ["--model-def", "defines no resnet50",
                                                    "small_resnet"]),
        (["--model-def", "resnet.py"], 2, ["--model-def", "FILE.py:FACTORY"]),
        (["--model-def", f"{source}:small_resnet"], 1,
         ["does not fit resnet.py:small_resnet", "block.conv1.weight is (6, 6, 3, 3) in the "
          "file but (4, 4, 3, 3) in the model"]),
        (["--model-def", f"{source}:small_resnet", "--model-args", "{width: 6}"], 2,
         ["--model-args", "not JSON"]),
        (["--model-args", '{"width": 6}'], 2, ["--model-args", "goes with --model-def"]),
        (["--model-def", f"{source}:small_resnet", "--arch", "cnn"], 2, ["--arch"]),
    ]  # fmt: skip
    for extra, exit_code, words in cases:
        code, output = _eval(*common, *extra)
        lines = output.strip().splitlines()
        assert code == exit_code and len(lines) == 1, (extra, output)
        assert "Traceback" not in output
        for word in words:
            assert word in lines[0], (extra, lines[0])


NORMALIZED = '''
import torch
from torch import nn


class Normalize(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.zeros(1, 3, 1, 1))
        self.register_buffer("std", torch.ones(1, 3, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class Inside(nn.Module):
    """The normalization inside, under the names certify's own files give it."""

    def __init__(self):
        super().__init__()
        self.normalize = Normalize()
        self.model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))

    def forward(self, x):
        return self.model(self.normalize(x))


def inside():
    return Inside()


def bare():
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
'''


def test_a_stored_normalization_is_applied_once(tmp_path: Path, shared_data: Path) -> None:
    """A file of ``normalize.{mean,std}`` and ``model.*``: loaded into a network that has
    the normalization inside, it is not wrapped again; loaded into the bare network, the
    stored normalization goes around it. Either way the function is the file's."""
    source = tmp_path / "nets.py"
    source.write_text(NORMALIZED)
    reference = ModelDefinition(str(source), "inside").build()
    torch.manual_seed(0)
    with torch.no_grad():
        reference.normalize.mean.uniform_(0.3, 0.6)
        reference.normalize.std.uniform_(0.2, 0.3)
        reference.model[1].weight.normal_(0, 0.05)
    checkpoint = tmp_path / "normalized.pth"
    torch.save(reference.state_dict(), checkpoint)
    images = load_split("cifar", shared_data, "test", 0, 16).images
    with torch.no_grad():
        expected = reference.eval()(images)
    for factory in ("inside", "bare"):
        loaded = ModelFile(checkpoint, definition=ModelDefinition(str(source), factory)).load()
        with torch.no_grad():
            torch.testing.assert_close(loaded.model(images), expected, rtol=1e-5, atol=1e-5)
