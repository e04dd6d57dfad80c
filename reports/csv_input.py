"""Reading a CSV file that certify wrote (a training log, a results file) for a report
or a plot: every cell as a string, after the checks that turn a wrong, empty or corrupt
file into a one-line :class:`~certify.errors.UsageError`. The callers type the columns
themselves, since each knows what its columns hold."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from certify.errors import UsageError, first_line


def read_string_csv(
    path: Path,
    kind: str,
    required: Sequence[str],
    no_rows: str = "has a header but no rows",
    missing_hint: str = "",
) -> pd.DataFrame:
    """The rows of ``path`` (``kind`` names it in errors, e.g. "training log"), with
    empty cells as empty strings; the file must exist (``missing_hint`` says what to
    give instead), parse, have the ``required`` columns and at least one row
    (``no_rows`` says what it means when it has none)."""
    if not path.is_file():
        raise UsageError(f"{kind} {path} does not exist{missing_hint}")
    if path.stat().st_size == 0:
        raise UsageError(f"{kind} {path} is empty")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {kind} {path}: {first_line(exc)}") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        lacks = ", ".join(missing)
        raise UsageError(f"{path} is not a certify {kind}: it lacks the columns {lacks}")
    if frame.empty:
        raise UsageError(f"{kind} {path} {no_rows}")
    return frame
