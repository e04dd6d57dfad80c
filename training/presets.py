"""Presets equal to the commands in the seed's README (Shi et al. 2021).

Each preset fills the settings of :class:`training.config.TrainConfig` that the seed's
README command and config file set; every one can be overridden by a flag.

================  ======  =====  ==========  =======  ==========  ======  ==========
preset            eps     batch  start/len   epochs   milestones  lambda  augment
================  ======  =====  ==========  =======  ==========  ======  ==========
mnist             0.4     256    1 / 20      70       50, 60      0.5     none
cifar             8/255   128    2 / 80      160      120, 140    0.5     crop 2, flip
tinyimagenet      1/255   128    2 / 20      80       61, 71      0.2     crop 4, flip
================  ======  =====  ==========  =======  ==========  ======  ==========

TinyImageNet also has 200 classes and accumulates gradients over 2 steps. All use Adam
with lr 5e-4, decay x0.2, gradient norm 10 and the smoothed schedule.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

from certify.core.errors import UsageError
from training.config import TrainConfig

PRESETS: dict[str, dict[str, Any]] = {
    "mnist": {
        "dataset": "mnist",
        "arch": "cnn",
        "eps": 0.4,
        "batch_size": 256,
        "schedule_start": 1,
        "schedule_length": 20,
        "epochs": 70,
        "lr_milestones": (50, 60),
        "crop_padding": 0,
        "flip": False,
    },
    "cifar": {
        "dataset": "cifar",
        "arch": "cnn",
        "eps": float(Fraction(8, 255)),
        "batch_size": 128,
        "schedule_start": 2,
        "schedule_length": 80,
        "epochs": 160,
        "lr_milestones": (120, 140),
        "crop_padding": 2,
        "flip": True,
    },
    "tinyimagenet": {
        "dataset": "tinyimagenet",
        "arch": "cnn_7layer_bn_imagenet",
        "eps": float(Fraction(1, 255)),
        "num_classes": 200,
        "batch_size": 128,
        "schedule_start": 2,
        "schedule_length": 20,
        "epochs": 80,
        "lr_milestones": (61, 71),
        "reg_lambda": 0.2,
        "grad_acc_steps": 2,
        "crop_padding": 4,
        "flip": True,
    },
}


def preset_values(name: str) -> dict[str, Any]:
    """The settings of preset ``name`` (a copy)."""
    key = name.strip().lower()
    if key not in PRESETS:
        raise UsageError(
            f"unknown preset {name!r}: use one of {', '.join(PRESETS)}", param="preset"
        )
    return dict(PRESETS[key])


def resolve_config(
    preset: str | None = None, config_file: str | Path | None = None, **given: Any
) -> TrainConfig:
    """The run's settings: a resumed run's stored ones, then the preset's, then those of
    ``config_file`` (a config JSON in the seed's schema, see :mod:`training.seed_config`),
    then the settings ``given`` (any field of :class:`~training.config.TrainConfig`). The
    data folder defaults to :func:`certify.data.default_data_dir`.

    With ``resume`` only the settings to change need repeating; conflicting ones are
    refused by :func:`training.run.train`.
    """
    from certify.data import default_data_dir
    from training.seed_config import read_seed_config

    values: dict[str, Any] = {}
    if given.get("resume") and given.get("out_dir") is not None:
        values.update(_stored_settings(Path(given["out_dir"])))
    if preset is not None:
        values.update(preset_values(preset))
    if config_file is not None:
        values.update(read_seed_config(config_file, overridden=given))
    values.update(given)
    values.setdefault("data_dir", default_data_dir())
    return TrainConfig.from_values(values)


def _stored_settings(out_dir: Path) -> dict[str, Any]:
    from training.checkpointing import LAST, load_training_checkpoint

    path = out_dir / LAST
    if not path.exists():
        raise UsageError(f"{path} does not exist; start without `resume`", param="resume")
    raw, _ = load_training_checkpoint(path)
    stored = dict(raw.get("train_args") or {})
    # Where the run lives now may differ from where it was written.
    stored.pop("out_dir", None)
    return stored
