"""Checks on the ``--out`` file of ``certify report`` and ``certify plot``, made before
any work so that a typo costs nothing; the write itself is atomic
(:mod:`certify.atomic_files`)."""

from __future__ import annotations

from pathlib import Path

from certify.errors import UsageError


def check_out_file(path: str | Path, suffix_hint: str) -> Path:
    """``path`` as a Path, if a file can be written there (not a folder, folder exists)."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"--out {path} is a folder; give a file name, e.g. {path / suffix_hint}")
    if not path.parent.is_dir():
        raise UsageError(f"--out {path}: folder {path.parent} does not exist")
    return path
