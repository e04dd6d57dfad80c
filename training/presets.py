"""Presets: the commands in the seed's README (Shi et al. 2021), and the settings the
certified-training papers since then publish their CNN7 results with.

Each preset fills the settings of :class:`training.config.TrainConfig` that its source
sets; every one can be overridden by a flag. The seed's presets:

================  ======  =====  ==========  =======  ==========  ======  ==========
preset            eps     batch  start/len   epochs   milestones  lambda  augment
================  ======  =====  ==========  =======  ==========  ======  ==========
mnist             0.4     256    1 / 20      70       50, 60      0.5     none
cifar             8/255   128    2 / 80      160      120, 140    0.5     crop 2, flip
tinyimagenet      1/255   128    2 / 20      80       61, 71      0.2     crop 4, flip
================  ======  =====  ==========  =======  ==========  ======  ==========

TinyImageNet also has 200 classes and accumulates gradients over 2 steps. All use Adam
with lr 5e-4, decay x0.2, gradient norm 10 and the smoothed schedule.

The published settings (``mnist0.1``, ``mnist0.3``, ``cifar2``, ``cifar8``,
``tinyimagenet1``) take ``cnn`` (CNN7) and the schedule most of SABR, TAPS and the
expressive losses share for the data set; where a method's paper trains longer, its
entry in :data:`METHOD_SCHEDULES` says so, and applies when the run names that method.
The methods' own options (their coefficients, ratios and attacks) come from
:mod:`training.objectives` by data set and eps.
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


# The seed's schedules for MNIST and CIFAR-10 are those the later papers use too.
_MNIST_SCHEDULE = {k: v for k, v in PRESETS["mnist"].items() if k != "eps"}
_CIFAR_SCHEDULE = {k: v for k, v in PRESETS["cifar"].items() if k != "eps"}
PRESETS.update(
    {
        "mnist0.1": {**_MNIST_SCHEDULE, "eps": 0.1},
        "mnist0.3": {**_MNIST_SCHEDULE, "eps": 0.3},
        "cifar2": {**_CIFAR_SCHEDULE, "eps": float(Fraction(2, 255))},
        "cifar8": {**_CIFAR_SCHEDULE, "eps": float(Fraction(8, 255))},
        "tinyimagenet1": {
            **PRESETS["tinyimagenet"],
            "schedule_length": 80,
            "epochs": 160,
            "lr_milestones": (120, 140),
        },
    }
)

# Where a method's paper trains longer than its preset: (preset, method) -> settings.
METHOD_SCHEDULES: dict[tuple[str, str], dict[str, Any]] = {
    # De Palma et al. 2024, CIFAR-10 8/255: 260 epochs, decays after 180 and 220.
    **{
        ("cifar8", m): {"epochs": 260, "lr_milestones": (180, 220)}
        for m in ("mtl-ibp", "cc-ibp", "exp-ibp")
    },
    # Müller et al. 2023: 180 epochs at 8/255 and on TinyImageNet, decays after 140, 160.
    ("cifar8", "sabr"): {"epochs": 180, "lr_milestones": (140, 160)},
    ("tinyimagenet1", "sabr"): {"epochs": 180, "lr_milestones": (140, 160)},
    # Mao et al. 2023, TinyImageNet: 80 epochs, ramp over 20, decays after 60, 70, lambda 0.1.
    **{
        ("tinyimagenet1", m): {
            "epochs": 80,
            "schedule_length": 20,
            "lr_milestones": (60, 70),
            "reg_lambda": 0.1,
        }
        for m in ("taps", "staps")
    },
}


def preset_values(name: str, method: str | None = None) -> dict[str, Any]:
    """The settings of preset ``name`` (a copy), with ``method``'s own schedule where
    its paper trains longer."""
    key = name.strip().lower()
    if key not in PRESETS:
        raise UsageError(
            f"unknown preset {name!r}: use one of {', '.join(PRESETS)}", param="preset"
        )
    values = dict(PRESETS[key])
    if method is not None:
        values.update(METHOD_SCHEDULES.get((key, str(method).strip().lower()), {}))
    return values


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
        values.update(preset_values(preset, given.get("method") or values.get("method")))
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
