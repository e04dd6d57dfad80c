"""Reader of MNIST in the IDX files that ``torchvision.datasets.MNIST`` leaves on disk.

Layout: ``<data_dir>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``, each
either plain or gzip-compressed (``.gz``). The file headers give the image count, so a
split may hold any number of images. Called through :func:`certify.data.load_split`.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

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

_PREFIX = {"train": "train", "test": "t10k"}
_LAYOUT = "torchvision's layout MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]"
_UBYTE = 0x08  # IDX type code of unsigned bytes, the only type MNIST uses


@dataclass(frozen=True)
class _IdxFile:
    """An IDX file whose header has been checked against its size."""

    path: Path
    dims: tuple[int, ...]
    header_size: int
    # The decompressed content of a .gz file; None for a plain file, which is read
    # from disk only where the requested slice lies.
    content: bytes | None

    @property
    def count(self) -> int:
        return self.dims[0]

    def read(self, start: int, stop: int) -> np.ndarray:
        item = math.prod(self.dims[1:])
        offset = self.header_size + start * item
        count = (stop - start) * item
        if self.content is not None:
            flat = np.frombuffer(self.content, dtype=np.uint8, count=count, offset=offset)
        else:
            flat = np.fromfile(self.path, dtype=np.uint8, count=count, offset=offset)
        return flat.reshape((stop - start, *self.dims[1:]))


def load(
    data_dir: Path, split: str, start: int, num_samples: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read images ``[start, start + num_samples)`` of an MNIST split as (images, labels)."""
    spec = get_spec(Dataset.MNIST)
    raw = _raw_dir(data_dir)
    images = _open_idx(_find(raw, f"{_PREFIX[split]}-images-idx3-ubyte", data_dir), ndim=3)
    labels = _open_idx(_find(raw, f"{_PREFIX[split]}-labels-idx1-ubyte", data_dir), ndim=1)
    if images.dims[1:] != (spec.size, spec.size):
        raise DataError(
            f"{images.path} holds {images.dims[1]}x{images.dims[2]} images, "
            f"not MNIST's {spec.size}x{spec.size}: the file belongs to another data set"
        )
    if labels.count != images.count:
        raise DataError(
            f"MNIST {split} files disagree: {images.path.name} has {images.count:,} images "
            f"but {labels.path.name} has {labels.count:,} labels; copy both files again"
        )
    lo, hi = resolve_slice(images.count, start, num_samples, f"the MNIST {split} split")
    pixels = images.read(lo, hi)[:, None]  # add the channel axis
    return to_float(pixels), to_labels(labels.read(lo, hi), spec.num_classes, labels.path)


def _raw_dir(data_dir: Path) -> Path:
    raw = data_dir / "MNIST" / "raw"
    if not raw.is_dir():
        raise not_found("MNIST folder", raw, _LAYOUT, data_dir, "MNIST", "mnist")
    if not any(raw.iterdir()):
        raise missing_data(
            f"{raw} is empty: put the MNIST IDX files there ({_LAYOUT})", "mnist", data_dir
        )
    return raw


def _find(raw: Path, name: str, data_dir: Path) -> Path:
    # Prefer the plain file: torchvision keeps both after extracting, and the plain
    # one can be read in part.
    for candidate in (raw / name, raw / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise not_found(f"MNIST file {name}", raw / f"{name}[.gz]", _LAYOUT, data_dir, "MNIST", "mnist")


def _open_idx(path: Path, ndim: int) -> _IdxFile:
    content = _decompress(path) if path.suffix == ".gz" else None
    head = content[:4] if content is not None else _read_head(path, 4)
    if len(head) < 4 or head[:2] != b"\0\0" or head[2] != _UBYTE or head[3] != ndim:
        raise DataError(
            f"{path} is not an MNIST IDX file of {ndim}-d unsigned bytes (bad magic number "
            f"{head.hex() or 'missing'}): the file is corrupt or of another kind"
        )
    header_size = 4 + 4 * ndim
    header = content[:header_size] if content is not None else _read_head(path, header_size)
    if len(header) < header_size:
        raise DataError(f"{path} is truncated inside its header: copy the file again")
    dims = struct.unpack(f">{ndim}I", header[4:])
    size = len(content) if content is not None else path.stat().st_size
    _check_size(path, dims, size - header_size)
    return _IdxFile(path, dims, header_size, content)


def _check_size(path: Path, dims: tuple[int, ...], payload: int) -> None:
    expected = math.prod(dims)
    kind = "images" if len(dims) > 1 else "labels"
    if payload < expected:
        got = payload // max(math.prod(dims[1:]), 1)
        raise DataError(
            f"{path} is truncated: its header says {dims[0]:,} {kind} but it holds only "
            f"{got:,} ({expected - payload:,} bytes missing); copy the file again"
        )
    if payload > expected:
        raise DataError(
            f"{path} has {payload - expected:,} bytes after the {dims[0]:,} {kind} its header "
            "announces: the file is corrupt, copy it again"
        )


def _read_head(path: Path, size: int) -> bytes:
    with path.open("rb") as f:
        return f.read(size)


def _decompress(path: Path) -> bytes:
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"{path} is a truncated or corrupt gzip file ({typed_first_line(exc)}): copy it again"
        ) from exc
