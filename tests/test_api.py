"""The Python verbs as a user calls them: ``certify.evaluate`` with an ``EvalConfig`` on a
path, a ``ModelFile`` or any ``nn.Module``, and ``certify.train``; each checked against
the CLI or a second path. The keyword form of earlier releases still works, with a
deprecation warning."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import certify
from certify import EvalConfig
from certify.cli import cli
from certify.core.errors import CertifyError, UsageError
from certify.data import load_split
from certify.evaluation.attack import AttackLoss, PGDConfig
from certify.pipeline.embedded import EMBEDDED_MODEL
from model_zoo import ModelFile, create_model, list_models, load_model
from model_zoo.normalization import NormalizedModel

# The CLI's attack in the cascade: two restarts of each loss.
CONFIG = EvalConfig(
    methods="ibp,crown-ibp",
    num_samples=48,
    attack=PGDConfig(steps=5, restarts=2, losses=(AttackLoss.MARGIN, AttackLoss.CE)),
)
CLI_SETTINGS = ["--num-samples", "48", "--pgd-steps", "5", "--methods", "ibp,crown-ibp"]


def _cli_samples(args: list[str], tmp_path: Path) -> pd.DataFrame:
    per_sample = tmp_path / "samples.csv"
    result = CliRunner().invoke(
        cli, ["eval", *args, *CLI_SETTINGS, "--per-sample", str(per_sample)]
    )
    assert result.exit_code == 0, result.output
    return pd.read_csv(per_sample)


def _same_outcomes(api: pd.DataFrame, cli_file: pd.DataFrame, margin_tol: float) -> None:
    assert list(api.columns) == list(cli_file.columns)
    exact = [c for c in api.columns if not c.startswith("margin_lower_")]
    pd.testing.assert_frame_equal(api[exact], cli_file[exact], check_dtype=False)
    for column in api.columns.difference(exact):
        scale = 1.0 + cli_file[column].abs().max()
        assert (api[column] - cli_file[column]).abs().max() <= margin_tol * scale, column


def test_evaluate_a_checkpoint_path_gives_the_cli_per_sample_file(tmp_path: Path) -> None:
    result = certify.evaluate(EMBEDDED_MODEL, config=CONFIG)
    assert isinstance(result, certify.EvalResult)
    # The CSV keeps 6 significant digits of each margin bound.
    _same_outcomes(result.samples, _cli_samples([], tmp_path), margin_tol=1e-5)
    s = result.summary
    assert s.num_samples == 48 and set(result.seconds) >= {"clean", "pgd", "ibp", "crown-ibp"}
    # Errors are float32 means of the per-image flags.
    assert math.isclose(s.clean_error, 1 - result.samples["clean_correct"].mean(), abs_tol=1e-6)
    verified = result.samples["verified_any"].mean()
    assert math.isclose(s.best_verified_error, 1 - verified, abs_tol=1e-6)
    assert result.settings.model == EMBEDDED_MODEL.name and result.settings.config == CONFIG
    assert result.settings.dataset == "mnist" and result.settings.columns()["eps"] == "0.4"


def test_the_keyword_form_of_earlier_releases_warns_and_gives_the_same_outcomes() -> None:
    with pytest.warns(DeprecationWarning, match="EvalConfig"):
        old = certify.evaluate(EMBEDDED_MODEL, num_samples=48, pgd_steps=5, methods="ibp,crown-ibp")
    new = certify.evaluate(EMBEDDED_MODEL, config=CONFIG)
    pd.testing.assert_frame_equal(old.samples, new.samples)
    assert old.settings.config == new.settings.config
    with pytest.raises(UsageError) as info:
        certify.evaluate(EMBEDDED_MODEL, config=CONFIG, num_samples=4)
    assert info.value.param == "config"


def test_the_readme_python_example_runs(tmp_path: Path, monkeypatch) -> None:
    """The example of the README's Python section, as written there, on the bundled
    model (the README names a data folder of the user's; here the bundled images)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("```python\n", 1)[1].split("```", 1)[0]
    assert "EvalConfig(" in block and "certify.evaluate(" in block
    namespace: dict = {}
    monkeypatch.chdir(tmp_path)  # it writes its CSV files beside it
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102
    result = namespace["result"]
    assert isinstance(result, certify.EvalResult) and result.summary.num_samples == 100
    assert (tmp_path / "results.csv").is_file() and (tmp_path / "samples.csv").is_file()


def _small_mnist_network(shared_data: Path) -> nn.Module:
    """A plain Sequential, trained a little so that some images verify at a small eps."""
    torch.manual_seed(0)
    network = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))
    data = load_split("mnist", shared_data, "train", num_samples=2000)
    optimizer = torch.optim.Adam(network.parameters(), lr=3e-3)
    for i in range(0, 2000, 50):
        loss = nn.functional.cross_entropy(
            network(data.images[i : i + 50]), data.labels[i : i + 50]
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return network.eval()


def test_evaluate_a_plain_module_gives_the_cli_result_of_its_onnx_file(
    shared_data: Path, tmp_path: Path
) -> None:
    network = _small_mnist_network(shared_data)
    onnx_file = tmp_path / "mlp.onnx"
    torch.onnx.export(network, torch.zeros(1, 1, 28, 28), onnx_file, dynamo=False)
    result = certify.evaluate(network, "mnist", "2/255", CONFIG, data_dir=shared_data)
    cli_file = _cli_samples(
        [str(onnx_file), "--dataset", "mnist", "--eps", "2/255", "--data-dir", str(shared_data)],
        tmp_path,
    )
    # The ONNX conversion computes the same function up to float32 rounding.
    _same_outcomes(result.samples, cli_file, margin_tol=1e-4)
    assert result.samples["verified_any"].sum() > 0  # the comparison covers verified images
    assert result.settings.model == "Sequential" and result.settings.columns()["eps"] == "2/255"


def test_mean_and_std_normalize_a_module_as_a_normalization_layer_does(shared_data: Path) -> None:
    network = create_model("cnn_4layer", 3, 32, 10, width=4, linear_size=16).eval()
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    common = {"dataset": "cifar", "eps": 1 / 255, "data_dir": shared_data, "num_samples": 8}
    with pytest.warns(DeprecationWarning):
        given = certify.evaluate(network, mean=mean, std=std, pgd_steps=2, methods="ibp", **common)
    config = EvalConfig(methods="ibp", num_samples=8, attack=PGDConfig(steps=2, restarts=2,
                        losses=(AttackLoss.MARGIN, AttackLoss.CE)))  # fmt: skip
    inside = certify.evaluate(
        NormalizedModel(network, mean, std), "cifar", 1 / 255, config, data_dir=shared_data
    )
    pd.testing.assert_frame_equal(given.samples, inside.samples)


def test_bad_arguments_name_the_parameter(shared_data: Path) -> None:
    network = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    calls = {
        "eps": lambda: certify.evaluate(network, "mnist", "8/0", data_dir=shared_data),
        "batch_size": lambda: EvalConfig(batch_size=0),
        "methods": lambda: EvalConfig(methods="ibp,deepz"),
        "seed": lambda: EvalConfig(seed=-1),
        "mode": lambda: EvalConfig(mode="fastest"),
        "dataset": lambda: certify.evaluate(network, "svhn", 0.1, data_dir=shared_data),
        "std": lambda: ModelFile(EMBEDDED_MODEL, mean=(0.5,)),
        "config": lambda: certify.evaluate(network, "mnist", 0.1, {"methods": "ibp"}),
    }
    for param, call in calls.items():
        with pytest.raises(CertifyError) as info:
            call()
        assert info.value.param == param, (param, str(info.value))
        assert str(info.value).startswith(f"{param}: ")
    with pytest.raises(UsageError) as info:
        certify.evaluate(network, eps=0.1, data_dir=shared_data)
    assert info.value.param == "dataset"


def test_cli_usage_errors_exit_2_and_name_the_flag(shared_data: Path, tmp_path: Path) -> None:
    for args, flag in (
        (["eval", "--batch-size", "0"], "--batch-size"),
        (["eval", "--eps", "8/0"], "--eps"),
        (["eval", "--methods", "deepz"], "--methods"),
        (["train", "--dataset", "mnist", "--data-dir", str(shared_data), "--out-dir",
          str(tmp_path / "run"), "--epochs", "0"], "--epochs"),
    ):  # fmt: skip
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"Error: Invalid value for {flag}: ")
    assert not (tmp_path / "run").exists()
    missing = CliRunner().invoke(cli, ["eval", str(tmp_path / "nope.pth")])
    assert missing.exit_code == 1 and "does not exist" in missing.output


def test_model_zoo_verbs_are_exported(tmp_path: Path) -> None:
    assert "cnn_4layer" in list_models()
    loaded = load_model(EMBEDDED_MODEL)
    assert loaded.arch == "cnn_4layer" and loaded.dataset == "mnist" and loaded.eps == 0.4
    network = create_model("cnn_4layer", 1, 28, 10)
    assert network(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_train_evaluates_the_selected_model_in_memory_as_its_checkpoint_evaluates(
    shared_data: Path, tmp_path: Path
) -> None:
    config = certify.TrainConfig(
        dataset="mnist", data_dir=shared_data, out_dir=tmp_path / "run", arch="cnn_4layer",
        model_options={"width": 4, "linear_size": 16}, epochs=3, batch_size=64, num_train=600,
        val_size=100, schedule_start=1, schedule_length=1, eps=0.05, test_samples=40,
        pgd_steps=3, eval_methods=("ibp", "crown-ibp"), device="cpu",
    )  # fmt: skip
    run = certify.train(config)
    assert isinstance(run, certify.TrainResult) and run.evaluation is not None
    # The final evaluation ran on the selected epoch's weights in memory; the checkpoint
    # that training wrote for that epoch must give the same outcomes through its file.
    config = EvalConfig(methods=("ibp", "crown-ibp"), num_samples=40,
                        attack=PGDConfig(steps=3, restarts=2,
                                         losses=(AttackLoss.MARGIN, AttackLoss.CE)))  # fmt: skip
    from_file = certify.evaluate(run.best_path, config=config, data_dir=shared_data, device="cpu")
    pd.testing.assert_frame_equal(run.evaluation.samples, from_file.samples, rtol=1e-5)
    rows = pd.read_csv(run.results_path)
    assert list(rows["method"]) == ["ibp", "crown-ibp"] and set(rows["model"]) == {"best.pth"}
