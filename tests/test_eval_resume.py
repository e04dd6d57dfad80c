"""Resumable evaluation: a run killed with SIGKILL in the middle, resumed with
``--resume``, gives the table, CSV and per-image file of an uninterrupted run; a journal
of other settings is refused in one line."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from certify.cli import cli
from certify.pipeline.journal import journal_path

# bab on images where it has work (eps just past the bundled model's training eps), every
# verified image attacked as a check so that nothing depends on timing.
ARGS = ["--start", "16", "--num-samples", "24", "--eps", "0.41", "--methods", "crown,bab",
        "--timeout", "20", "--check-all", "--pgd-steps", "20"]  # fmt: skip
_DROP = {"seconds", "date", "bab_seconds"}


def _rows(path: Path) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if k not in _DROP} for r in csv.DictReader(path.open())]


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_uninterrupted_result(tmp_path) -> None:
    whole = CliRunner().invoke(
        cli, ["eval", *ARGS, "--out", str(tmp_path / "a.csv"), "--per-sample",
              str(tmp_path / "a_samples.csv")],
    )  # fmt: skip
    assert whole.exit_code == 0, whole.output
    out, samples = tmp_path / "b.csv", tmp_path / "b_samples.csv"
    command = [sys.executable, "-m", "certify", "eval", *ARGS, "--out", str(out),
               "--per-sample", str(samples)]  # fmt: skip
    journal = journal_path(out)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Kill it once the journal holds a decided slice, before the run ends.
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and process.poll() is None:
        if journal.exists() and len(journal.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not out.exists() and not samples.exists()
    held = len(journal.read_text().splitlines()) - 1
    assert 1 <= held < 3  # some slices decided, not all (three slices of eight)
    resumed = CliRunner().invoke(
        cli, ["eval", *ARGS, "--out", str(out), "--per-sample", str(samples), "--resume"]
    )
    assert resumed.exit_code == 0, resumed.output
    assert _rows(out) == _rows(tmp_path / "a.csv")
    assert _rows(samples) == _rows(tmp_path / "a_samples.csv")
    assert not journal.exists()  # everything it held is in the outputs


def test_a_journal_of_other_settings_is_refused(tmp_path) -> None:
    out = tmp_path / "r.csv"
    journal_path(out).write_text('{"settings": {"eps": 0.3}}\n')
    result = CliRunner().invoke(
        cli, ["eval", "--num-samples", "4", "--methods", "ibp", "--out", str(out), "--resume"]
    )
    assert result.exit_code == 2
    assert "other settings" in result.output and "--resume" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_resume_needs_an_output_beside_which_the_journal_lies() -> None:
    result = CliRunner().invoke(cli, ["eval", "--num-samples", "4", "--resume"])
    assert result.exit_code == 2 and "--out or --per-sample" in result.output
