"""A test set of the user's own in one file, ``FILE.pt`` or ``FILE.npz``, named where a
data set's name goes (``certify eval`` takes its path as the data set).

The file holds the images as an N x C x H x W array, floats in [0, 1] or uint8 (divided
by 255), the labels as N integers, and, optionally, the number of classes:

- ``.pt``: a dict ``{"images": tensor, "labels": tensor, "num_classes": int}``, read with
  ``torch.load(weights_only=True)`` (a file can never run code);
- ``.npz``: arrays ``images``, ``labels`` and, optionally, ``num_classes``, read with
  ``allow_pickle=False``.

Without ``num_classes`` the model's outputs give the class count
(:func:`certify.pipeline.evaluate`). Every problem with the file is a
:class:`~certify.core.errors.DataError` of one line that says what to fix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from certify.core.errors import DataError, first_line
from certify.data._common import resolve_slice

SUFFIXES = (".pt", ".pth", ".npz")


@dataclass(frozen=True)
class TensorFile:
    """A data set file of the user's (a path ending in one of :data:`SUFFIXES`)."""

    path: Path

    @property
    def name(self) -> str:
        """How results name the data set: the file's name."""
        return self.path.name


@dataclass(frozen=True)
class FileImages:
    """A slice of the images of a :class:`TensorFile`, checked: float32 in [0, 1], int64
    labels, ``start`` the index of the first in the file."""

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int | None
    start: int = 0


def is_tensor_file(name: str | os.PathLike[str]) -> bool:
    """Whether ``name`` names a data set file (by its suffix) rather than a built-in data
    set."""
    return os.fspath(name).lower().endswith(SUFFIXES)


def read_tensor_file(path: Path, start: int = 0, num_samples: int | None = None) -> FileImages:
    """Images ``[start, start + num_samples)`` of the file (None: to its end), after the
    whole file is read and checked (a test set that fits in memory)."""
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise DataError(f"data set file {path} {what}: give a .pt or .npz file", param="dataset")
    raw = _read_npz(path) if path.suffix.lower() == ".npz" else _read_pt(path)
    images, labels = raw.get("images"), raw.get("labels")
    if images is None:
        raise DataError(f"{path} holds no 'images' entry (it has {', '.join(sorted(raw))})")
    if labels is None:
        raise DataError(f"{path} holds no 'labels': store them as 'labels', one per image")
    images, labels = _as_tensor(images, path, "images"), _as_tensor(labels, path, "labels")
    num_classes = _num_classes(raw.get("num_classes"), path)
    if images.ndim != 4:
        raise DataError(
            f"{path}: images of shape {tuple(images.shape)}; give N x C x H x W "
            "(a single channel too: N x 1 x H x W)"
        )
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(
            f"{path}: {len(images)} images but labels of shape {tuple(labels.shape)}; "
            "give one integer label per image"
        )
    if len(images) == 0:
        raise DataError(f"{path} holds no images")
    pixels, labels = _pixels(images, path), _labels(labels, num_classes, path)
    lo, hi = resolve_slice(len(labels), start, num_samples, str(path))
    return FileImages(pixels[lo:hi], labels[lo:hi], num_classes, lo)


def _read_pt(path: Path) -> dict[str, Any]:
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(
            f"{path} is not a readable tensor file ({first_line(exc)}): save it with "
            "torch.save({'images': ..., 'labels': ...}, path)"
        ) from None
    if not isinstance(raw, dict):
        raise DataError(
            f"{path} holds a {type(raw).__name__}, not a dict: save it with "
            "torch.save({'images': ..., 'labels': ...}, path)"
        )
    return {str(k): v for k, v in raw.items()}


def _read_npz(path: Path) -> dict[str, Any]:
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return {name: arrays[name] for name in arrays.files}
    except Exception as exc:
        raise DataError(
            f"{path} is not a readable .npz file ({first_line(exc)}): save it with "
            "numpy.savez(path, images=..., labels=...)"
        ) from None


def _as_tensor(value: Any, path: Path, what: str) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            raise DataError(f"{path}: '{what}' holds {value.dtype} values, not numbers")
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    raise DataError(f"{path}: '{what}' is a {type(value).__name__}, not a tensor or an array")


def _num_classes(value: Any, path: Path) -> int | None:
    if value is None:
        return None
    number = (
        value.item() if isinstance(value, np.ndarray | torch.Tensor) and value.ndim == 0 else value
    )
    if isinstance(number, bool) or not isinstance(number, int | np.integer) or number < 1:
        raise DataError(f"{path}: 'num_classes' is {value!r}; give a positive integer")
    return int(number)


def _pixels(images: torch.Tensor, path: Path) -> torch.Tensor:
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    if not images.dtype.is_floating_point:
        raise DataError(
            f"{path}: images of type {images.dtype}; give floats in [0, 1] or uint8 in [0, 255]"
        )
    images = images.float()
    if not torch.isfinite(images).all():
        raise DataError(f"{path}: some pixels are NaN or infinite; give floats in [0, 1]")
    low, high = images.min().item(), images.max().item()
    if low < 0.0 or high > 1.0:
        raise DataError(
            f"{path}: pixels lie in [{low:g}, {high:g}], outside [0, 1]; give unnormalized "
            "pixels in [0, 1] (certify puts the normalization in the model)"
        )
    return images.contiguous()


def _labels(labels: torch.Tensor, num_classes: int | None, path: Path) -> torch.Tensor:
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise DataError(f"{path}: labels of type {labels.dtype}; give integers from 0")
    labels = labels.long()
    if labels.min().item() < 0:
        raise DataError(f"{path}: a label is {labels.min().item()}; labels count from 0")
    if num_classes is not None and labels.max().item() >= num_classes:
        raise DataError(
            f"{path}: a label is {labels.max().item()} but the file says {num_classes} "
            f"classes; labels go from 0 to {num_classes - 1}"
        )
    return labels
