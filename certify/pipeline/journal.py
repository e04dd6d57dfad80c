"""The journal of a long evaluation: every slice of images is appended to it as soon as
it is decided, so that a resumed ``certify eval`` skips what a killed run finished.

The file is JSON lines. The first line holds the settings that decide the results (the
model file, data set, range, eps, methods, attack, alpha-CROWN and bab options, seed);
each later line holds one slice: its range, the seconds of its stages and, per image,
everything the per-image file and the summary are made of. A slice is written in one
append that is flushed to disk, so a run killed while writing leaves at most a torn last
line, which the reader ignores. Every image is evaluated the same way in any slice (PGD's
starts follow the image's index; the bounds are each image's own), so a resumed run
gives the outcomes of an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch

from certify.bounds.methods import BoundMethod
from certify.core.errors import UsageError
from certify.evaluation.counterexamples import Counterexample
from certify.evaluation.outcomes import SampleOutcomes

JOURNAL_SUFFIX = ".journal.jsonl"


def journal_path(output: Path) -> Path:
    """The journal beside an output file: ``results.csv`` -> ``results.csv.journal.jsonl``."""
    return output.with_name(output.name + JOURNAL_SUFFIX)


class Journal:
    """Appends decided slices; on resume, gives back those of an earlier run."""

    def __init__(self, path: Path, settings: dict[str, Any], resume: bool) -> None:
        self.path = path
        self.done: list[tuple[SampleOutcomes, dict[str, float]]] = []
        if resume and path.exists():
            self.done = _read(path, settings)
        else:
            if resume:
                raise UsageError(
                    f"no journal {path} to resume from: run without it", param="resume"
                )
            _write_line(path, {"settings": settings}, mode="w")

    def covered(self) -> set[int]:
        """Data set indices of the images the journal holds."""
        return {int(i) for outcomes, _ in self.done for i in outcomes.indices.tolist()}

    def append(self, outcomes: SampleOutcomes, seconds: dict[str, float]) -> None:
        rows = [_image_row(outcomes, i) for i in range(len(outcomes.labels))]
        _write_line(self.path, {"seconds": seconds, "cascade": outcomes.decided_by is not None,
                                "images": rows})  # fmt: skip


def _write_line(path: Path, record: dict[str, Any], mode: str = "a") -> None:
    line = json.dumps(record, separators=(",", ":")) + "\n"
    with open(path, mode, encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def _read(path: Path, settings: dict[str, Any]) -> list[tuple[SampleOutcomes, dict[str, float]]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    try:
        stored = json.loads(lines[0])["settings"]
    except (IndexError, KeyError, TypeError, json.JSONDecodeError):
        raise UsageError(
            f"{path} is not a journal of certify eval: delete it", param="resume"
        ) from None
    differ = sorted(k for k in set(stored) | set(settings) if stored.get(k) != settings.get(k))
    if differ:
        raise UsageError(
            f"the journal {path} was written with other settings ({', '.join(differ)}): "
            "resume with the same command, or start afresh without `resume`",
            param="resume",
        )
    done = []
    for line in lines[1:]:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            break  # the torn last line of a killed run
        done.append((_outcomes(record["images"], record["cascade"]), record["seconds"]))
    return done


def _number(value: float) -> float | None:
    return None if math.isnan(value) else value


def _image_row(outcomes: SampleOutcomes, i: int) -> dict[str, Any]:
    index = int(outcomes.indices[i])
    row: dict[str, Any] = {
        "index": index,
        "label": int(outcomes.labels[i]),
        "clean_pred": int(outcomes.clean_pred[i]),
        "pgd_robust": bool(outcomes.pgd_robust[i]),
        "margin_lower": {m.value: _number(float(v[i])) for m, v in outcomes.margin_lower.items()},
    }
    if outcomes.pgd_run is not None:
        row["pgd_run"] = bool(outcomes.pgd_run[i])
    if outcomes.decided_by is not None:
        row["decided_by"] = outcomes.decided_by[i]
    if outcomes.radius:
        row["radius"] = {m.value: float(v[i]) for m, v in outcomes.radius.items()}
    if outcomes.bab_verdict is not None:
        row["bab_verdict"] = outcomes.bab_verdict[i]
        row["bab_seconds"] = _number(float(outcomes.bab_seconds[i]))
    found = outcomes.counterexamples.get(index)
    if found is not None:
        row["counterexample"] = {
            "image": found.image.tolist(), "point": found.point.tolist(), "label": found.label,
        }  # fmt: skip
    return row


def _outcomes(rows: list[dict[str, Any]], cascade: bool) -> SampleOutcomes:
    def nan(value: float | None) -> float:
        return math.nan if value is None else value

    methods = list(rows[0]["margin_lower"]) if rows else []
    outcomes = SampleOutcomes(
        indices=torch.tensor([r["index"] for r in rows], dtype=torch.long),
        labels=torch.tensor([r["label"] for r in rows], dtype=torch.long),
        clean_pred=torch.tensor([r["clean_pred"] for r in rows], dtype=torch.long),
        pgd_robust=torch.tensor([r["pgd_robust"] for r in rows], dtype=torch.bool),
        margin_lower={
            BoundMethod(m): torch.tensor([nan(r["margin_lower"][m]) for r in rows]) for m in methods
        },
        pgd_run=torch.tensor([r["pgd_run"] for r in rows], dtype=torch.bool) if cascade else None,
        decided_by=[r["decided_by"] for r in rows] if cascade else None,
    )
    if rows and "radius" in rows[0]:
        outcomes.radius = {
            BoundMethod(m): torch.tensor([r["radius"][m] for r in rows]) for m in rows[0]["radius"]
        }
    if rows and "bab_verdict" in rows[0]:
        outcomes.bab_verdict = [r["bab_verdict"] for r in rows]
        outcomes.bab_seconds = torch.tensor([nan(r["bab_seconds"]) for r in rows])
    for r in rows:
        if "counterexample" in r:
            c = r["counterexample"]
            outcomes.counterexamples[r["index"]] = Counterexample(
                r["index"], torch.tensor(c["image"]), torch.tensor(c["point"]), c["label"]
            )
    return outcomes
