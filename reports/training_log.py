"""The per-epoch CSV log of a training run (``train_log.csv`` in the run folder).

Training writes it (:mod:`training.run`) and ``certify plot`` reads it
(:mod:`reports.plots`). The whole file is rewritten atomically after every epoch, so a
killed run leaves a complete log up to its last epoch; a resumed run drops rows after
its checkpoint's epoch before continuing.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from certify.core.csv_files import read_csv_file, write_rows

LOG_NAME = "train_log.csv"


@dataclass(frozen=True)
class EpochRow:
    """One epoch of the log; its fields are the log's columns, in order (their meaning
    is in docs/formats.md). None is an empty cell: a quantity the epoch did not have."""

    epoch: int
    eps: float
    eps_max: float
    lr: float
    loss: float | None
    clean_ce: float | None
    robust_ce: float | None
    reg_tightness: float | None
    reg_relu: float | None
    train_clean_err: float | None
    train_verified_err: float | None
    train_adv_err: float | None
    val_clean_err: float | None
    val_verified_err: float | None
    active: float | None
    inactive: float | None
    epoch_seconds: float
    val_seconds: float | None
    best: bool


COLUMNS = tuple(f.name for f in fields(EpochRow))


def read_log(path: Path) -> list[EpochRow]:
    """The rows of an existing log, or none if there is no log. A column the log was
    written without (by an older certify) reads as empty."""
    if not path.exists():
        return []
    table = read_csv_file(path, "training log", allow_no_rows=True)
    return [_typed(record) for record in table.to_dict("records")]


def _typed(record: dict[str, object]) -> EpochRow:
    def number(name: str) -> float | None:
        value = record.get(name)
        if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
            return None
        return float(value)  # type: ignore[arg-type]

    values: dict[str, object] = {name: number(name) for name in COLUMNS}
    values["epoch"] = int(float(record["epoch"]))  # type: ignore[arg-type]
    values["best"] = bool(int(float(record.get("best") or 0)))  # type: ignore[arg-type]
    return EpochRow(**values)  # type: ignore[arg-type]


def write_log(path: Path, rows: list[EpochRow]) -> None:
    write_rows(path, [{**asdict(r), "best": int(r.best)} for r in rows], COLUMNS)


def rows_up_to(rows: list[EpochRow], epoch: int) -> list[EpochRow]:
    """The rows of epochs 1..epoch (a resumed run rewrites the later ones)."""
    return [r for r in rows if r.epoch <= epoch]
