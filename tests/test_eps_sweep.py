"""Several radii in one run (``--eps a,b,...``, ``certify.evaluate_sweep``) and certified
radii (``--radius``): the sweep gives the verdicts of separate runs with less work, and
each radius agrees with a bisection written here on the bounder alone."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

import certify
from certify.bounds.margins import BoundMethod, MarginBounder
from certify.cli import cli
from certify.data import load_split
from certify.evaluation import images as evaluation
from certify.evaluation.attack import PGDConfig
from certify.pipeline.embedded import EMBEDDED_DATA, EMBEDDED_MODEL
from certify.pipeline.sweep import middle_first
from model_zoo import load_model

RADII = [0.1, 0.3, 0.4, 0.45]
CONFIG = certify.EvalConfig(methods="ibp,crown", num_samples=80, attack=PGDConfig(steps=10))


def _counting(monkeypatch) -> dict[str, int]:
    """Counts the images PGD (not the self-check) and the bounds were run on."""
    counts = {"pgd": 0, "bounds": 0}
    attack, bound = evaluation._ImageRun._attack, evaluation._ImageRun._bound

    def counted_attack(self, which, stage):
        if stage == "pgd":
            counts["pgd"] += len(which)
        return attack(self, which, stage)

    def counted_bound(self, which, method, *args):
        counts["bounds"] += len(which)
        return bound(self, which, method, *args)

    monkeypatch.setattr(evaluation._ImageRun, "_attack", counted_attack)
    monkeypatch.setattr(evaluation._ImageRun, "_bound", counted_bound)
    return counts


@pytest.mark.slow  # about 3 s: the fast subset keeps room under 2 minutes
def test_a_sweep_gives_the_verdicts_of_separate_runs_with_less_work(monkeypatch) -> None:
    counts = _counting(monkeypatch)
    swept = certify.evaluate_sweep(None, "mnist", RADII, CONFIG)
    sweep_work = dict(counts)
    counts.update(pgd=0, bounds=0)
    separate = [certify.evaluate(None, "mnist", eps, CONFIG) for eps in RADII]
    assert [r.settings.eps for r in swept] == RADII
    for mine, theirs in zip(swept, separate, strict=True):
        a, b = mine.samples, theirs.samples
        assert (a["verified_any"] == b["verified_any"]).all(), mine.settings.eps
        assert mine.summary.verified == theirs.summary.verified
        verified = a["verified_any"] == 1
        assert (a["decided_by"][verified] == b["decided_by"][verified]).all()
        # An image attacked at a smaller radius counts as attacked here too: never fewer.
        assert not ((a["pgd_robust"] == 1) & (b["pgd_robust"] == 0)).any()
        assert not ((a["verified_any"] == 1) & (a["pgd_robust"] == 0)).any()
    assert swept[-1].summary.pgd_attacked >= separate[-1].summary.pgd_attacked
    assert sweep_work["pgd"] < counts["pgd"] and sweep_work["bounds"] < counts["bounds"], (
        sweep_work,
        counts,
    )


def test_middle_first_takes_each_range_by_its_middle() -> None:
    # By hand: the middle of [0, n), then the middles of the lower and the upper part.
    assert middle_first(1) == [0]
    assert middle_first(4) == [2, 1, 3, 0]
    assert middle_first(5) == [2, 1, 4, 0, 3]
    assert sorted(middle_first(11)) == list(range(11))


def test_the_cli_writes_one_row_set_and_one_per_image_file_per_eps(tmp_path: Path) -> None:
    out, samples = tmp_path / "r.csv", tmp_path / "s.csv"
    args = ["eval", "--eps", "0.1,0.3", "--num-samples", "20", "--pgd-steps", "5",
            "--methods", "ibp", "--out", str(out), "--per-sample", str(samples)]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(out)
    assert list(rows["eps"].astype(str)) == ["0.1", "0.3"]
    assert (tmp_path / "s_eps0.1.csv").is_file() and (tmp_path / "s_eps0.3.csv").is_file()
    refused = CliRunner().invoke(cli, [*args, "--resume"])
    assert refused.exit_code == 2 and "--resume" in refused.output
    assert len(refused.output.strip().splitlines()) == 1


def _bisect(bounder, image, label, method, eps, tolerance) -> float:
    """The largest radius in [0, eps] ``method`` verifies, bisected one scalar eps at a
    time."""

    def verified(radius: float) -> bool:
        return bool(bounder.lower_bounds(image, label, radius, method).min() > 0)

    if verified(eps):
        return eps
    lo, hi = 0.0, eps
    while hi - lo > tolerance:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if verified(mid) else (lo, mid)
    return lo


@pytest.mark.slow  # about 4 s with both methods
@pytest.mark.parametrize("method", [BoundMethod.IBP, BoundMethod.CROWN])
def test_radius_agrees_with_a_bisection_by_hand(method) -> None:
    tolerance, eps = 0.01, 0.45
    config = certify.EvalConfig(methods=(method,), num_samples=6, radius_tolerance=tolerance)
    result = certify.evaluate(None, "mnist", eps, config)
    radius = result.outcomes.radius[method]
    model = load_model(EMBEDDED_MODEL).model.eval()
    data = load_split("mnist", EMBEDDED_DATA, "test", 0, 6)
    bounder = MarginBounder(model, (1, 28, 28), torch.device("cpu"))
    for i in range(6):
        image, label = data.images[i : i + 1], data.labels[i : i + 1]
        if not result.outcomes.clean_correct[i]:
            assert radius[i] == 0
            continue
        by_hand = _bisect(bounder, image, label, method, eps, tolerance)
        assert abs(float(radius[i]) - by_hand) <= tolerance, (i, float(radius[i]), by_hand)
        # The radius reported is one the method verifies.
        assert bounder.lower_bounds(image, label, float(radius[i]), method).min() > 0
    assert f"radius_{method.value}" in result.samples.columns


def test_radius_tolerance_errors_name_their_flags() -> None:
    for args, flag in ((["--radius", "--radius-tol", "0"], "--radius-tol"),
                       (["--radius-tol", "0.01"], "--radius-tol")):  # fmt: skip
        result = CliRunner().invoke(cli, ["eval", *args, "--num-samples", "2"])
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1, result.output
        assert f"Invalid value for {flag}" in lines[0], lines[0]
