"""The entry point of :mod:`certify.data`: :func:`load_split` checks its arguments, picks
the reader of the data set's on-disk format and returns an :class:`ImageData`.

Evaluation reads a test slice with it; training reads ``split="train"``. The readers
return pixels in [0, 1] without normalization: the models apply the data set's mean and
std themselves (see :mod:`certify.core.datasets`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path

import torch

from certify.core.datasets import Dataset, DatasetSpec, get_spec, parse_dataset
from certify.core.errors import DataError
from certify.data import cifar, mnist, tinyimagenet
from certify.data._common import missing_data

SPLITS = ("train", "test")

_Reader = Callable[[Path, str, int, int | None], tuple[torch.Tensor, torch.Tensor]]
_READERS: dict[Dataset, _Reader] = {
    Dataset.MNIST: mnist.load,
    Dataset.CIFAR: cifar.load,
    Dataset.CIFAR100: cifar.load_cifar100,
    Dataset.TINYIMAGENET: tinyimagenet.load,
}


@dataclass
class ImageData:
    """A slice of one split of a data set, in memory."""

    images: torch.Tensor  # float32, N x C x H x W, in [0, 1]
    labels: torch.Tensor  # int64, N
    dataset: Dataset
    split: str  # "train" or "test"
    start: int  # index of images[0] in the split

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def stop(self) -> int:
        """Index in the split just past the last image."""
        return self.start + len(self)

    @property
    def spec(self) -> DatasetSpec:
        return get_spec(self.dataset)


def load_split(
    dataset: str | Dataset,
    data_dir: str | Path,
    split: str = "test",
    start: int = 0,
    num_samples: int | None = None,
) -> ImageData:
    """Load images ``[start, start + num_samples)`` of a split from ``data_dir``.

    ``data_dir`` is the folder that holds ``MNIST/``, ``cifar-10-batches-py/`` or
    ``tiny-imagenet-200/`` as torchvision and the official archives leave them.
    ``num_samples=None`` reads to the end of the split; a ``num_samples`` past the end is
    clipped, so check ``len()`` of the result. Raises :class:`DataError` on any problem.
    """
    name = parse_dataset(dataset)
    split = _check_split(split)
    start, num_samples = _check_slice(start, num_samples)
    root = _check_data_dir(data_dir, name)
    images, labels = _READERS[name](root, split, start, num_samples)
    return ImageData(images=images, labels=labels, dataset=name, split=split, start=start)


def _check_split(split: str) -> str:
    key = split.strip().lower() if isinstance(split, str) else split
    if key not in SPLITS:
        raise DataError(
            f"unknown split {split!r}: use 'train' or 'test' "
            "(TinyImageNet's val/ folder is its test split)"
        )
    return key


def _check_slice(start: int, num_samples: int | None) -> tuple[int, int | None]:
    # Integral admits numpy integers (indices often come from arrays); bool is an int
    # too, but start=True is surely a mistake.
    if isinstance(start, bool) or not isinstance(start, Integral) or start < 0:
        raise DataError(f"start must be an integer >= 0, got {start!r}")
    if num_samples is None:
        return int(start), None
    if isinstance(num_samples, bool) or not isinstance(num_samples, Integral) or num_samples <= 0:
        raise DataError(
            f"num_samples must be a positive integer (or None to read to the end), "
            f"got {num_samples!r}"
        )
    return int(start), int(num_samples)


def _check_data_dir(data_dir: str | Path, dataset: Dataset) -> Path:
    root = Path(data_dir).expanduser()
    if not root.exists():
        raise missing_data(
            f"data directory {root} does not exist: pass the folder that holds MNIST/, "
            "cifar-10-batches-py/, cifar-100-python/ or tiny-imagenet-200/",
            dataset.value,
            root,
        )
    if not root.is_dir():
        raise DataError(f"data directory {root} is a file, not a folder: pass its folder")
    return root
