"""The per-epoch CSV log of a training run (``train_log.csv`` in the run folder).

Training writes it (:mod:`training.run`) and ``certify plot`` reads it
(:mod:`reports.plots`). The whole file is rewritten atomically after every epoch, so a
killed run leaves a complete log up to its last epoch; a resumed run drops rows after
its checkpoint's epoch before continuing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from certify.core.csv_files import read_csv_file, write_rows

LOG_NAME = "train_log.csv"

COLUMNS = (
    "epoch",
    "eps",
    "eps_max",
    "lr",
    "loss",
    "clean_ce",
    "robust_ce",
    "reg_tightness",
    "reg_relu",
    "train_clean_err",
    "train_verified_err",
    "val_clean_err",
    "val_verified_err",
    "active",
    "inactive",
    "epoch_seconds",
    "val_seconds",
    "best",
)


def read_log(path: Path) -> list[dict[str, str]]:
    """The rows of an existing log (every cell a string), or none if there is no log."""
    if not path.exists():
        return []
    return read_csv_file(path, "training log", allow_no_rows=True).to_dict("records")


def write_log(path: Path, rows: list[dict[str, Any]]) -> None:
    write_rows(path, rows, COLUMNS)


def rows_up_to(rows: list[dict[str, Any]], epoch: int) -> list[dict[str, Any]]:
    """The rows of epochs 1..epoch (a resumed run rewrites the later ones)."""
    return [r for r in rows if int(r["epoch"]) <= epoch]
