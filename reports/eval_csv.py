"""CSV reports of evaluations: one row per (model, data set, eps, method), appended to
a results file, and one row per image for ``--per-sample``.

Appending re-writes the whole file atomically, so an interrupted run leaves the old
file intact, and refuses a file whose columns differ from ours.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from certify.atomic_files import atomic_write_text
from certify.bounds import BoundMethod
from certify.errors import UsageError
from certify.evaluation import EvalSummary, SampleOutcomes

EVAL_COLUMNS = (
    "model",
    "arch",
    "dataset",
    "eps",
    "eps_value",
    "method",
    "num_samples",
    "start",
    "clean_error",
    "pgd_error",
    "verified_error",
    "pgd_steps",
    "pgd_restarts",
    "seconds",
    "device",
    "torch",
    "certify",
    "date",
)


def read_rows(path: str | Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of an existing CSV file."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            return list(reader.fieldnames or []), rows
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UsageError(f"cannot read CSV {path}: {exc}") from None


def check_appendable(path: str | Path, columns: Sequence[str]) -> None:
    """Raise before any work is done if ``path`` exists with other columns."""
    path = Path(path)
    if path.exists() and path.stat().st_size > 0:
        header, _ = read_rows(path)
        if header != list(columns):
            missing = [c for c in columns if c not in header]
            extra = [c for c in header if c not in columns]
            raise UsageError(
                f"{path} has other columns than certify writes (missing {missing}, "
                f"unexpected {extra}); choose another --out file"
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
        return f"{value:.6g}"
    return value


def summary_rows(meta: Mapping[str, Any], summary: EvalSummary) -> list[dict[str, Any]]:
    """One row per bound method; ``meta`` carries the model, data and run columns."""
    rows = []
    for method, error in summary.verified_error.items():
        rows.append(
            dict(meta)
            | {
                "method": method.value,
                "num_samples": summary.num_samples,
                "clean_error": summary.clean_error,
                "pgd_error": summary.pgd_error,
                "verified_error": error,
                "seconds": summary.seconds.get(method.value, 0.0),
            }
        )
    return rows


def sample_columns(methods: Sequence[BoundMethod]) -> list[str]:
    cols = ["index", "label", "clean_pred", "clean_correct", "pgd_robust"]
    for m in methods:
        cols += [f"verified_{m.value}", f"margin_lower_{m.value}"]
    return cols + ["verified_any"]


def sample_rows(outcomes: SampleOutcomes) -> list[dict[str, Any]]:
    """One row per image, with the smallest margin lower bound of each method."""
    columns: dict[str, list] = {
        "index": outcomes.indices.tolist(),
        "label": outcomes.labels.tolist(),
        "clean_pred": outcomes.clean_pred.tolist(),
        "clean_correct": outcomes.clean_correct.int().tolist(),
        "pgd_robust": outcomes.pgd_robust.int().tolist(),
    }
    for m, lower in outcomes.margin_lower.items():
        columns[f"verified_{m.value}"] = outcomes.verified(m).int().tolist()
        columns[f"margin_lower_{m.value}"] = lower.tolist()
    columns["verified_any"] = outcomes.verified_any().int().tolist()
    return [
        dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)
    ]
