"""The CSV files certify reads and writes: results files, per-image files, training logs.

Writing goes through :mod:`certify.core.atomic_files`: a fresh file (:func:`write_rows`)
or an appended one (:func:`append_rows`, which re-writes the whole file and refuses one
whose columns differ from the writer's) is never seen half-written. Reading
(:func:`read_csv_file`) gives every cell as a string, after the checks that turn a
missing, empty or corrupt file into a one-line :class:`~certify.core.errors.UsageError`;
callers type the columns themselves, since each knows what its columns hold.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from certify.core.atomic_files import atomic_write_text
from certify.core.errors import UsageError, first_line


def read_csv_file(
    path: str | Path,
    kind: str = "CSV file",
    required: Sequence[str] = (),
    *,
    allow_no_rows: bool = False,
    no_rows: str = "has a header but no rows",
    missing_hint: str = "",
) -> pd.DataFrame:
    """The rows of ``path`` with every cell a string (empty cells as ``""``).

    ``kind`` names the file in errors (e.g. "training log"). The file must exist
    (``missing_hint`` says what to give instead), parse, have the ``required`` columns and,
    unless ``allow_no_rows``, at least one row (``no_rows`` says what having none means).
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{kind} {path} does not exist{missing_hint}")
    if path.stat().st_size == 0:
        raise UsageError(f"{kind} {path} is empty")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise UsageError(f"cannot read {kind} {path}: {first_line(exc)}") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        lacks = ", ".join(missing)
        raise UsageError(f"{path} is not a certify {kind}: it lacks the columns {lacks}")
    if frame.empty and not allow_no_rows:
        raise UsageError(f"{kind} {path} {no_rows}")
    return frame


def check_appendable(path: str | Path, columns: Sequence[str], param: str | None = None) -> None:
    """Raise before any work is done if ``path`` exists with other columns than ``columns``."""
    path = Path(path)
    if path.exists() and path.stat().st_size > 0:
        header = list(read_csv_file(path, allow_no_rows=True).columns)
        if header != list(columns):
            missing = [c for c in columns if c not in header]
            extra = [c for c in header if c not in columns]
            raise UsageError(
                f"{path} has other columns than certify writes (missing {missing}, "
                f"unexpected {extra}); choose another file",
                param=param,
            )


def append_rows(
    path: str | Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]
) -> None:
    """Append rows to a CSV file (created with a header if absent), atomically."""
    path = Path(path)
    check_appendable(path, columns)
    old = path.read_text(encoding="utf-8") if path.exists() and path.stat().st_size else ""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    if not old:
        writer.writeheader()
    elif not old.endswith("\n"):
        buf.write("\n")
    for row in rows:
        writer.writerow({c: _cell(row.get(c, "")) for c in columns})
    atomic_write_text(path, old + buf.getvalue())


def write_rows(path: str | Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> None:
    """Write a fresh CSV file atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: _cell(row.get(c, "")) for c in columns})
    atomic_write_text(path, buf.getvalue())


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return "" if value != value else f"{value:.6g}"  # NaN: nothing was measured
    return value
