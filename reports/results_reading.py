"""Reading results files (those of ``certify eval`` and ``certify train``) for
``certify report``: every row of every file, typed, with the model of a training run
qualified by its run folder.

Each file holds one row per (model, data set, eps, bound method) with the columns of
:data:`reports.eval_csv.EVAL_COLUMNS`; files of older versions, without counts, run
folder or mode, are read too. Bad input raises
:class:`~certify.core.errors.UsageError` with a one-line message naming the file and line.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from certify.core.csv_files import read_csv_file
from certify.core.eps import parse_eps
from certify.core.errors import CertifyError, UsageError, first_line

# The columns a results file must have for us to build the table from it.
REQUIRED_COLUMNS = (
    "model",
    "dataset",
    "eps",
    "method",
    "num_samples",
    "clean_error",
    "pgd_error",
    "verified_error",
    "date",
)
# The count columns, the error each gives, and whether the count is of wrong images
# (error = count / n) or of verified ones (error = 1 - count / n).
COUNTS = (
    ("clean_wrong", "clean_error", True),
    ("pgd_attacked", "pgd_error", True),
    ("verified", "verified_error", False),
)
# Rows without a mode come from before the cascade: every method ran on every image.
DEFAULT_MODE = "every-method"
# The checkpoint names `certify train` evaluates at the end of a run; every run names
# its model the same, so the run folder is what tells runs apart.
TRAIN_CHECKPOINTS = ("best.pth", "last.pth")


def read_results(paths: Sequence[str | Path]) -> pd.DataFrame:
    """All rows of the given results files, in file order, with typed columns.

    Adds ``source`` (the file) and ``order`` (position in the merged input), which break
    ties between rows with the same date: the later one wins.
    """
    if not paths:
        raise UsageError("give at least one results CSV file")
    frames = [_read_one(Path(p)) for p in paths]
    rows = pd.concat(frames, ignore_index=True)
    rows["order"] = range(len(rows))
    return rows


def _read_one(path: Path) -> pd.DataFrame:
    if path.is_dir():
        raise UsageError(f"{path} is a folder; give its results CSV, e.g. {path / 'results.csv'}")
    frame = read_csv_file(path, "results file", REQUIRED_COLUMNS)
    frame = _typed(frame, path)
    frame = _with_counts(frame, path)
    frame["model"] = _qualified_models(frame, path)
    frame["mode"] = _column(frame, "mode").replace("", DEFAULT_MODE)
    frame["start"] = _numbers(_column(frame, "start").replace("", "0"), "start", path)
    frame["source"] = str(path)
    return frame


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    """Column ``name`` as text, empty where a file from an older version lacks it."""
    if name not in frame.columns:
        return pd.Series("", index=frame.index, dtype=object)
    return frame[name].fillna("").astype(str)


def _with_counts(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Integer counts beside the errors; rows of older versions, which wrote errors only,
    get the counts their errors and ``num_samples`` give."""
    n = frame["num_samples"]
    for count, error, wrong in COUNTS:
        text = _column(frame, count)
        given = text != ""
        values = pd.Series(0, index=frame.index, dtype="int64")
        if given.any():
            numbers = _numbers(text[given], count, path)
            _check_counts(numbers, count, path, maximum=n[given])
            values[given] = numbers.astype("int64")
        derived = (frame[error] * n).round()
        values[~given] = (n - derived if not wrong else derived)[~given].astype("int64")
        frame[count] = values
    return frame


def _typed(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Numbers and dates parsed; a bad cell is named by its line in the file."""
    frame = frame.copy()
    for column in ("clean_error", "pgd_error", "verified_error", "num_samples"):
        frame[column] = _numbers(frame[column], column, path)
    for column in ("clean_error", "pgd_error", "verified_error"):
        outside = ~frame[column].between(0, 1)
        if outside.any():
            line = _first_line(outside)
            value = frame[column][outside].iloc[0]
            raise UsageError(f"{path} line {line}: {column} {float(value):g} is not in [0, 1]")
    _check_counts(frame["num_samples"], "num_samples", path, minimum=1)
    try:
        # certify writes UTC without an offset; utc=True also reads dates that have one.
        dates = pd.to_datetime(frame["date"], errors="coerce", format="mixed", utc=True)
    except (ValueError, TypeError, OverflowError) as exc:
        raise UsageError(f"{path}: cannot read its dates ({first_line(exc)})") from None
    bad = dates.isna() & (frame["date"] != "")
    if bad.any():
        line = _first_line(bad)
        raise UsageError(f"{path} line {line}: date {frame['date'][bad].iloc[0]!r} is no date")
    frame["date"] = dates
    frame["eps_value"] = [_eps_value(text, path) for text in frame["eps"]]
    return frame


def _first_line(bad: pd.Series) -> int:
    """The line of the file that holds the first row marked ``bad``."""
    return int(bad.to_numpy().nonzero()[0][0]) + 2  # + header, + 1-based lines


def _check_counts(
    values: pd.Series, name: str, path: Path, minimum: int = 0, maximum: pd.Series | None = None
) -> None:
    """Counts are whole numbers of images: finite, integral, at least ``minimum`` and at
    most ``maximum`` (the row's number of images)."""
    finite = values.apply(math.isfinite)
    bad = ~finite | (values < minimum)
    if maximum is not None:
        bad |= values > maximum
    bad[finite] |= values[finite] != values[finite].round()
    if bad.any():
        line = _first_line(bad)
        raise UsageError(
            f"{path} line {line}: {name} {float(values[bad].iloc[0]):g} is not a count of images"
        )


def _numbers(column: pd.Series, name: str, path: Path) -> pd.Series:
    values = pd.to_numeric(column, errors="coerce")
    bad = values.isna()
    if bad.any():
        line = _first_line(bad)
        raise UsageError(f"{path} line {line}: {name} {column[bad].iloc[0]!r} is not a number")
    return values


def _eps_value(text: str, path: Path) -> float:
    try:
        return parse_eps(text)
    except CertifyError:
        raise UsageError(f"{path}: eps {text!r} is not a number") from None


def _qualified_models(frame: pd.DataFrame, path: Path) -> pd.Series:
    """The run folder of `certify train`'s rows, which all name their model ``best.pth``.

    Rows of older versions have no ``run`` column: their model becomes
    ``<folder of the results file>/best.pth``.
    """
    models = frame["model"]
    runs = _column(frame, "run")
    folder = path.resolve().parent.name
    older = models.where(~models.isin(TRAIN_CHECKPOINTS), folder + "/" + models)
    return runs.where(runs != "", older)
