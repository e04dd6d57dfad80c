"""The rows of an evaluation's CSV files: one row per (model, data set, eps, method),
appended to a results file, and one row per image in a per-image file.

A results row carries counts (``num_samples``, ``clean_wrong``, ``pgd_attacked``,
``verified``) beside the errors they give, so that rows of shards or runs add up
exactly; ``run`` is the run folder of ``certify train`` (empty for ``certify eval``).

The files are written by :mod:`certify.core.csv_files`: atomically, and a results file
is appended to only when its columns are ours. :func:`check_result_files` makes sure,
before an evaluation starts, that both files can be written.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from certify.bounds.methods import BoundMethod
from certify.core.csv_files import check_appendable
from certify.core.errors import UsageError
from certify.evaluation.outcomes import EvalSummary, SampleOutcomes

EVAL_COLUMNS = (
    "model",
    "run",
    "arch",
    "dataset",
    "eps",
    "eps_value",
    "method",
    "mode",
    "num_samples",
    "start",
    "clean_wrong",
    "pgd_attacked",
    "verified",
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
    # Branch and bound's settings and verdicts, on its row only.
    "bab_timeout",
    "bab_max_domains",
    "bab_branching",
    "bab_attacked",
    "bab_timed_out",
    "bab_domain_limit",
)


def summary_rows(meta: Mapping[str, Any], summary: EvalSummary) -> list[dict[str, Any]]:
    """One row per bound method; ``meta`` carries the model, data and run columns.

    The counts come with the errors; each error is its count over ``num_samples``,
    written in the shortest form that reads back as the same number."""
    rows = []
    errors = summary.verified_error
    for method, verified in summary.verified.items():
        rows.append(
            dict(meta)
            | {
                "method": method.value,
                "num_samples": summary.num_samples,
                "clean_wrong": summary.clean_wrong,
                "pgd_attacked": summary.pgd_attacked,
                "verified": verified,
                "clean_error": repr(summary.clean_error),
                "pgd_error": repr(summary.pgd_error),
                "verified_error": repr(errors[method]),
                "seconds": summary.seconds.get(method.value, 0.0),
            }
            | (_bab_cells(meta, summary) if method is BoundMethod.BAB else {})
        )
    return rows


def _bab_cells(meta: Mapping[str, Any], summary: EvalSummary) -> dict[str, Any]:
    return {
        "bab_timeout": meta.get("bab_timeout", ""),
        "bab_max_domains": meta.get("bab_max_domains", ""),
        "bab_branching": meta.get("bab_branching", ""),
        "bab_attacked": summary.bab.get("attacked", 0),
        "bab_timed_out": summary.bab.get("timeout", 0),
        "bab_domain_limit": summary.bab.get("domain-limit", 0),
    }


def sample_columns(
    methods: Sequence[BoundMethod],
    cascade: bool = False,
    radius_methods: Sequence[BoundMethod] = (),
) -> list[str]:
    """The per-image columns; a cascade's say also where PGD ran and what decided, and
    ``radius_<method>`` holds the certified radius where radii were asked for."""
    cols = ["index", "label", "clean_pred", "clean_correct", "pgd_robust"]
    for m in methods:
        cols += [f"verified_{m.value}", f"margin_lower_{m.value}"]
    bab = ["bab_verdict", "bab_seconds"] if BoundMethod.BAB in methods else []
    radius = [f"radius_{m.value}" for m in radius_methods]
    cascade_cols = ["pgd_run", "decided_by"] if cascade else []
    return cols + ["verified_any"] + cascade_cols + bab + radius


def sample_rows(outcomes: SampleOutcomes) -> list[dict[str, Any]]:
    """One row per image, with the smallest margin lower bound of each method (empty
    where a cascade did not run the method)."""
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
    if outcomes.decided_by is not None:
        columns["pgd_run"] = outcomes.pgd_ran.int().tolist()
        columns["decided_by"] = [d or "open" for d in outcomes.decided_by]
    if BoundMethod.BAB in outcomes.margin_lower:
        verdicts = outcomes.bab_verdict or [""] * len(outcomes.labels)
        columns["bab_verdict"] = verdicts
        seconds = outcomes.bab_seconds.tolist() if outcomes.bab_seconds is not None else []
        columns["bab_seconds"] = [s if v else "" for s, v in zip(seconds, verdicts, strict=True)]
    for m, radius in outcomes.radius.items():
        columns[f"radius_{m.value}"] = radius.tolist()
    return [
        dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)
    ]


def check_result_files(out: Path | None, per_sample: Path | None) -> None:
    """Fail before any work if a results file (``out``) or a per-image file could not be
    written; a results file must have our columns."""
    if out and per_sample and out.resolve() == per_sample.resolve():
        raise UsageError(
            "`out` and `per_sample` name the same file; give two files", param="per_sample"
        )
    for path, param in ((out, "out"), (per_sample, "per_sample")):
        if path is None:
            continue
        folder = path.parent
        if not folder.is_dir():
            raise UsageError(f"cannot write {path}: folder {folder} does not exist", param=param)
        if not _writable(folder) or (path.exists() and not os.access(path, os.W_OK)):
            raise UsageError(
                f"cannot write {path}: the folder is not writable; choose another", param=param
            )
    if out is not None:
        check_appendable(out, EVAL_COLUMNS, param="out")


def _writable(folder: Path) -> bool:
    """Try it: os.access says yes for root on read-only file systems such as /proc."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False
