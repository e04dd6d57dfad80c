"""The images an evaluation runs on: a slice of a built-in data set's test split
(:class:`~certify.core.datasets.Dataset`, read from a data folder) or of the user's own
file (:class:`~certify.data.tensor_file.TensorFile`), as one :class:`EvalImages`.

:func:`parse_data` decides, at the door of ``certify.evaluate``, which of the two a
``dataset`` argument names: a path ending in ``.pt``, ``.pth`` or ``.npz`` is a file,
anything else the name of a built-in data set.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from certify.core.datasets import Dataset, get_spec, parse_dataset
from certify.data import load_split
from certify.data.tensor_file import TensorFile, is_tensor_file, read_tensor_file

DataSource = Dataset | TensorFile


@dataclass(frozen=True)
class EvalImages:
    """Images ``[start, start + len)`` of a test set, pixels in [0, 1], with their labels.

    ``num_classes`` is the data set's, or a file's own (None: the file does not say, and
    the model's outputs give it)."""

    images: torch.Tensor
    labels: torch.Tensor
    start: int
    source: DataSource
    num_classes: int | None
    folder: Path | None = None  # the data folder a built-in data set was read from

    @property
    def name(self) -> str:
        """How results name the data set: ``mnist``, or the file's name."""
        return self.source.value if isinstance(self.source, Dataset) else self.source.name

    @property
    def dataset(self) -> Dataset | None:
        return self.source if isinstance(self.source, Dataset) else None

    def identity(self) -> Any:
        """What the data set is, for a resumed run to match: the name and the data
        folder, or the file's resolved path, size and modification time."""
        if isinstance(self.source, Dataset):
            return [self.source.value, str(self.folder.resolve()) if self.folder else None]
        stat = self.source.path.stat()
        return [str(self.source.path.resolve()), stat.st_size, stat.st_mtime_ns]


def parse_data(dataset: str | os.PathLike[str] | Dataset | TensorFile) -> DataSource:
    """A built-in data set's name, or a data set file's path, as a :data:`DataSource`."""
    if isinstance(dataset, Dataset | TensorFile):
        return dataset
    if is_tensor_file(dataset):
        return TensorFile(Path(dataset).expanduser())
    return parse_dataset(dataset)


def load_eval_images(
    source: DataSource, data_dir: Path, start: int, num_samples: int | None
) -> EvalImages:
    """The test slice of ``source``; ``data_dir`` holds the built-in data sets."""
    if isinstance(source, Dataset):
        data = load_split(source, data_dir, "test", start, num_samples)
        return EvalImages(
            data.images, data.labels, data.start, source, get_spec(source).num_classes,
            Path(data_dir),
        )  # fmt: skip
    read = read_tensor_file(source.path, start, num_samples)
    return EvalImages(read.images, read.labels, read.start, source, read.num_classes)
