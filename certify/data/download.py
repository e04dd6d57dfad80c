"""Downloading a data set's official files into the layout the readers of
:mod:`certify.data` read (what ``certify data download`` runs).

Where each file comes from and its published checksum is the :data:`SOURCES` table.
:func:`download_dataset` works in a hidden folder ``<data_dir>/.certify-downloads``:
files arrive there as ``NAME.part`` (continued by the next run after a break or a
kill, see :mod:`certify.data.fetch`), are checked, and are unpacked into a temporary
folder beside them; only the finished folder is renamed into place (``MNIST/raw``,
``cifar-10-batches-py``, ``tiny-imagenet-200``), in one atomic step. So the readers
see the whole data set or none of it, whatever happens during the download.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from certify.core.datasets import Dataset, parse_dataset
from certify.core.errors import DataError, UsageError, first_line
from certify.data import cifar, tinyimagenet
from certify.data._common import default_data_dir
from certify.data.archives import extract_tar, extract_zip, gunzip
from certify.data.fetch import ProgressFn, fetch

WORK_DIR = ".certify-downloads"


@dataclass(frozen=True)
class Source:
    """One file of a data set: its name, the URLs that serve it (tried in order) and its
    published checksums."""

    file: str
    urls: tuple[str, ...]
    md5: str
    sha256: str | None = None


# torchvision's MNIST mirrors, the S3 copy first: the original host has refused
# anonymous downloads at times.
_MNIST_HOSTS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)


def _mnist(file: str, md5: str) -> Source:
    return Source(file, tuple(host + file for host in _MNIST_HOSTS), md5)


# The MD5s are those torchvision checks (MNIST, CIFAR-10, CIFAR-100) and that of the zip the seed's
# data script downloads (TinyImageNet); no host publishes a SHA256 for these files.
SOURCES: dict[Dataset, tuple[Source, ...]] = {
    Dataset.MNIST: (
        _mnist("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        _mnist("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
        _mnist("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
        _mnist("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
    ),
    Dataset.CIFAR: (
        Source(
            "cifar-10-python.tar.gz",
            ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
            "c58f30108f718f92721af3b95e74349a",
        ),
    ),
    Dataset.CIFAR100: (
        Source(
            "cifar-100-python.tar.gz",
            ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",),
            "eb9058c3a382ffc7106e4002c42a8d85",
        ),
    ),
    Dataset.TINYIMAGENET: (
        Source(
            "tiny-imagenet-200.zip",
            ("http://cs231n.stanford.edu/tiny-imagenet-200.zip",),
            "90528d7ca1a48142e341f4ef8d21d0de",
        ),
    ),
}

# The folder each data set is installed as, relative to the data dir: what its reader
# looks for first.
TARGETS: dict[Dataset, Path] = {
    Dataset.MNIST: Path("MNIST") / "raw",
    Dataset.CIFAR: Path(cifar.FOLDER),
    Dataset.CIFAR100: Path(cifar.CIFAR100.folder),
    Dataset.TINYIMAGENET: Path(tinyimagenet.FOLDER),
}


@dataclass(frozen=True)
class DownloadResult:
    dataset: Dataset
    path: Path  # the installed folder, e.g. <data_dir>/MNIST/raw
    downloaded: bool  # False: the folder was there already and was left alone


def download_dataset(
    dataset: str | Dataset,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    mirror: str | None = None,
    force: bool = False,
    sources: Sequence[Source] | None = None,
    progress: ProgressFn | None = None,
    timeout: float = 30.0,
) -> DownloadResult:
    """Download ``dataset`` into ``data_dir`` (default :func:`default_data_dir`).

    A data set already there (a non-empty target folder) is left alone unless ``force``.
    ``mirror`` is a base URL that serves the same file names (``mirror/<file>``) instead
    of the official hosts; ``sources`` replaces the table's entries of the data set.
    ``progress(stage, done, total)`` is called as bytes arrive and are unpacked.
    Raises :class:`DataError` (unreachable host, HTTP error, checksum mismatch, broken
    transfer, full disk) or :class:`UsageError` (bad ``data_dir`` or ``mirror``).
    """
    kind = parse_dataset(dataset)
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    if root.exists() and not root.is_dir():
        raise UsageError(f"{root} is a file, not a folder: pass a folder", param="data_dir")
    target = root / TARGETS[kind]
    if _holds_files(target) and not force:
        return DownloadResult(kind, target, downloaded=False)
    files = tuple(SOURCES[kind] if sources is None else sources)
    if mirror is not None:
        base = _check_mirror(mirror)
        files = tuple(Source(s.file, (f"{base}/{s.file}",), s.md5, s.sha256) for s in files)
    # Folders made here go again if the download fails and leaves nothing in them.
    created = [folder for folder in (root, *root.parents) if not folder.exists()]
    _make_dir(root)
    try:
        return _download_into(kind, root, target, files, progress, timeout)
    except BaseException:
        for folder in created:  # innermost first
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def _download_into(
    kind: Dataset,
    root: Path,
    target: Path,
    files: tuple[Source, ...],
    progress: ProgressFn | None,
    timeout: float,
) -> DownloadResult:
    work = root / WORK_DIR
    try:
        _make_dir(work)
        _remove_stale_extractions(work, kind)
        archives = [
            fetch(s.urls, work / _plain_name(s.file), s.md5, s.sha256, progress, timeout)
            for s in files
        ]
        staging = Path(tempfile.mkdtemp(prefix=f"extract-{kind.value}-", dir=work))
        try:
            built = _BUILDERS[kind](archives, staging, progress)
            _install(built, target, staging)
        except OSError as exc:
            raise DataError(
                f"cannot install {target}: {exc.strerror or first_line(exc)}; "
                "free some space or choose another `data_dir`"
            ) from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        for archive in archives:
            with contextlib.suppress(OSError):
                archive.unlink()
    finally:
        # Partial files stay for the next run to continue; an empty work folder goes.
        with contextlib.suppress(OSError):
            work.rmdir()
    return DownloadResult(kind, target, downloaded=True)


def _make_dir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(
            f"cannot create {folder}: {exc.strerror or first_line(exc)}; choose a writable folder",
            param="data_dir",
        ) from exc


def _check_mirror(mirror: str) -> str:
    parts = urlsplit(mirror)
    if parts.scheme not in ("http", "https", "file") or not (parts.netloc or parts.path):
        raise UsageError(
            f"{mirror!r} is not an http://, https:// or file:// URL of a folder, "
            "e.g. https://example.org/datasets",
            param="mirror",
        )
    return mirror.rstrip("/")


def _plain_name(file: str) -> str:
    # Source names come from a table or a caller; never let one pick a path elsewhere.
    if not _plain(file):
        raise UsageError(f"source file name {file!r} must be a plain file name", param="sources")
    return file


def _plain(name: str) -> bool:
    """Whether ``name`` is a file name that stays in its folder."""
    return name not in ("", ".", "..") and PurePosixPath(name.replace("\\", "/")).name == name


def _holds_files(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


def _remove_stale_extractions(work: Path, kind: Dataset) -> None:
    """Delete what a killed run left half unpacked (its downloads stay, to be reused)."""
    for stale in work.glob(f"extract-{kind.value}-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _install(built: Path, target: Path, staging: Path) -> None:
    """Rename the finished folder ``built`` to ``target``, replacing an old one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if not (target.exists() or target.is_symlink()):
        os.replace(built, target)
        return
    # Moved aside first, as a rename cannot replace a non-empty folder; the old folder
    # goes with the staging folder, or comes back if the new one cannot take its place.
    aside = staging / "replaced"
    os.replace(target, aside)
    try:
        os.replace(built, target)
    except OSError:
        os.replace(aside, target)
        raise


def _build_mnist(archives: list[Path], staging: Path, progress: ProgressFn | None) -> Path:
    """The raw/ folder torchvision leaves: each .gz and its decompressed file."""
    raw = staging / "raw"
    raw.mkdir()
    for archive in archives:
        gunzip(archive, raw / archive.name.removesuffix(".gz"))
        os.replace(archive, raw / archive.name)
    return raw


def _build_cifar(archives: list[Path], staging: Path, progress: ProgressFn | None) -> Path:
    return _extracted(archives, staging, progress, cifar.CIFAR10.folder, "CIFAR-10")


def _build_cifar100(archives: list[Path], staging: Path, progress: ProgressFn | None) -> Path:
    return _extracted(archives, staging, progress, cifar.CIFAR100.folder, "CIFAR-100")


def _extracted(
    archives: list[Path], staging: Path, progress: ProgressFn | None, name: str, title: str
) -> Path:
    """The one folder ``name`` that the one tar archive holds, extracted into ``staging``."""
    (archive,) = archives
    extract_tar(archive, staging, progress)
    folder = staging / name
    if not folder.is_dir():
        raise DataError(f"{archive.name} holds no {name}/ folder: it is not {title}")
    return folder


def _build_tinyimagenet(archives: list[Path], staging: Path, progress: ProgressFn | None) -> Path:
    (archive,) = archives
    extract_zip(archive, staging, progress)
    root = staging / tinyimagenet.FOLDER
    if not (root / "wnids.txt").is_file():
        raise DataError(
            f"{archive.name} holds no {tinyimagenet.FOLDER}/wnids.txt: it is not TinyImageNet"
        )
    _sort_val_images(root)
    return root


_BUILDERS: dict[Dataset, Callable[[list[Path], Path, ProgressFn | None], Path]] = {
    Dataset.MNIST: _build_mnist,
    Dataset.CIFAR: _build_cifar,
    Dataset.CIFAR100: _build_cifar100,
    Dataset.TINYIMAGENET: _build_tinyimagenet,
}


def _sort_val_images(root: Path) -> None:
    """Move TinyImageNet's ``val/images/*`` into ``val/<wnid>/`` by ``val_annotations.txt``.

    The layout the seed's data script makes, so that ``ImageFolder`` reads labels from
    folder names; ``val/images`` is removed, and the annotations file is kept.
    """
    val = root / "val"
    images = val / "images"
    annotations = val / "val_annotations.txt"
    wnids = {line.strip() for line in (root / "wnids.txt").read_text().splitlines()} - {""}
    if not annotations.is_file() or not images.is_dir():
        raise DataError(f"{root.name} lacks val/images or val/val_annotations.txt")
    for number, line in enumerate(annotations.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        # Both fields become paths: only plain names, and only a class wnids.txt lists.
        if len(fields) < 2 or fields[1] not in wnids or not all(map(_plain, fields[:2])):
            raise DataError(
                f"{annotations.name} line {number} ({line.strip()!r}) does not map a file "
                "to a class of wnids.txt: the archive is not the official one"
            )
        name, wnid = fields[0], fields[1]
        if not (images / name).is_file():
            raise DataError(f"{annotations.name} lists {name}, which val/images lacks")
        (val / wnid).mkdir(exist_ok=True)
        os.replace(images / name, val / wnid / name)
    left = sorted(p.name for p in images.iterdir())
    if left:
        raise DataError(
            f"val/images holds {len(left)} files that {annotations.name} does not list "
            f"(e.g. {left[0]}): the archive is not the official one"
        )
    images.rmdir()
