"""Readers of CIFAR-10 and CIFAR-100 in the python pickle batches that
``torchvision.datasets.CIFAR10`` and ``CIFAR100`` leave on disk.

Layouts: ``<data_dir>/cifar-10-batches-py/`` with ``data_batch_1`` .. ``data_batch_5``
(train) and ``test_batch`` (test), labels under ``labels``; ``<data_dir>/cifar-100-python/``
with ``train`` and ``test``, the 100 fine labels under ``fine_labels``. Each batch may
hold any number of images, and a split is whichever of its files exist, in order.
Batches are read one after the other and reading stops once the requested slice is
complete. Called through :func:`certify.data.load_split`.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from certify.core.datasets import Dataset, get_spec
from certify.core.errors import DataError
from certify.data._common import (
    missing_data,
    not_found,
    resolve_slice,
    to_float,
    to_labels,
    typed_first_line,
)


@dataclass(frozen=True)
class _Layout:
    dataset: Dataset
    title: str  # how messages name the data set
    folder: str
    files: dict[str, tuple[str, ...]]  # split -> batch files, in order
    labels: str  # the batch entry that holds the labels
    shown: str  # the layout, for messages


CIFAR10 = _Layout(
    Dataset.CIFAR, "CIFAR-10", "cifar-10-batches-py",
    {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
    "labels", "torchvision's layout cifar-10-batches-py/{data_batch_1..5,test_batch}",
)  # fmt: skip
CIFAR100 = _Layout(
    Dataset.CIFAR100, "CIFAR-100", "cifar-100-python", {"train": ("train",), "test": ("test",)},
    "fine_labels", "torchvision's layout cifar-100-python/{train,test}",
)  # fmt: skip
FOLDER = CIFAR10.folder

# The only globals a CIFAR-10 batch refers to: numpy's array reconstruction (under its
# numpy 1 and numpy 2 module names) and the codec python 3 uses to pickle bytes.
# Anything else would run arbitrary code on load, so it is refused.
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
}


class _BatchUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, path: Path) -> None:
        # encoding="bytes" reads the official python 2 pickles; their keys become bytes.
        super().__init__(file, encoding="bytes")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise DataError(
                f"{self._path} refers to {module}.{name}, which no CIFAR batch does: "
                "refusing to unpickle it; replace it with the official file"
            )
        return super().find_class(module, name)


def load(
    data_dir: Path, split: str, start: int, num_samples: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read images ``[start, start + num_samples)`` of a CIFAR-10 split as (images, labels)."""
    return _load(CIFAR10, data_dir, split, start, num_samples)


def load_cifar100(
    data_dir: Path, split: str, start: int, num_samples: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read images ``[start, start + num_samples)`` of a CIFAR-100 split (fine labels)."""
    return _load(CIFAR100, data_dir, split, start, num_samples)


def _load(
    layout: _Layout, data_dir: Path, split: str, start: int, num_samples: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    spec = get_spec(layout.dataset)
    stop = None if num_samples is None else start + num_samples
    pixels: list[np.ndarray] = []
    labels: list[torch.Tensor] = []
    offset = 0  # index in the split of the current batch's first image
    for path in _batch_files(layout, data_dir, split):
        if stop is not None and offset >= stop:
            break  # the slice is complete; later batches are not needed
        data, batch_labels = _read_batch(layout, path, spec.num_classes)
        lo = max(start - offset, 0)
        hi = len(data) if stop is None else min(len(data), stop - offset)
        if lo < hi:
            pixels.append(data[lo:hi])
            labels.append(batch_labels[lo:hi])
        offset += len(data)
    # offset is the split's full size whenever start could lie beyond it, since reading
    # stops early only after passing start.
    resolve_slice(offset, start, num_samples, f"the {layout.title} {split} split")
    images = np.concatenate(pixels).reshape(-1, spec.channels, spec.size, spec.size)
    return to_float(images), torch.cat(labels)


def _batch_files(layout: _Layout, data_dir: Path, split: str) -> list[Path]:
    folder = data_dir / layout.folder
    name = layout.dataset.value
    if not folder.is_dir():
        raise not_found(
            f"{layout.title} folder", folder, layout.shown, data_dir, layout.folder, name
        )
    files = [folder / file for file in layout.files[split] if (folder / file).is_file()]
    if files:
        return files
    names = ", ".join(layout.files[split])
    if not any(folder.iterdir()):
        raise missing_data(
            f"{folder} is empty: put the {layout.title} python batches there ({names})",
            name,
            data_dir,
        )
    raise DataError(
        f"no {layout.title} {split} batch in {folder}: expected one of {names} ({layout.shown})"
    )


def _read_batch(layout: _Layout, path: Path, num_classes: int) -> tuple[np.ndarray, torch.Tensor]:
    """Unpickle one batch and check it: (N x 3072 uint8 pixels, N labels)."""
    try:
        with path.open("rb") as f:
            batch = _BatchUnpickler(f, path).load()
    except DataError:
        raise
    except Exception as exc:
        # A cut or damaged pickle fails in many ways (EOFError, UnpicklingError,
        # ValueError, ...) depending on where the damage is; all mean the same here.
        raise DataError(
            f"{path} is a truncated or corrupt {layout.title} batch ({typed_first_line(exc)}): "
            "copy the file again"
        ) from exc
    if not isinstance(batch, dict):
        raise DataError(
            f"{path} is not a {layout.title} batch: it holds a {type(batch).__name__}, not a dict"
        )
    entries = {_text(key): value for key, value in batch.items()}
    if "data" not in entries or layout.labels not in entries:
        raise DataError(
            f"{path} is not a {layout.title} batch: it lacks a 'data' or {layout.labels!r} "
            f"entry (it has {sorted(entries, key=str)})"
        )
    data = _check_data(entries["data"], path, layout.title)
    labels = np.asarray(entries[layout.labels])
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path} is corrupt: its {layout.labels!r} entry is not a list of integers")
    if len(labels) != len(data):
        raise DataError(
            f"{path} is corrupt: it holds {len(data):,} images but {len(labels):,} labels"
        )
    return data, to_labels(labels, num_classes, path)


def _check_data(data: object, path: Path, title: str) -> np.ndarray:
    if not (
        isinstance(data, np.ndarray)
        and data.dtype == np.uint8
        and data.ndim == 2
        and data.shape[1] == 3 * 32 * 32
    ):
        shape = getattr(data, "shape", None)
        raise DataError(
            f"{path} is not a {title} batch: 'data' must be an N x 3072 uint8 array, "
            f"got {type(data).__name__} of shape {shape}"
        )
    return data


def _text(key: object) -> object:
    # Official batches have bytes keys under encoding="bytes"; re-pickled ones have str.
    return key.decode("latin-1") if isinstance(key, bytes) else key
