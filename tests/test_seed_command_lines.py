"""The seed's command lines under ``certify train``: its README's three training commands
give the presets' settings, its flags alias certify's or are refused by name, and its
config JSON files (``--config``) are read by :mod:`training.seed_config`.

The commands and config contents below are those of the seed's README and config/*.json
(Shi et al.'s code), with ``{method}`` = fast and ``{model}`` = the README's first choice.
"""

from __future__ import annotations

import json
import shlex
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from certify.cli import cli
from certify.commands.seed_flags import SEED_ONLY
from certify.commands.train_command import config_from_args, train_command
from certify.core.errors import UsageError
from training.methods import Method
from training.presets import resolve_config
from training.schedulers import ScheduleKind, parse_scheduler_opts
from training.seed_config import read_seed_config

# The seed's config files, as their JSON says (config/mnist.json, cifar.json,
# tinyimagenet.ibp.json, defaults.json).
SEED_FILES: dict[str, dict[str, Any]] = {
    "mnist.json": {
        "data": "MNIST",
        "batch_size": 256,
        "bound_params": {
            "eps": 0.4,
            "bound_type": "IBP",
            "bound_opts": {"relu": "adaptive", "exp": "clamp_constant"},
        },
    },
    "cifar.json": {"data": "CIFAR", "batch_size": 128, "bound_params": {"eps": 0.03137}},
    "tinyimagenet.ibp.json": {
        "model": "cnn_layer_bn",
        "data": "tinyimagenet",
        "training_params": {
            "num_epochs": 80,
            "scheduler_name": "SmoothedScheduler",
            "scheduler_opts": "start=11,length=20",
            "batch_size": 128,
            "lr_decay_factor": 0.2,
            "lr_decay_milestones": "",
        },
        "bound_params": {"eps": 0.00392, "bound_type": "IBP"},
    },
    "defaults.json": {
        "data": "CIFAR",
        "seed": 100,
        "training_params": {"method": "robust", "batch_size": 128},
        "bound_params": {
            "eps": 0.03137,
            "bound_opts": {"relu": "adaptive", "exp": "clamp_constant"},
        },
    },
}

# The README's commands as typed there: (command line, preset, run folder, what the
# command and its config file say, read off by hand).
README = {
    "mnist": (
        "python train.py --method=fast --dir=model_mnist --scheduler_opts=start=1,length=20 "
        "--lr-decay-milestones=50,60 --num-epochs=70 --config=config/mnist.json --model=cnn ",
        "model_mnist",
        {"eps": 0.4, "batch_size": 256, "schedule_start": 1, "schedule_length": 20,
         "epochs": 70, "lr_milestones": (50, 60), "arch": "cnn", "crop_padding": 0},
    ),
    "cifar": (
        "python train.py --method=fast --dir=model_cifar --scheduler_opts=start=2,length=80 "
        "--lr-decay-milestones=120,140 --num-epochs=160 --config=config/cifar.json --model=cnn ",
        "model_cifar",
        {"eps": float(Fraction(8, 255)), "batch_size": 128, "schedule_start": 2,
         "schedule_length": 80, "epochs": 160, "lr_milestones": (120, 140), "crop_padding": 2,
         "flip": True},
    ),
    "tinyimagenet": (
        "python train.py --method=fast --config=config/tinyimagenet.ibp.json "
        "--model=cnn_7layer_bn_imagenet --scheduler_name=SmoothedScheduler "
        "--scheduler_opts=start=2,length=20 --reg-lambda=2e-1 --num-epochs=80  "
        "--lr-decay-milestones=61,71 --num-class 200 --grad-acc-steps=2 --batch-size=128",
        "model",
        {"eps": float(Fraction(1, 255)), "batch_size": 128, "schedule_start": 2,
         "schedule_length": 20, "epochs": 80, "lr_milestones": (61, 71), "reg_lambda": 0.2,
         "num_classes": 200, "grad_acc_steps": 2, "crop_padding": 4, "flip": True},
    ),
}  # fmt: skip


@pytest.fixture
def seed_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working folder with the seed's config/ files, as its commands expect."""
    (tmp_path / "config").mkdir()
    for name, content in SEED_FILES.items():
        (tmp_path / "config" / name).write_text(json.dumps(content, indent=4))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CERTIFY_DATA", raising=False)
    return tmp_path


def _seed_args(line: str) -> list[str]:
    return shlex.split(line)[2:]  # without "python train.py"


@pytest.mark.parametrize("preset", list(README))
def test_readme_command_gives_the_presets_settings(preset: str, seed_dir: Path) -> None:
    line, out_dir, stated = README[preset]
    config = config_from_args(_seed_args(line))
    assert config == resolve_config(preset, data_dir="data", out_dir=out_dir)
    for name, value in stated.items():
        assert getattr(config, name) == value, name
    assert config.method is Method.FAST and config.schedule is ScheduleKind.SMOOTHED
    assert config.out_dir == Path(out_dir) and config.data_dir == Path("data")


def test_data_folder_defaults_to_certify_data(seed_dir: Path, monkeypatch) -> None:
    monkeypatch.setenv("CERTIFY_DATA", str(seed_dir / "elsewhere"))
    config = config_from_args(_seed_args(README["mnist"][0]))
    assert config.data_dir == seed_dir / "elsewhere"
    given = config_from_args([*_seed_args(README["mnist"][0]), "--data-dir", "mine"])
    assert given.data_dir == Path("mine")


def test_flags_win_over_the_config_file_and_both_forms_parse(seed_dir: Path) -> None:
    config = config_from_args(
        ["--config", "config/mnist.json", "--batch-size", "64", "--eps=0.3", "--num-class=10"]
    )
    assert (config.batch_size, config.eps, config.num_classes) == (64, 0.3, 10)
    assert config.dataset == "mnist"
    linear = config_from_args(["--config=config/mnist.json", "--scheduler_name", "LinearScheduler"])
    assert linear.schedule is ScheduleKind.LINEAR


def test_seed_flags_at_certifys_own_value_change_nothing(seed_dir: Path) -> None:
    base = ["--config", "config/mnist.json"]
    same = [*base, "--opt", "Adam", "--wd", "0", "--loss=ce", "--ls", "0.0", "--mode", "cert",
            "--bound-type", "IBP", "--no-loss-fusion", "--test-interval", "1"]  # fmt: skip
    assert config_from_args(same) == config_from_args(base)


def test_every_flag_of_the_seeds_parser_is_known(seed_dir: Path) -> None:
    # The seed's argparser.py, which its train.py uses, flag by flag.
    seed_flags = (  # noqa: SIM905 (a list as the parser reads)
        "--debug --verify --infer --load --config --device --log-interval --seed --dir --model "
        "--loss-fusion --num-epochs --auto-load --method --test-interval --plot --bound-type "
        "--natural --check-nan --w-scale-cls --multi-gpu --no-loss-fusion --save-all "
        "--model-params --mode --eval --complete --random-crop --num-class --no-data-aug "
        "--test-batch-size --batch-size --eps --min-eps --init-eps --fix-eps --scheduler_name "
        "--scheduler_opts --train-eps-mul --lr --lr-decay-factor --lr-decay-milestones --opt "
        "--momentum --grad-norm --weight-decay --wd --grad-acc-steps --loss --ls --reg-obj "
        "--pre-obj --reg-lambda --pi --reg --vol-reg --colt-coeff --xiao_reg --xiao_coeff "
        "--l1_coeff --min-eps-reg --tol --num-reg-epochs --no-reg-dec --manual-init "
        "--init-method --kaiming_init --no-init --length --lip --global-lip"
    ).split()
    known = {opt for p in train_command.params for opt in (*p.opts, *p.secondary_opts)}
    assert not set(seed_flags) - known


@pytest.mark.parametrize("flag", SEED_ONLY, ids=lambda f: f.names[0])
def test_refused_seed_flag_names_itself_in_one_line(flag, seed_dir: Path) -> None:
    args = [flag.names[-1]] + (["7"] if flag.takes_value else [])
    if flag.accepted is not None and not flag.takes_value:
        assert config_from_args(["--dataset", "mnist", *args]).dataset == "mnist"
        return
    result = CliRunner().invoke(cli, ["train", "--dataset", "mnist", *args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {flag.names[0]} "), result.output
    assert not list(seed_dir.glob("model*"))


def test_scheduler_opts_or_schedule_flags_not_both(seed_dir: Path) -> None:
    with pytest.raises(UsageError) as info:
        config_from_args(["--dataset", "mnist", "--scheduler_opts", "start=1,length=5",
                          "--schedule-length", "5"])  # fmt: skip
    assert info.value.param == "scheduler_opts"


def test_parse_scheduler_opts() -> None:
    assert parse_scheduler_opts("start=2,length=80") == (2, 80)
    assert parse_scheduler_opts("length=20, start=1,mid=0.25,beta=4.0") == (1, 20)
    for text, fragment in (
        ("start=2", "lacks length"),
        ("length=3", "lacks start"),
        ("start=two,length=3", "whole number"),
        ("start=1,length=3,mid=0.5", "mid 0.25 only"),
        ("start=1,length=3,beta=2", "beta 4 only"),
        ("start=1,length=3,speed=2", "unknown option 'speed'"),
        ("start", "not key=value"),
    ):
        with pytest.raises(UsageError) as info:
            parse_scheduler_opts(text)
        assert fragment in info.value.reason and info.value.param == "scheduler_opts", text


def _write(folder: Path, content: Any, name: str = "c.json") -> Path:
    path = folder / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_seed_defaults_file_reads_with_the_seeds_values(seed_dir: Path) -> None:
    settings = read_seed_config("config/defaults.json")
    assert settings == {
        "dataset": "cifar", "crop_padding": 2, "flip": True, "seed": 100, "batch_size": 128,
        "eps": float(Fraction(8, 255)),
    }  # fmt: skip


def test_training_params_and_bound_type_of_a_file_are_honoured(seed_dir: Path) -> None:
    alone = read_seed_config("config/tinyimagenet.ibp.json", overridden={"arch"})
    assert (alone["epochs"], alone["schedule_start"], alone["schedule_length"]) == (80, 11, 20)
    assert alone["lr_milestones"] == () and alone["lr_decay_factor"] == 0.2
    crown = dict(SEED_FILES["cifar.json"], bound_params={"eps": 0.03137, "bound_type": "CROWN-IBP"})
    assert read_seed_config(_write(seed_dir, crown))["method"] == "crown-ibp"


@pytest.mark.parametrize(
    ("written", "expected"),
    [
        ("0.03137", float(Fraction(8, 255))),  # 8/255 to 5 decimals, as the seed writes it
        ("0.00392", float(Fraction(1, 255))),
        ("0.007843", float(Fraction(2, 255))),  # 0.0078431... to 6 decimals
        ("0.031370", 0.03137),  # 6 decimals, but 8/255 rounds to 0.031373
        ("0.0314", 0.0314),  # too few decimals to mean a fraction
        # More decimals than Decimal's 28 digits: compared exactly all the same.
        ("0.031372549019607843137254901960784", float(Fraction(8, 255))),
        ("0.125", 0.125),
        ("1", 1.0),
    ],
)
def test_config_eps_reads_seed_roundings_as_fractions(written: str, expected: float, tmp_path):
    path = _write(tmp_path, '{"data": "MNIST", "bound_params": {"eps": ' + written + "}}")
    assert read_seed_config(path)["eps"] == expected


BAD_FILES = {
    "not JSON": ('{"data": "MNIST",}', "is not valid JSON: "),
    "a list": ("[1, 2]", "holds a JSON list"),
    "unknown key": ({"data": "MNIST", "optimizer": "SGD"}, "key 'optimizer' is not one"),
    "unknown nested key": (
        {"bound_params": {"eps": 0.1, "bound_opts": {"bn": {"mean": True}}}},
        "key 'bound_params.bound_opts.bn' is not one",
    ),
    "string batch size": ({"batch_size": "256"}, "'batch_size' must be a whole number, not string"),
    "fractional seed": ({"seed": 1.5}, "'seed' must be a whole number, not number 1.5"),
    "boolean epochs": ({"training_params": {"num_epochs": True}}, "must be a whole number"),
    "eps as text": ({"bound_params": {"eps": "8/255"}}, "'bound_params.eps' must be a number"),
    "section not an object": ({"bound_params": 0.1}, "'bound_params' must be an object"),
    "eps 0": ({"bound_params": {"eps": 0}}, "give eps in (0, 1]"),
    "eps 2": ({"bound_params": {"eps": 2.0}}, "give eps in (0, 1]"),
    "NaN": ('{"bound_params": {"eps": NaN}}', "NaN is not a number JSON allows"),
    "repeated key": ('{"seed": 1, "seed": 2}', "key 'seed' appears twice"),
    "unknown data set": ({"data": "SVHN"}, "'data' is 'SVHN': use MNIST, CIFAR or tinyimagenet"),
    "unknown model": ({"model": "cnn_layer_bn"}, "'model': unknown architecture"),
    "CROWN bounds": ({"bound_params": {"bound_type": "CROWN"}}, "IBP or CROWN-IBP"),
    "natural training": ({"training_params": {"method": "natural"}}, "trains robustly only"),
    "other relu relaxation": (
        {"bound_params": {"bound_opts": {"relu": "same-slope"}}},
        "auto_LiRPA's default ('adaptive')",
    ),
    "other scheduler": (
        {"training_params": {"scheduler_name": "AdaptiveScheduler"}},
        "unknown eps schedule 'AdaptiveScheduler'",
    ),
    "bad scheduler opts": ({"training_params": {"scheduler_opts": "start=2"}}, "lacks length"),
    "bad milestones": ({"training_params": {"lr_decay_milestones": "50;60"}}, 'like "50,60"'),
    "two batch sizes": (
        {"batch_size": 256, "training_params": {"batch_size": 128}},
        "'batch_size' (256) and 'training_params.batch_size' (128) differ",
    ),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_config_file_gives_one_line_naming_the_key(case: str, tmp_path: Path) -> None:
    content, fragment = BAD_FILES[case]
    path = _write(tmp_path, content)
    with pytest.raises(UsageError) as info:
        read_seed_config(path)
    message = info.value.reason
    # The file at fault: an input error (exit 1), the message names it and the flag.
    assert info.value.param is None and len(message.splitlines()) == 1
    assert message.startswith(f"`config` file {path}") and fragment in message, message


def test_missing_or_folder_config(tmp_path: Path) -> None:
    for path, fragment in ((tmp_path / "nope.json", "does not exist"), (tmp_path, "is a folder")):
        with pytest.raises(UsageError) as info:
            read_seed_config(path)
        assert fragment in info.value.reason and info.value.param is None


@pytest.mark.slow
def test_readme_mnist_command_trains_into_its_run_folder(seed_dir: Path, shared_data) -> None:
    # The README's MNIST command for one epoch. The subset flags keep it short on a
    # CPU: the seed's CNN-7 takes seconds per batch there.
    line = README["mnist"][0] + f" --num-epochs=1 --data-dir {shared_data}"
    subset = ["--num-train", "256", "--val-size", "88", "--test-samples", "20"]
    result = CliRunner().invoke(cli, ["train", *_seed_args(line), *subset])
    assert result.exit_code == 0, result.output
    run = seed_dir / "model_mnist"
    assert {p.name for p in run.iterdir()} >= {"last.pth", "best.pth", "train_log.csv"}
    log = (run / "train_log.csv").read_text().splitlines()
    assert len(log) == 2 and log[1].startswith("1,")  # header and epoch 1
    from model_zoo.checkpoint import read_checkpoint

    meta = read_checkpoint(run / "last.pth")
    assert meta["arch"] == "cnn" and meta["dataset"] == "mnist" and meta["eps"] == 0.4


def test_a_data_set_flag_takes_the_files_augmentation_with_it(tmp_path: Path) -> None:
    path = _write(tmp_path, {"data": "CIFAR", "bound_params": {"eps": 0.03137}})
    assert read_seed_config(path)["crop_padding"] == 2  # the seed's CIFAR crops
    settings = read_seed_config(path, overridden={"dataset"})
    assert "crop_padding" not in settings and "flip" not in settings


def test_the_python_api_reads_a_config_file_as_the_command_does(seed_dir: Path, monkeypatch):
    monkeypatch.setenv("CERTIFY_DATA", "/datasets")
    config = resolve_config(None, "config/mnist.json", out_dir="r", epochs=3)
    assert config == config_from_args(["--config", "config/mnist.json", "--dir", "r",
                                       "--num-epochs", "3"])  # fmt: skip
    assert (config.dataset, config.eps, config.epochs) == ("mnist", 0.4, 3)
    assert Path(config.data_dir) == Path("/datasets")
