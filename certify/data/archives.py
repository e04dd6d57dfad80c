"""Unpacking downloaded archives (``.tar.gz``, ``.zip``, ``.gz``) without trusting them.

Used by :mod:`certify.data.download` to unpack into a temporary folder. A member whose
name is absolute or climbs out with ``..``, and any tar member that is not a plain file
or folder (links, devices), is refused before anything is written; tar members are
extracted with tarfile's ``"data"`` filter as a second guard. Every problem is a
:class:`DataError`.
"""

from __future__ import annotations

import gzip
import shutil
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from certify.core.errors import DataError
from certify.data._common import typed_first_line
from certify.data.fetch import ProgressFn

_CHUNK = 1 << 20


def extract_tar(archive: Path, dest: Path, progress: ProgressFn | None = None) -> None:
    """Unpack a (possibly compressed) tar ``archive`` into the folder ``dest``."""
    stage = f"extract {archive.name}"
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check_name(member.name, archive)
                if not (member.isfile() or member.isdir()):
                    raise DataError(
                        f"{archive.name} holds {member.name!r}, which is a link or a device, "
                        "not a file: refusing to unpack it"
                    )
            total = sum(m.size for m in members)
            done = 0
            for member in members:
                tar.extract(member, dest, filter="data")
                done += member.size
                if progress:
                    progress(stage, done, total)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise _corrupt(archive, exc) from exc
    except OSError as exc:
        raise _unwritable(dest, exc) from exc


def extract_zip(archive: Path, dest: Path, progress: ProgressFn | None = None) -> None:
    """Unpack the zip ``archive`` into the folder ``dest``."""
    stage = f"extract {archive.name}"
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            for member in members:
                _check_name(member.filename, archive)
            total = sum(m.file_size for m in members)
            done = 0
            for member in members:
                zf.extract(member, dest)
                done += member.file_size
                if progress:
                    progress(stage, done, total)
    except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise _corrupt(archive, exc) from exc
    except OSError as exc:
        raise _unwritable(dest, exc) from exc


def gunzip(archive: Path, dest: Path) -> None:
    """Decompress the gzip file ``archive`` into the file ``dest``."""
    try:
        with gzip.open(archive, "rb") as src, dest.open("wb") as out:
            shutil.copyfileobj(src, out, _CHUNK)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise _corrupt(archive, exc) from exc
    except OSError as exc:
        raise _unwritable(dest.parent, exc) from exc


def _check_name(name: str, archive: Path) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    # "C:" as a first part is a Windows drive: absolute there, so refused here too.
    if path.is_absolute() or ".." in path.parts or (path.parts and path.parts[0].endswith(":")):
        raise DataError(
            f"{archive.name} holds a member named {name!r}, which points outside the folder "
            "it unpacks into: refusing to unpack it; the archive is not the official one"
        )


def _corrupt(archive: Path, exc: BaseException) -> DataError:
    return DataError(
        f"{archive} is not a readable archive ({typed_first_line(exc)}): "
        "delete it and download it again"
    )


def _unwritable(dest: Path, exc: OSError) -> DataError:
    reason = exc.strerror or typed_first_line(exc)
    return DataError(
        f"cannot unpack into {dest}: {reason}; free some space or choose another `data_dir`"
    )
