"""Fetching one file over HTTP(S) so that a broken or killed transfer can be continued.

:func:`fetch` is the transport under :mod:`certify.data.download`. Bytes go to
``NAME.part`` beside the destination; a later call continues that file with an HTTP
``Range`` request (a server that ignores ``Range`` sends the whole file and the part is
started afresh). Only a file whose checksum matches the published one is renamed to
``NAME``; one that does not is deleted. ``file://`` URLs work too, for local mirrors.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from certify.core.errors import DataError, first_line
from certify.core.version import __version__

# progress(stage, done, total): ``done`` counts bytes from the start of the file (so a
# resumed transfer starts above 0); ``total`` is None when the size is unknown.
ProgressFn = Callable[[str, int, int | None], None]

_CHUNK = 1 << 16
_USER_AGENT = f"certify/{__version__} (python urllib)"
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-\d+/(\d+|\*)")
_UNSATISFIABLE = re.compile(r"bytes\s+\*/(\d+)")
_TRY_MIRROR = "use `mirror` to fetch it from another host"


class _Unavailable(Exception):
    """A URL that gave no file (unreachable host, HTTP error): the next URL may."""

    def __init__(self, message: str, *, unreachable: bool) -> None:
        super().__init__(message)
        self.unreachable = unreachable


def fetch(
    urls: Sequence[str],
    dest: Path,
    md5: str,
    sha256: str | None = None,
    progress: ProgressFn | None = None,
    timeout: float = 30.0,
) -> Path:
    """Download ``dest.name`` from the first of ``urls`` that serves it and return ``dest``.

    A ``dest`` already there is kept when its checksums match (a run that stopped after
    downloading). The transfer continues ``dest.name + ".part"`` if one exists. Raises
    :class:`DataError` when no URL serves the file, the transfer breaks off (the part is
    kept; calling again resumes it) or the checksum differs (the part is deleted).
    """
    if dest.is_file():
        if _matches(dest, md5, sha256):
            return dest
        _unlink(dest)
    part = dest.with_name(dest.name + ".part")
    failures: list[_Unavailable] = []
    for url in urls:
        try:
            _download(url, part, dest.name, progress, timeout)
            break
        except _Unavailable as exc:
            failures.append(exc)
    else:
        reasons = "; ".join(str(f) for f in failures)
        advice = _TRY_MIRROR
        if any(f.unreachable for f in failures):
            advice = "check the network connection or " + advice
        raise DataError(f"cannot download {dest.name}: {reasons}; {advice}")
    problem = _checksum_problem(part, md5, sha256)
    if problem:
        _unlink(part)
        raise DataError(
            f"{dest.name} from {_host(url)} {problem}: the server sent another or a damaged "
            f"file, so it was deleted; run the command again or {_TRY_MIRROR}"
        )
    try:
        os.replace(part, dest)
    except OSError as exc:
        raise _disk_error(dest, exc) from exc
    return dest


def _download(
    url: str,
    part: Path,
    name: str,
    progress: ProgressFn | None,
    timeout: float,
    resume: bool = True,
) -> None:
    have = part.stat().st_size if resume and part.is_file() else 0
    headers = {"User-Agent": _USER_AGENT}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        response = urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=timeout
        )
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and have:
            size = _UNSATISFIABLE.fullmatch(exc.headers.get("Content-Range", "").strip())
            if size and int(size.group(1)) == have:
                return  # the part is complete: a run stopped just before checking it
            return _download(url, part, name, progress, timeout, resume=False)
        message = f"{_host(url)} answered HTTP {exc.code} {exc.reason}"
        raise _Unavailable(message, unreachable=False) from exc
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        message = f"cannot reach {_host(url)} ({first_line(reason)})"
        raise _Unavailable(message, unreachable=True) from exc
    with response:
        start, total = _range_of(response, have)
        if start is None:
            response.close()
            if not have:
                message = f"{_host(url)} sent part of the file where the whole was asked for"
                raise _Unavailable(message, unreachable=False)
            # The server answered a Range request with something other than the
            # bytes that follow the part: start the file again.
            return _download(url, part, name, progress, timeout, resume=False)
        _receive(response, part, start, total, name, url, progress)


def _range_of(response, have: int) -> tuple[int | None, int | None]:
    """Where the response body starts in the file and the file's size (None: unknown)."""
    length = response.headers.get("Content-Length")
    length = int(length) if length and length.strip().isdigit() else None
    # file:// responses have no status; they always hold the whole file.
    status = response.status or 200
    if status == 206:
        match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
        if not match or int(match.group(1)) != have:
            return None, None
        size = match.group(2)
        return have, int(size) if size != "*" else (have + length if length is not None else None)
    return 0, length


def _receive(response, part: Path, start: int, total: int | None, name, url, progress) -> None:
    stage = f"download {name}"
    done = start
    try:
        # "r+b" keeps the part's first ``start`` bytes; truncate drops any tail
        # beyond them (none, unless the part is restarted at 0).
        f = part.open("r+b" if start else "wb")
        f.seek(start)
        f.truncate()
    except OSError as exc:
        raise _disk_error(part, exc) from exc
    with f:
        if progress:
            progress(stage, done, total)
        # read1 returns what has arrived instead of waiting for a whole chunk, so the
        # part on disk keeps up with the transfer (and a kill loses little).
        read = getattr(response, "read1", response.read)
        while True:
            try:
                chunk = read(_CHUNK)
            except (OSError, http.client.HTTPException) as exc:
                raise _broke_off(name, url, done, total, first_line(exc)) from exc
            if not chunk:
                break
            try:
                f.write(chunk)
            except OSError as exc:
                raise _disk_error(part, exc) from exc
            done += len(chunk)
            if progress:
                progress(stage, done, total)
    if total is not None and done < total:
        raise _broke_off(name, url, done, total, "the connection closed early")


def _broke_off(name: str, url: str, done: int, total: int | None, why: str) -> DataError:
    of = f" of {total:,}" if total is not None else ""
    return DataError(
        f"download of {name} from {_host(url)} broke off after {done:,}{of} bytes ({why}): "
        "run the command again to resume it"
    )


def _disk_error(path: Path, exc: OSError) -> DataError:
    reason = exc.strerror or first_line(exc)
    return DataError(f"cannot write {path}: {reason}; free some space or choose another `data_dir`")


def _checksum_problem(path: Path, md5: str, sha256: str | None) -> str | None:
    """What is wrong with the file's checksums, or None when they match."""
    digests = _digests(path)
    for kind, expected in (("MD5", md5), ("SHA256", sha256)):
        if expected and digests[kind] != expected.lower():
            return f"has {kind} {digests[kind]}, not the published {expected.lower()}"
    return None


def _matches(path: Path, md5: str, sha256: str | None) -> bool:
    return _checksum_problem(path, md5, sha256) is None


def _digests(path: Path) -> dict[str, str]:
    md5 = hashlib.md5(usedforsecurity=False)
    sha256 = hashlib.sha256()
    try:
        with path.open("rb") as f:
            while block := f.read(1 << 20):
                md5.update(block)
                sha256.update(block)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or first_line(exc)}") from exc
    return {"MD5": md5.hexdigest(), "SHA256": sha256.hexdigest()}


def _host(url: str) -> str:
    parts = urlsplit(url)
    return parts.netloc or url


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
