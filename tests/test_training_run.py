"""Tests of training as a whole: steps on real MNIST, resume, checkpoints, CROWN-IBP and
the ``certify train`` command end to end. Tiny models and a few hundred images."""

from __future__ import annotations

import copy
import csv
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from certify.bounds.interval import IntervalNetwork
from certify.bounds.margins import margin_matrix
from certify.bounds.training_bounders import CrownIBPBounder, IBPBounder
from certify.cli import cli
from certify.core.errors import UsageError
from certify.data import load_split
from model_zoo import create_model
from model_zoo.checkpoint import load_checkpoint, read_checkpoint
from model_zoo.normalization import NormalizedModel
from reports.training_log import COLUMNS
from training.config import TrainConfig
from training.data import Augmentation, Split, augment_batch, batches, split_validation
from training.init import ibp_init
from training.loop import StepConfig, train_epoch
from training.losses import robust_cross_entropy
from training.methods import Method
from training.presets import preset_values, resolve_config
from training.regularizers import warmup_regularizers
from training.run import lr_at, train
from training.schedulers import EpsSchedule


def _mnist(shared_data: Path, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    data = load_split("mnist", shared_data, "train", 0, n)
    return data.images, data.labels


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _small_model() -> NormalizedModel:
    return NormalizedModel(
        create_model("cnn_4layer", 1, 28, 10, width=8, linear_size=32), (0.0,), (1.0,)
    )


def test_fast_steps_reduce_the_loss_on_real_mnist(shared_data: Path) -> None:
    images, labels = _mnist(shared_data, 576)
    model = _small_model()
    ibp_init(model, torch.Generator().manual_seed(0))
    bounder = IBPBounder(model)
    held_x, held_y = images[512:], labels[512:]

    def objective() -> float:
        # Robust loss plus regularizers at a fixed eps on held-out images.
        model.train()
        with torch.no_grad():
            result = bounder.bounds(held_x, 0.02, margin_matrix(held_y, 10))
            reg = warmup_regularizers(result.input_bounds.radius, result.pre_relu, 0.5)
            return float(robust_cross_entropy(result.lower) + 0.5 * reg.total)

    before = objective()
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
    schedule = EpsSchedule(0.1, start=1, length=4, epoch_length=8)
    config = StepConfig(Method.FAST, max_eps=0.1, num_classes=10)
    split = Split(images[:512], labels[:512])
    generator = torch.Generator().manual_seed(0)
    for epoch in (1, 2):
        data = batches(split, 64, generator, Augmentation())
        stats = train_epoch(
            model, bounder, optimizer, data, schedule, epoch, config, torch.device("cpu")
        )
        assert stats.meter.mean("reg_tightness") is not None
    after = objective()
    assert after < 0.8 * before


def test_batch_norm_statistics_match_a_clean_step() -> None:
    """In train mode the interval pass updates running statistics as a clean step does."""
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
        nn.Linear(4 * 26 * 26, 8), nn.BatchNorm1d(8, momentum=None), nn.ReLU(), nn.Linear(8, 3),
    )  # fmt: skip
    twin = copy.deepcopy(model)
    x = torch.rand(16, 1, 28, 28)
    model.train()
    twin.train()
    for _ in range(2):
        result = IntervalNetwork(model)(x, 0.01)
        expected = twin(x)
    assert torch.allclose(result.logits, expected, atol=1e-5)
    for mine, ref in zip(model.modules(), twin.modules(), strict=True):
        if isinstance(mine, nn.modules.batchnorm._BatchNorm):
            assert torch.allclose(mine.running_mean, ref.running_mean, atol=1e-6)
            assert torch.allclose(mine.running_var, ref.running_var, atol=1e-6)
            assert int(mine.num_batches_tracked) == int(ref.num_batches_tracked) == 2


def test_interval_bounds_equal_auto_lirpa_ibp() -> None:
    from certify.bounds.lirpa_compat import load_auto_lirpa

    lirpa = load_auto_lirpa()
    model = NormalizedModel(
        create_model("cnn_4layer", 3, 32, 10), (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    )
    ibp_init(model)
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    spec = margin_matrix(y, 10)
    bounded = CrownIBPBounder(model, (3, 32, 32), torch.device("cpu"), max_eps=0.01)
    for train_mode in (True, False):
        bounded.train(train_mode)
        ptb = lirpa.PerturbationLpNorm(
            norm=float("inf"), eps=0.01, x_L=(x - 0.01).clamp(0, 1), x_U=(x + 0.01).clamp(0, 1)
        )
        with torch.no_grad():
            bounded.module(lirpa.BoundedTensor(x, ptb))
            lower, upper = bounded.module.compute_bounds(C=spec, method="IBP")
            bounded.sync()
            model.train(train_mode)
            mine = IntervalNetwork(model)(x, 0.01, spec)
        scale = lower.abs().max()
        assert torch.allclose(mine.lower, lower, atol=1e-5 * scale, rtol=1e-5)
        assert torch.allclose(mine.upper, upper, atol=1e-5 * scale, rtol=1e-5)


def test_crown_ibp_epoch_copies_batch_norm_statistics_back(shared_data: Path) -> None:
    images, labels = _mnist(shared_data, 128)
    model = _small_model()
    bounder = CrownIBPBounder(model, (1, 28, 28), torch.device("cpu"), max_eps=0.1)
    assert model.training  # building the BoundedModule must not switch the model to eval
    bn = model.model[1]
    before = bn.running_mean.clone()
    schedule = EpsSchedule(0.1, start=1, length=1, epoch_length=4)
    config = StepConfig(Method.CROWN_IBP, max_eps=0.1, num_classes=10)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-4)
    data = batches(Split(images, labels), 32, torch.Generator().manual_seed(0), Augmentation())
    stats = train_epoch(model, bounder, optimizer, data, schedule, 1, config, torch.device("cpu"))
    assert stats.meter.mean("robust_ce") is not None
    assert not torch.equal(bn.running_mean, before)
    assert int(bn.num_batches_tracked) == 4


def test_augmentation_crops_with_edge_padding_and_flips() -> None:
    x = torch.arange(16.0).view(1, 1, 4, 4).repeat(64, 1, 1, 1)
    out = augment_batch(
        x, Augmentation(crop_padding=1, flip=True), torch.Generator().manual_seed(0)
    )
    assert out.shape == x.shape
    # Every crop of the edge-padded image is a 4x4 window with values from the image.
    assert set(out.unique().tolist()) <= set(range(16))
    assert not torch.equal(out, x)
    identity = augment_batch(x, Augmentation(), torch.Generator())
    assert torch.equal(identity, x)


def test_validation_split_is_disjoint_and_repeatable() -> None:
    images, labels = torch.arange(100.0).view(100, 1, 1, 1), torch.arange(100)
    train_a, val_a = split_validation(images, labels, 20, seed=3)
    train_b, val_b = split_validation(images, labels, 20, seed=3)
    assert torch.equal(val_a.labels, val_b.labels) and len(train_a) == 80
    assert not set(val_a.labels.tolist()) & set(train_a.labels.tolist())
    with pytest.raises(UsageError):
        split_validation(images, labels, 99, seed=0)


def test_presets_equal_the_seed_readme() -> None:
    mnist, cifar, tiny = (
        preset_values("mnist"),
        preset_values("cifar"),
        preset_values("tinyimagenet"),
    )
    assert (mnist["eps"], mnist["batch_size"], mnist["epochs"]) == (0.4, 256, 70)
    assert (mnist["schedule_start"], mnist["schedule_length"], mnist["lr_milestones"]) == (
        1,
        20,
        (50, 60),
    )
    assert cifar["eps"] == 8 / 255 and cifar["batch_size"] == 128 and cifar["epochs"] == 160
    assert (cifar["schedule_start"], cifar["schedule_length"], cifar["lr_milestones"]) == (
        2,
        80,
        (120, 140),
    )
    assert (cifar["crop_padding"], cifar["flip"]) == (2, True)
    assert tiny["eps"] == 1 / 255 and tiny["num_classes"] == 200 and tiny["reg_lambda"] == 0.2
    assert (tiny["schedule_start"], tiny["schedule_length"], tiny["epochs"]) == (2, 20, 80)
    assert (tiny["lr_milestones"], tiny["grad_acc_steps"], tiny["crop_padding"]) == ((61, 71), 2, 4)
    config = resolve_config("cifar", data_dir="d", out_dir="o", epochs=3)
    assert config.epochs == 3 and config.eps == 8 / 255 and config.lr == 5e-4


def test_lr_steps_after_milestones() -> None:
    config = TrainConfig("mnist", Path("d"), Path("o"), lr=1.0, lr_milestones=(2, 4))
    assert [lr_at(config, e) for e in (1, 2, 3, 4, 5)] == pytest.approx([1, 1, 0.2, 0.2, 0.04])


def _config(shared_data: Path, out_dir: Path, **changes) -> TrainConfig:
    values = dict(
        dataset="mnist", data_dir=shared_data, out_dir=out_dir, arch="cnn_4layer", eps=0.1,
        epochs=2, batch_size=50, num_train=260, val_size=60, schedule_start=1,
        schedule_length=1, final_eval=False, device="cpu", seed=1,
        model_options={"width": 4, "linear_size": 16},
    )  # fmt: skip
    values.update(changes)
    return TrainConfig(**values)


def test_resume_continues_exactly(shared_data: Path, tmp_path: Path) -> None:
    straight = train(_config(shared_data, tmp_path / "a"))
    train(_config(shared_data, tmp_path / "b", epochs=1))
    resumed = train(_config(shared_data, tmp_path / "b", resume=True))
    a = read_checkpoint(straight.last_path)
    b = read_checkpoint(resumed.last_path)
    assert a["epoch"] == b["epoch"] == 2
    for key, value in a["state_dict"].items():
        assert torch.allclose(value.float(), b["state_dict"][key].float(), atol=1e-6), key
    assert torch.equal(a["training"]["data_rng"], b["training"]["data_rng"])
    logs = [_csv_rows(r.log_path) for r in (straight, resumed)]
    assert [r["epoch"] for r in logs[1]] == ["1", "2"]
    assert logs[0][1]["loss"] == logs[1][1]["loss"]
    assert straight.best.epoch == resumed.best.epoch
    with pytest.raises(UsageError, match="differ"):
        train(_config(shared_data, tmp_path / "b", resume=True, eps=0.2, epochs=3))
    with pytest.raises(UsageError, match="already holds a run"):
        train(_config(shared_data, tmp_path / "b"))


def test_checkpoints_load_as_models_with_their_settings(shared_data: Path, tmp_path: Path) -> None:
    result = train(_config(shared_data, tmp_path / "run", epochs=1, method=Method.CROWN_IBP))
    loaded = load_checkpoint(result.best_path)
    assert loaded.arch == "cnn_4layer" and loaded.dataset == "mnist" and loaded.eps == 0.1
    raw = read_checkpoint(result.last_path)
    assert raw["method"] == "crown-ibp" and raw["train_args"]["num_train"] == 260
    assert raw["training"]["epoch"] == 1 and "state" in raw["training"]["optimizer"]
    assert "training" not in read_checkpoint(result.best_path)
    with open(result.log_path) as f:
        assert tuple(next(csv.reader(f))) == COLUMNS


def test_certify_train_end_to_end(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = [
        "train", "--dataset", "mnist", "--data-dir", str(shared_data), "--out-dir", str(out),
        "--eps", "1/10", "--epochs", "2", "--batch-size", "50", "--num-train", "260",
        "--val-size", "60", "--schedule-length", "1", "--test-samples", "100",
        "--pgd-steps", "2", "--device", "cpu", "--seed", "0",
    ]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert (out / "best.pth").exists() and (out / "last.pth").exists()
    rows = _csv_rows(out / "results.csv")
    assert rows[0]["model"] == "best.pth" and rows[0]["method"] == "ibp"
    assert rows[0]["run"] == str(out.resolve())
    assert rows[0]["num_samples"] == "100" and float(rows[0]["eps_value"]) == 0.1
    report = CliRunner().invoke(cli, ["report", str(out / "results.csv"), "--format", "csv"])
    assert report.output.splitlines()[1].startswith(f"{out.resolve()},mnist,0.1,100,")
    log = _csv_rows(out / "train_log.csv")
    assert len(log) == 2 and float(log[-1]["eps"]) == pytest.approx(0.1)
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 1 and "--resume" in again.output
    resume_args = ["train", "--out-dir", str(out), "--resume", "--epochs", "3", "--no-final-eval"]
    resumed = CliRunner().invoke(cli, [*resume_args, "--data-dir", str(shared_data)])
    assert resumed.exit_code == 0, resumed.output
    assert len(_csv_rows(out / "train_log.csv")) == 3
    evaluated = CliRunner().invoke(
        cli, ["eval", str(out / "best.pth"), "--data-dir", str(shared_data), "--methods", "ibp",
              "--num-samples", "20", "--pgd-steps", "1", "--device", "cpu"]
    )  # fmt: skip
    assert evaluated.exit_code == 0, evaluated.output


def test_certify_train_rejects_bad_options(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["train", "--out-dir", str(tmp_path), "--eps", "2"])
    assert result.exit_code != 0 and "eps" in result.output
    result = CliRunner().invoke(cli, ["train", "--out-dir", str(tmp_path)])
    assert result.exit_code == 1 and "--dataset" in result.output


def test_export_writes_onnx_with_normalization(shared_data: Path, tmp_path: Path) -> None:
    from model_zoo.onnx.loading import load_onnx

    result = train(_config(shared_data, tmp_path / "run", epochs=1))
    out = tmp_path / "model.onnx"
    cli_result = CliRunner().invoke(cli, ["export", str(result.best_path), str(out)])
    assert cli_result.exit_code == 0, cli_result.output
    model = load_checkpoint(result.best_path).model
    back = load_onnx(out, input_shape=(1, 28, 28)).model
    images = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(back(images), model(images), atol=1e-4)
    bad = CliRunner().invoke(cli, ["export", str(result.best_path), str(tmp_path / "m.txt")])
    assert bad.exit_code == 2 and ".onnx" in bad.output  # a usage error: OUT at fault


def test_a_soundness_failure_in_the_final_evaluation_exits_3(
    shared_data: Path, tmp_path: Path, monkeypatch
) -> None:
    """Bounds that verify images PGD attacks make the final evaluation fail as a bug: exit
    3, the per-image file in the run folder, the checkpoints kept."""
    from certify.evaluation import images

    monkeypatch.setattr(
        images._ImageRun, "_bound", lambda self, which, method: torch.ones(len(which))
    )
    attacked = lambda self, which, stage: torch.zeros(len(which), dtype=torch.bool)  # noqa: E731
    monkeypatch.setattr(images._ImageRun, "_attack", attacked)
    out = tmp_path / "run"
    args = [
        "train", "--dataset", "mnist", "--data-dir", str(shared_data), "--out-dir", str(out),
        "--eps", "0.1", "--epochs", "1", "--batch-size", "50", "--num-train", "100",
        "--val-size", "50", "--test-samples", "30", "--pgd-steps", "2", "--device", "cpu",
    ]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 3, result.output
    assert "soundness check failed" in result.output and "bug" in result.output
    samples = _csv_rows(out / "soundness_failure_samples.csv")
    assert len(samples) == 30 and (out / "best.pth").exists()


def test_eval_eps_validates_selects_and_evaluates_at_its_own_eps(
    shared_data: Path, tmp_path: Path
) -> None:
    """Trained at eps 0.1 for 0.05: the log's eps_max is the training eps, the checkpoint
    records 0.05 for `certify eval`, and the final evaluation's rows are at 0.05."""
    from model_zoo import load_model
    from training.config import TrainConfig
    from training.run import train

    config = TrainConfig(
        dataset="mnist", data_dir=shared_data, out_dir=tmp_path / "run", arch="cnn_4layer",
        model_options={"width": 4, "linear_size": 16}, epochs=2, batch_size=64, num_train=400,
        val_size=100, schedule_start=1, schedule_length=1, eps=0.1, eval_eps=0.05,
        test_samples=20, pgd_steps=2, device="cpu",
    )  # fmt: skip
    run = train(config)
    assert {row["eps_max"] for row in _csv_rows(run.log_path)} == {"0.1"}
    assert load_model(run.best_path).eps == 0.05
    rows = _csv_rows(run.results_path)
    assert {row["eps_value"] for row in rows} == {"0.05"}
    with pytest.raises(UsageError) as info:
        config.with_changes(eval_eps=1.5)
    assert info.value.param == "eval_eps"
