"""What one evaluation gives: the summary, the per-image outcomes and the settings.

:class:`EvalResult` is returned by :func:`certify.evaluate`. It renders the terminal
table and the JSON that ``certify eval`` prints and writes the CSV files that go into
papers; the CLI only shows what it renders.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from rich.table import Table

from certify.core.csv_files import append_rows, write_rows
from certify.core.eps import format_eps
from certify.evaluation.counterexamples import save_counterexample
from certify.evaluation.modes import EvalMode
from certify.evaluation.outcomes import EvalSummary, SampleOutcomes
from certify.pipeline.settings import EvalSettings
from reports.eval_csv import (
    EVAL_COLUMNS,
    check_result_files,
    sample_columns,
    sample_rows,
    summary_rows,
)
from reports.summary_table import summary_table


@dataclass
class EvalResult:
    """``settings`` says what was evaluated and how (model, arch, data set, eps, the
    :class:`~certify.evaluation.config.EvalConfig`, device, versions, date); ``summary``
    the errors per method; ``outcomes`` the per-image results."""

    settings: EvalSettings
    summary: EvalSummary
    outcomes: SampleOutcomes

    @property
    def seconds(self) -> dict[str, float]:
        """Seconds per stage: ``clean``, ``pgd`` and one per bound method."""
        return self.summary.seconds

    @property
    def samples(self) -> pd.DataFrame:
        """One row per image, with the columns of the per-image CSV file."""
        return pd.DataFrame(sample_rows(self.outcomes), columns=self._sample_columns())

    def title(self) -> str:
        s = self.settings
        return (
            f"{s.model} ({s.arch}) on {s.dataset} [{s.start}:"
            f"{s.start + self.summary.num_samples}], eps {format_eps(s.eps)}, {s.device}"
        )

    def table(self) -> Table:
        """The rich table that ``certify eval`` prints."""
        return summary_table(self.title(), self.summary)

    def _sample_columns(self) -> list[str]:
        cascade = self.outcomes.decided_by is not None
        outcomes = self.outcomes
        return sample_columns(list(outcomes.margin_lower), cascade, list(outcomes.radius))

    def to_json(self) -> dict[str, Any]:
        s = self.summary
        cascade = {"decided": s.decided} if s.mode == EvalMode.CASCADE else {}
        return self.settings.columns() | {
            "num_samples": s.num_samples,
            "clean_wrong": s.clean_wrong,
            "pgd_attacked": s.pgd_attacked,
            "verified": {m.value: count for m, count in s.verified.items()},
            "best_verified": s.best_verified,
            "clean_error": s.clean_error,
            "pgd_error": s.pgd_error,
            "verified_error": {m.value: e for m, e in s.verified_error.items()},
            "best_verified_error": s.best_verified_error,
            **cascade,
            **({"bab": s.bab} if s.bab else {}),
            "seconds": s.seconds,
            "pgd_checked_verified": s.checked,
            # evaluate raises before a result exists when this does not hold.
            "checked": "every verified image is classified correctly and withstood PGD",
        }

    def write_counterexamples(self, folder: str | Path) -> list[Path]:
        """One ``<index>.pt`` file per counterexample branch and bound confirmed."""
        eps = self.settings.eps
        found = self.outcomes.counterexamples
        return [save_counterexample(Path(folder), found[index], eps) for index in sorted(found)]

    def write_csv(
        self, out: str | Path | None = None, per_sample: str | Path | None = None
    ) -> list[Path]:
        """Append one row per bound method to ``out`` and write one row per image to
        ``per_sample`` (each atomically); return the paths written."""
        out = Path(out) if out is not None else None
        per_sample = Path(per_sample) if per_sample is not None else None
        check_result_files(out, per_sample)
        written = []
        if out is not None:
            append_rows(out, summary_rows(self.settings.columns(), self.summary), EVAL_COLUMNS)
            written.append(out)
        if per_sample is not None:
            write_rows(per_sample, sample_rows(self.outcomes), self._sample_columns())
            written.append(per_sample)
        return written
