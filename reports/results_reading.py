"""Reading results files (those of ``certify eval`` and ``certify train``) for
``certify report``: every row of every file, typed, with the model of a training run
qualified by its run folder.

Each file holds one row per (model, data set, eps, bound method) with the columns of
:data:`reports.eval_csv.EVAL_COLUMNS`; bad input raises
:class:`~certify.core.errors.UsageError` with a one-line message naming the file and line.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from certify.core.csv_files import read_csv_file
from certify.core.eps import parse_eps
from certify.core.errors import CertifyError, UsageError

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
    frame["model"] = _qualified_models(frame["model"], path)
    frame["source"] = str(path)
    return frame


def _typed(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Numbers and dates parsed; a bad cell is named by its line in the file."""
    frame = frame.copy()
    for column in ("clean_error", "pgd_error", "verified_error", "num_samples"):
        frame[column] = _numbers(frame[column], column, path)
    dates = pd.to_datetime(frame["date"], errors="coerce", format="mixed")
    bad = dates.isna() & (frame["date"] != "")
    if bad.any():
        line = int(bad.to_numpy().nonzero()[0][0]) + 2  # + header, + 1-based lines
        raise UsageError(f"{path} line {line}: date {frame['date'][bad].iloc[0]!r} is no date")
    frame["date"] = dates
    frame["eps_value"] = [_eps_value(text, path) for text in frame["eps"]]
    return frame


def _numbers(column: pd.Series, name: str, path: Path) -> pd.Series:
    values = pd.to_numeric(column, errors="coerce")
    bad = values.isna()
    if bad.any():
        line = int(bad.to_numpy().nonzero()[0][0]) + 2
        raise UsageError(f"{path} line {line}: {name} {column[bad].iloc[0]!r} is not a number")
    return values


def _eps_value(text: str, path: Path) -> float:
    try:
        return parse_eps(text)
    except CertifyError:
        raise UsageError(f"{path}: eps {text!r} is not a number") from None


def _qualified_models(models: pd.Series, path: Path) -> pd.Series:
    """``best.pth`` of a training run becomes ``<run folder>/best.pth``.

    `certify train` writes OUT_DIR/results.csv with the model named after the checkpoint
    file only, so two runs would otherwise be the same model and one would hide the other.
    """
    folder = path.resolve().parent.name
    return models.where(~models.isin(TRAIN_CHECKPOINTS), folder + "/" + models)
