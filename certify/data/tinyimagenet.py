"""Reader of TinyImageNet in the ``tiny-imagenet-200`` folder of the official zip.

Layout, under ``<data_dir>/tiny-imagenet-200`` (or the seed's
``<data_dir>/tinyImageNet/tiny-imagenet-200``):

- ``wnids.txt``: the class ids (WordNet ids), one a line;
- ``train/<wnid>/images/*.JPEG``;
- ``val/images/*.JPEG`` with ``val/val_annotations.txt`` (file, wnid, box), or
  ``val/<wnid>/*.JPEG`` as the seed's preparation script leaves it.

The ``val`` folder is the test split, as in the seed. Labels and order follow the
seed's ``torchvision.datasets.ImageFolder``: a class's label is its position among the
sorted wnids, images are ordered by label, then by path. Only the images of the
requested slice are decoded, with Pillow (imported here only). Called through
:func:`certify.data.load_split`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from certify.core.datasets import Dataset, DatasetSpec, get_spec
from certify.core.errors import DataError
from certify.data._common import not_found, resolve_slice, to_float, typed_first_line

FOLDER = "tiny-imagenet-200"
_ROOTS = (Path(FOLDER), Path("tinyImageNet") / FOLDER)  # standard, then the seed's
_LAYOUT = (
    "the official layout tiny-imagenet-200/{wnids.txt, train/<wnid>/images/*.JPEG, "
    "val/images/*.JPEG + val/val_annotations.txt}"
)
# torchvision's IMG_EXTENSIONS, so that a folder yields the files ImageFolder would see.
_EXTENSIONS = {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"}


def load(
    data_dir: Path, split: str, start: int, num_samples: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read images ``[start, start + num_samples)`` of a TinyImageNet split as (images, labels)."""
    spec = get_spec(Dataset.TINYIMAGENET)
    root = _root(data_dir)
    classes = _classes(root)
    if split == "train":
        files, labels = _train_files(root, classes)
    else:
        files, labels = _val_files(root, classes)
    lo, hi = resolve_slice(len(files), start, num_samples, f"the TinyImageNet {split} split")
    return _decode(files[lo:hi], spec), torch.tensor(labels[lo:hi], dtype=torch.int64)


def _root(data_dir: Path) -> Path:
    for relative in _ROOTS:
        if (data_dir / relative).is_dir():
            return data_dir / relative
    raise not_found(
        "TinyImageNet folder", data_dir / FOLDER, _LAYOUT, data_dir, FOLDER, "tinyimagenet"
    )


def _classes(root: Path) -> dict[str, int]:
    """Map each wnid to its label: its position among the sorted wnids."""
    wnids_file = root / "wnids.txt"
    if wnids_file.is_file():
        wnids = [line.strip() for line in wnids_file.read_text().splitlines() if line.strip()]
        if not wnids:
            raise DataError(f"{wnids_file} is empty: it must list the class ids, one a line")
        if len(set(wnids)) != len(wnids):
            raise DataError(f"{wnids_file} lists a class id twice: the file is corrupt")
    elif (root / "train").is_dir():
        # Some preparation scripts delete the top-level .txt files; ImageFolder then
        # takes the classes from train/'s folders, and so do we.
        wnids = [p.name for p in (root / "train").iterdir() if p.is_dir()]
    else:
        raise DataError(f"{wnids_file} not found: expected {_LAYOUT}")
    return {wnid: label for label, wnid in enumerate(sorted(wnids))}


def _train_files(root: Path, classes: dict[str, int]) -> tuple[list[Path], list[int]]:
    train = root / "train"
    if not train.is_dir():
        raise DataError(f"TinyImageNet train folder {train} not found: expected {_LAYOUT}")
    files: list[Path] = []
    labels: list[int] = []
    for wnid, label in sorted(classes.items(), key=lambda item: item[1]):
        folder = train / wnid
        if not folder.is_dir():
            raise DataError(
                f"{folder} not found: {wnid} is a TinyImageNet class but train/ has no folder "
                "for it; copy the data set again"
            )
        images = _images_under(folder)
        if not images:
            raise DataError(f"{folder} holds no images: expected {folder}/images/*.JPEG")
        files += images
        labels += [label] * len(images)
    return files, labels


def _val_files(root: Path, classes: dict[str, int]) -> tuple[list[Path], list[int]]:
    val = root / "val"
    if not val.is_dir():
        raise DataError(f"TinyImageNet val folder {val} not found: expected {_LAYOUT}")
    if (val / "images").is_dir():
        entries = _annotations(val, classes)
    else:
        entries = _class_folders(val, classes)
    if not entries:
        raise DataError(
            f"{val} holds no images: expected val/images/*.JPEG with val/val_annotations.txt "
            "or val/<wnid>/*.JPEG"
        )
    # Label first, then path: the order of ImageFolder over val/<wnid>/ folders, so
    # that sample indices match the seed's test loader.
    entries.sort(key=lambda entry: (entry[1], entry[0].name))
    return [path for path, _ in entries], [label for _, label in entries]


def _annotations(val: Path, classes: dict[str, int]) -> list[tuple[Path, int]]:
    """The (image, label) pairs of the official val layout."""
    annotations = val / "val_annotations.txt"
    if not annotations.is_file():
        raise DataError(
            f"{annotations} not found: it maps the files in {val / 'images'} to class ids "
            f"({_LAYOUT})"
        )
    entries = []
    for number, line in enumerate(annotations.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 2 or fields[1] not in classes:
            raise DataError(
                f"{annotations} line {number} does not map a file to a known class id "
                f"({line.strip()!r}): the file is corrupt or from another data set"
            )
        entries.append((val / "images" / fields[0], classes[fields[1]]))
    return entries


def _class_folders(val: Path, classes: dict[str, int]) -> list[tuple[Path, int]]:
    """The (image, label) pairs of val/<wnid>/ folders."""
    entries = []
    for folder in sorted(p for p in val.iterdir() if p.is_dir()):
        if folder.name not in classes:
            raise DataError(
                f"{folder} is not a TinyImageNet class folder: wnids.txt does not list "
                f"{folder.name}"
            )
        entries += [(path, classes[folder.name]) for path in _images_under(folder)]
    return entries


def _images_under(folder: Path) -> list[Path]:
    files = (p for p in folder.rglob("*") if p.suffix.lower() in _EXTENSIONS and p.is_file())
    # Folder, then name: the order of ImageFolder's sorted walk.
    return sorted(files, key=lambda p: (str(p.parent), p.name))


def _decode(files: list[Path], spec: DatasetSpec) -> torch.Tensor:
    try:
        from PIL import Image
    except ImportError as exc:
        raise DataError(
            "reading TinyImageNet needs Pillow to decode its JPEG files: pip install pillow"
        ) from exc
    pixels = np.empty((len(files), spec.channels, spec.size, spec.size), dtype=np.uint8)
    for index, path in enumerate(files):
        try:
            with Image.open(path) as image:
                # A few TinyImageNet images are grayscale; ImageFolder's loader makes
                # every image RGB.
                rgb = image.convert("RGB")
        except FileNotFoundError as exc:
            raise DataError(
                f"TinyImageNet image {path} not found: copy the data set again"
            ) from exc
        except OSError as exc:
            raise DataError(
                f"{path} is not a readable image ({typed_first_line(exc)}): copy the data set again"
            ) from exc
        if rgb.size != (spec.size, spec.size):
            raise DataError(
                f"{path} is {rgb.size[0]}x{rgb.size[1]}, not {spec.size}x{spec.size} like every "
                "TinyImageNet image: the folder holds other images"
            )
        pixels[index] = np.asarray(rgb).transpose(2, 0, 1)
    return to_float(pixels)
