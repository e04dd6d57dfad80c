"""Training settings from a config file in the seed's JSON schema (the config file of
``certify train``).

The seed (Shi et al.'s training code) keeps part of each experiment in a JSON file beside
its flags: the data set, batch size, eps, seed, bound type and, in some files, the
schedule. :func:`read_seed_config` turns such a file into settings of
:class:`training.config.TrainConfig`; the CLI lays its flags over them. The data set also
brings the augmentation that the seed's data pipeline applies to it.

A key certify does not implement, or a value it cannot honour, is refused by name with a
one-line :class:`~certify.core.errors.UsageError` naming the file (an input error: the
file is at fault, not an argument), never ignored. A
few keys are accepted because their value is what certify does anyway (``note``, the
``training_params.method`` "robust", ``bound_type`` "IBP", the ``bound_opts`` of the
seed's files); docs/training.md lists them all.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

from certify.core.datasets import Dataset, parse_dataset
from certify.core.errors import CertifyError, UsageError
from model_zoo.registry import canonical_name
from training.methods import Method
from training.schedulers import parse_schedule_kind, parse_scheduler_opts

# The seed's data pipeline hard-codes its augmentation per data set: (padding of the
# random crop, horizontal flips).
SEED_AUGMENTATION: dict[Dataset, tuple[int, bool]] = {
    Dataset.MNIST: (0, False),
    Dataset.CIFAR: (2, True),
    Dataset.TINYIMAGENET: (4, True),
}

# The seed's files write eps = k/255 rounded to 5 decimals (8/255 as 0.03137); from this
# many decimals on, such a rounding is read as the exact fraction.
_FRACTION_DECIMALS = 5

_Handler = Callable[[Any, str], None]


def read_seed_config(config: str | Path, overridden: Collection[str] = ()) -> dict[str, Any]:
    """Settings of :class:`~training.config.TrainConfig` from the seed-style JSON file
    ``config``.

    ``overridden`` names settings the caller sets itself (from flags): the file's values
    for them are still type-checked but not otherwise validated, and left out, so that a
    file's stale architecture name does not matter when a flag names another.
    """
    path = Path(config).expanduser()
    reader = _Reader(path)
    reader.read(_load(path))
    settings = {k: v for k, v in reader.settings.items() if k not in overridden}
    if "dataset" in overridden:
        # The augmentation comes with the file's data set: another data set brings its own.
        settings.pop("crop_padding", None)
        settings.pop("flip", None)
    if "arch" in settings:
        try:
            canonical_name(settings["arch"])
        except CertifyError as exc:
            raise reader.error(f"'model': {exc.reason}") from None
    return settings


def _load(path: Path) -> Any:
    def error(reason: str) -> UsageError:
        return UsageError(f"`config` file {path} {reason}")

    if not path.exists():
        raise error("does not exist")
    if path.is_dir():
        raise error("is a folder; give a config file (JSON)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise error("is not a UTF-8 text file; give a config file (JSON)") from None
    except OSError as exc:
        raise error(f"cannot be read: {exc.strerror}") from None
    try:
        return json.loads(
            text,
            parse_float=Decimal,  # keeps the digits as written, for eps
            parse_constant=_no_constant,
            object_pairs_hook=_unique_keys,
        )
    except json.JSONDecodeError as exc:
        raise error(
            f"is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        ) from None
    except ValueError as exc:
        raise error(f"is not valid JSON: {exc}") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key!r} appears twice")
        out[key] = value
    return out


class _Reader:
    """Walks the file's sections, each key through its handler, collecting settings."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.settings: dict[str, Any] = {}
        self._batch_key: str | None = None

    def error(self, reason: str) -> UsageError:
        return UsageError(f"`config` file {self.path}: {reason}")

    def read(self, raw: Any) -> None:
        if not isinstance(raw, dict):
            raise self.error(f"holds a JSON {_kind(raw)}; a config file holds an object {{...}}")
        self._section(raw, "", {
            "data": self._data,
            "seed": lambda v, n: self._set("seed", self._whole(v, n)),
            "batch_size": self._batch_size,
            "model": lambda v, n: self._set("arch", self._text(v, n)),
            "note": self._text,  # a comment in some of the seed's files
            "training_params": lambda v, n: self._section(v, n, self._training_handlers()),
            "bound_params": lambda v, n: self._section(v, n, self._bound_handlers()),
        })  # fmt: skip

    def _training_handlers(self) -> dict[str, _Handler]:
        return {
            "method": lambda v, n: self._only(v, n, "robust", "certify trains robustly only"),
            "batch_size": self._batch_size,
            "num_epochs": lambda v, n: self._set("epochs", self._whole(v, n)),
            "scheduler_name": self._scheduler_name,
            "scheduler_opts": self._scheduler_opts,
            "lr_decay_factor": lambda v, n: self._set("lr_decay_factor", float(self._number(v, n))),
            "lr_decay_milestones": self._milestones,
        }

    def _bound_handlers(self) -> dict[str, _Handler]:
        return {
            "eps": self._eps,
            "bound_type": self._bound_type,
            "bound_opts": lambda v, n: self._section(v, n, {
                "relu": lambda v, n: self._only(
                    v, n, "adaptive", "certify's CROWN-IBP uses auto_LiRPA's default"
                ),
                "exp": lambda v, n: self._only(
                    v, n, "clamp_constant", "certify bounds no exp (it has no loss fusion)"
                ),
            }),
        }  # fmt: skip

    def _section(self, value: Any, where: str, handlers: dict[str, _Handler]) -> None:
        if not isinstance(value, dict):
            raise self._type_error(where, "an object {...}", value)
        for key, item in value.items():
            name = f"{where}.{key}" if where else key
            handler = handlers.get(key)
            if handler is None:
                known = ", ".join(handlers)
                raise self.error(
                    f"key {name!r} is not one certify implements (it reads {known} here)"
                )
            handler(item, name)

    def _set(self, setting: str, value: Any) -> None:
        self.settings[setting] = value

    def _data(self, value: Any, name: str) -> None:
        try:
            dataset = parse_dataset(self._text(value, name))
        except CertifyError:
            valid = "MNIST, CIFAR or tinyimagenet"
            raise self.error(f"{name!r} is {value!r}: use {valid}") from None
        self._set("dataset", dataset.value)
        self._set("crop_padding", SEED_AUGMENTATION[dataset][0])
        self._set("flip", SEED_AUGMENTATION[dataset][1])

    def _batch_size(self, value: Any, name: str) -> None:
        size = self._whole(value, name)
        if self._batch_key is not None and self.settings["batch_size"] != size:
            raise self.error(
                f"{self._batch_key!r} ({self.settings['batch_size']}) and {name!r} ({size}) "
                "differ: keep one"
            )
        self._batch_key = self._batch_key or name
        self._set("batch_size", size)

    def _scheduler_name(self, value: Any, name: str) -> None:
        try:
            self._set("schedule", parse_schedule_kind(self._text(value, name)))
        except UsageError as exc:
            raise self.error(f"{name!r}: {exc.reason}") from None

    def _scheduler_opts(self, value: Any, name: str) -> None:
        try:
            start, length = parse_scheduler_opts(self._text(value, name))
        except UsageError as exc:
            raise self.error(f"{name!r}: {exc.reason}") from None
        self._set("schedule_start", start)
        self._set("schedule_length", length)

    def _milestones(self, value: Any, name: str) -> None:
        text = self._text(value, name)
        try:
            epochs = tuple(int(v) for v in text.replace(" ", "").split(",") if v)
        except ValueError:
            raise self.error(f'{name!r} is {text!r}: give epochs like "50,60"') from None
        self._set("lr_milestones", epochs)

    def _eps(self, value: Any, name: str) -> None:
        number = self._number(value, name)
        eps = _exact_eps(number)
        if not 0 < eps <= 1:
            raise self.error(f"{name!r} is {number}: give eps in (0, 1] pixel space")
        self._set("eps", eps)

    def _bound_type(self, value: Any, name: str) -> None:
        kind = self._text(value, name)
        if kind == "CROWN-IBP":
            self._set("method", Method.CROWN_IBP.value)
        elif kind != "IBP":
            raise self.error(f"{name!r} is {kind!r}: certify trains with IBP or CROWN-IBP")

    def _only(self, value: Any, name: str, accepted: str, why: str) -> None:
        if self._text(value, name) != accepted:
            raise self.error(f"{name!r} is {value!r}: {why} ({accepted!r})")

    def _text(self, value: Any, name: str) -> str:
        if not isinstance(value, str):
            raise self._type_error(name, "a string", value)
        return value

    def _whole(self, value: Any, name: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._type_error(name, "a whole number", value)
        return value

    def _number(self, value: Any, name: str) -> int | Decimal:
        if isinstance(value, bool) or not isinstance(value, int | Decimal):
            raise self._type_error(name, "a number", value)
        return value

    def _type_error(self, name: str, wanted: str, value: Any) -> UsageError:
        shown = f"{_kind(value)} {_shown(value)}".strip()
        return self.error(f"{name!r} must be {wanted}, not {shown}")


def _exact_eps(value: int | Decimal) -> float:
    """``value`` as a float, or k/255 exactly when ``value`` is k/255 correctly rounded to
    at least ``_FRACTION_DECIMALS`` decimals."""
    if isinstance(value, Decimal) and value.is_finite():
        exponent = value.as_tuple().exponent
        if isinstance(exponent, int) and -exponent >= _FRACTION_DECIMALS:
            # Exact arithmetic: Decimal's 28 digits would not hold every file's value.
            exact = Fraction(value)
            k = round(exact * 255)
            # Correctly rounded: within half a unit of the last decimal written.
            if 1 <= k <= 255 and abs(exact - Fraction(k, 255)) <= Fraction(1, 2 * 10**-exponent):
                return float(Fraction(k, 255))
    return float(value)


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "list"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"


def _shown(value: Any) -> str:
    if isinstance(value, dict | list):
        return ""
    text = json.dumps(value if not isinstance(value, Decimal) else float(value))
    return text if len(text) <= 40 else text[:37] + "..."
