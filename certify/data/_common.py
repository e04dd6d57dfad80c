"""Checks and conversions shared by the readers in :mod:`certify.data`.

The readers (``mnist``, ``cifar``, ``tinyimagenet``) turn on-disk files into uint8
arrays; this module holds what they have in common: choosing the slice of a split,
converting pixels to floats the way torchvision's ``ToTensor`` does, checking labels,
and wording the errors about a missing layout, so that all readers say it alike (and
say what would download it). It also names the default data folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from certify.core.errors import DataError, UsageError, first_line

DATA_ENV = "CERTIFY_DATA"


def default_data_dir() -> Path:
    """The data folder used when none is given: ``$CERTIFY_DATA`` if set, else ``./data``
    (the seed's default)."""
    value = os.environ.get(DATA_ENV, "").strip()
    return Path(value).expanduser() if value else Path("data")


def missing_data(message: str, dataset: str, data_dir: Path) -> DataError:
    """The error for a data set that is not there, saying how to get it."""
    return DataError(
        f"{message}; certify.data.download_dataset fetches it", download=(dataset, data_dir)
    )


def resolve_slice(total: int, start: int, num_samples: int | None, what: str) -> tuple[int, int]:
    """Return ``(start, stop)`` of the images to read from a split of ``total`` images.

    ``num_samples`` past the end is clipped to the end, so "the first 1000" of a smaller
    split is the whole split; the caller sees how many it got from the result's length.
    """
    if total == 0:
        raise DataError(f"{what} holds no images: the files are empty, copy the data set again")
    if start >= total:
        raise UsageError(
            f"{start} is beyond the end of {what}, which has {total:,} images: "
            f"use a start below {total}",
            param="start",
        )
    stop = total if num_samples is None else min(total, start + num_samples)
    return start, stop


def to_float(pixels: np.ndarray) -> torch.Tensor:
    """uint8 pixels (N x C x H x W) to float32 in [0, 1], bit for bit like ``ToTensor``."""
    # astype copies, so the tensor owns writable memory even when the input is a
    # read-only view of a file buffer.
    return torch.from_numpy(pixels.astype(np.float32)).div_(255.0)


def to_labels(labels: np.ndarray, num_classes: int, source: Path) -> torch.Tensor:
    """Check that labels are class indices and return them as an int64 tensor."""
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        bad = int(labels.max()) if int(labels.max()) >= num_classes else int(labels.min())
        raise DataError(
            f"{source} holds label {bad}, outside 0..{num_classes - 1}: "
            "the file is corrupt or belongs to another data set"
        )
    return torch.from_numpy(labels.astype(np.int64))


def not_found(
    what: str, expected: Path, layout: str, data_dir: Path, folder: str, dataset: str
) -> DataError:
    """The error for a data dir that exists but lacks a data set's folder or files."""
    message = f"{what} not found: expected {expected} ({layout})"
    if data_dir.name == folder:
        # A common slip: pointing at the data set's own folder instead of its parent.
        message += f"; data_dir looks like the {folder} folder itself, pass {data_dir.parent}"
    else:
        message += f"; data_dir must be the folder that holds {folder}/"
        return missing_data(message, dataset, data_dir)
    return DataError(message)


def typed_first_line(exc: BaseException) -> str:
    """``Type: first line`` of a low-level exception, for wrapping in a DataError."""
    name = type(exc).__name__
    return f"{name}: {first_line(exc)}" if str(exc).strip() else name
