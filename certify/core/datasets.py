"""What each supported data set is: shape, classes and the normalization that the
seed's training code applied in its data pipeline.

The readers of the on-disk formats live in :mod:`certify.data`; this module only
describes data sets, so that models and loaders can agree on input shapes.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from certify.core.errors import DataError


class Dataset(StrEnum):
    MNIST = "mnist"
    CIFAR = "cifar"
    CIFAR100 = "cifar100"
    TINYIMAGENET = "tinyimagenet"


@dataclass(frozen=True)
class DatasetSpec:
    """Input geometry and the seed's normalization for one data set."""

    name: Dataset
    channels: int
    size: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.size, self.size)


SPECS: dict[Dataset, DatasetSpec] = {
    Dataset.MNIST: DatasetSpec(Dataset.MNIST, 1, 28, 10, (0.0,), (1.0,)),
    Dataset.CIFAR: DatasetSpec(
        Dataset.CIFAR, 3, 32, 10, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    ),
    # CIFAR-100's own channel statistics (the seed has no CIFAR-100 pipeline).
    Dataset.CIFAR100: DatasetSpec(
        Dataset.CIFAR100, 3, 32, 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
    ),
    Dataset.TINYIMAGENET: DatasetSpec(
        Dataset.TINYIMAGENET, 3, 64, 200, (0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262)
    ),
}

_ALIASES = {
    "cifar10": Dataset.CIFAR,
    "cifar-10": Dataset.CIFAR,
    "cifar-100": Dataset.CIFAR100,
    "tiny-imagenet": Dataset.TINYIMAGENET,
}


def parse_dataset(name: str | Dataset) -> Dataset:
    """Convert a user-given name to a :class:`Dataset`, rejecting unknown names."""
    if isinstance(name, Dataset):
        return name
    key = name.strip().lower()
    if key in _ALIASES:
        return _ALIASES[key]
    try:
        return Dataset(key)
    except ValueError:
        valid = ", ".join(d.value for d in Dataset)
        raise DataError(f"unknown data set {name!r}: use one of {valid}", param="dataset") from None


def get_spec(name: str | Dataset) -> DatasetSpec:
    return SPECS[parse_dataset(name)]
