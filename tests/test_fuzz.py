"""A short pass of every fuzz target (:mod:`tests.fuzz_targets`): the loaders let out
only the project's own errors, with one-line messages, on their seeds and on random
mutations of them.

The pass is deterministic (a fixed seed), so a failure names an input that fails every
time; ``crash.trace`` in the assertion message shows where. The long, coverage-guided
runs are ``benchmarks/fuzz.py``'s (their figures are in docs/benchmarks.md).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests import fuzz_targets
from tests.conftest import REPO_ROOT
from tests.fuzz_targets import TARGETS, Target, crash_of, random_inputs

# Mutations per target: thousands of the cheap parsers, a few dozen whole model loads.
COUNTS = {
    "eps": 3000,
    "methods": 2000,
    "lists": 3000,
    "results_csv": 150,
    "seed_config": 400,
    "checkpoint_file": 80,
    "checkpoint_object": 150,
    "onnx_file": 40,
    "onnx_graph": 60,
}
SEED = 20240501


def _pass(name: str) -> int:
    target = TARGETS[name]
    ran = 0
    for data in random_inputs(target, COUNTS[name], SEED):
        crash = crash_of(target, data)
        assert crash is None, f"{name} crashed on {data[:200]!r}: {crash.signature}\n{crash.trace}"
        ran += 1
    return ran


def test_every_target_has_a_short_pass() -> None:
    assert set(COUNTS) == set(TARGETS)


@pytest.mark.parametrize("name", ["eps", "methods", "lists", "results_csv", "seed_config"])
def test_parsers_let_out_only_project_errors(name: str) -> None:
    assert _pass(name) > COUNTS[name]


@pytest.mark.parametrize("name", ["checkpoint_file", "checkpoint_object"])
def test_checkpoint_loaders_let_out_only_project_errors(name: str) -> None:
    assert _pass(name) > COUNTS[name]


@pytest.mark.parametrize("name", ["onnx_file", "onnx_graph"])
def test_onnx_loaders_let_out_only_project_errors(
    name: str, shared_models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the public models seed both targets
    monkeypatch.setenv(fuzz_targets.MODELS_ENV, str(shared_models))
    fuzz_targets._graphs.cache_clear()
    assert _pass(name) > COUNTS[name]


def test_seeds_are_accepted_where_they_are_valid() -> None:
    # A pass over seeds that all fail early would test nothing: the real inputs load.
    for name in ("eps", "lists", "results_csv", "seed_config", "checkpoint_file"):
        target = TARGETS[name]
        valid = [data for data in target.seeds() if _loads(target, data)]
        assert len(valid) >= 3, name


def _loads(target, data: bytes) -> bool:
    try:
        target.run(data)
    except target.allowed:
        return False
    return True


def test_a_crash_is_reported_with_its_input() -> None:
    # The harness itself: an exception that is not the project's is a crash, with where.
    target = Target("boom", lambda data: [][len(data)], lambda: [b"x"])
    crash = crash_of(target, b"abc")
    assert crash is not None and crash.signature.startswith("IndexError at ")
    assert "test_fuzz.py" in crash.signature


@pytest.mark.slow  # starts a process that imports torch
def test_driver_runs_a_target_and_prints_its_counts(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "benchmarks/fuzz.py", "eps", "--seconds", "1", "--engine", "random",
         "--work", str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    line = next(li for li in run.stdout.splitlines() if li.startswith("eps "))
    inputs, _, _, crashed, distinct = (float(v) for v in line.split()[1:])
    assert inputs > 100 and crashed == 0 and distinct == 0
