"""``bab`` in evaluation: the CLI's table, CSV, JSON and counterexample files, a public
instance with a known verdict, reproducible verdicts at a domain limit, and CROWN's
intermediate bounds intersected with IBP's."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from click.testing import CliRunner

from certify.bounds.bab import BabLimits, BabOptions, BabVerdict, branch_and_bound
from certify.bounds.bab.beta_crown import SplitBounder
from certify.bounds.lirpa import EVALUATION_OPTIONS, TRAINING_OPTIONS, bounded_module, perturbed
from certify.bounds.margins import BoundMethod, MarginBounder, margin_matrix
from certify.cli import cli
from certify.data import load_split
from certify.pipeline.embedded import EMBEDDED_DIR, EMBEDDED_MODEL
from model_zoo.checkpoint import load_checkpoint
from tests.test_bab_exact import _dense, _near_the_boundary


def _bundled():
    return load_checkpoint(EMBEDDED_MODEL).model.eval()


@pytest.mark.slow
def test_bab_attacks_what_pgd_missed_and_saves_it(tmp_path) -> None:
    """At eps 0.41 (just past the bundled model's training eps) PGD misses a misclassified
    point of image 24 that bab finds; the saved file reloads and is misclassified."""
    out, samples, folder = tmp_path / "r.csv", tmp_path / "s.csv", tmp_path / "cex"
    args = ["eval", "--start", "20", "--num-samples", "8", "--eps", "0.41"]
    args += ["--methods", "crown,bab", "--timeout", "30", "--counterexamples", str(folder)]
    result = CliRunner().invoke(
        cli, [*args, "--out", str(out), "--per-sample", str(samples), "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["bab"]["attacked"] >= 1
    assert report["bab_timeout"] == 30.0 and report["bab_branching"] == "fsb"
    rows = {r["method"]: r for r in csv.DictReader(out.open())}
    assert list(rows) == ["crown", "alpha-crown", "bab"]  # bab brings alpha-crown along
    assert float(rows["bab"]["bab_timeout"]) == 30
    assert int(rows["bab"]["bab_attacked"]) == report["bab"]["attacked"]
    assert rows["crown"]["bab_attacked"] == ""  # counts on the bab row only
    per_image = {int(r["index"]): r for r in csv.DictReader(samples.open())}
    attacked = [i for i, r in per_image.items() if r["bab_verdict"] == "attacked"]
    assert sorted(int(p.stem) for p in folder.glob("*.pt")) == sorted(attacked)
    model = _bundled().double()
    for index in attacked:
        assert per_image[index]["decided_by"] == "bab" and per_image[index]["pgd_robust"] == "0"
        saved = torch.load(folder / f"{index}.pt", weights_only=True)
        image, point = saved["image"].double(), saved["counterexample"].double()
        assert saved["index"] == index and saved["eps"] == 0.41
        assert (point - image).abs().max() <= 0.41 and point.min() >= 0 and point.max() <= 1
        assert int(model(point[None]).argmax()) != saved["label"]


@pytest.mark.slow  # about 4 s; the full suite runs it
def test_a_domain_limit_gives_the_same_verdict_with_any_batch() -> None:
    model = _dense(4, 4, 24, 2).eval()
    image, _ = _near_the_boundary(model, (4,), torch.Generator().manual_seed(3))
    label = int(model(image[None]).argmax())
    spec = margin_matrix(torch.tensor([label]), 3)
    bounder = SplitBounder(bounded_module(model, (4,), torch.device("cpu")))
    runs = []
    for batch in (2, 6, 64):
        outcome = branch_and_bound(
            bounder, image[None], 0.9 * _radius_guess(model, image, label), spec,
            lambda points, r: None, limits=BabLimits(timeout=600, max_domains=40), batch=batch,
        )  # fmt: skip
        runs.append(outcome)
    assert {o.verdict for o in runs} == {runs[0].verdict}
    assert {o.domains for o in runs} == {runs[0].domains}
    for o in runs[1:]:
        torch.testing.assert_close(o.margins, runs[0].margins, rtol=0, atol=1e-4)
    assert runs[0].domains > 1  # the search went past the root


def _radius_guess(model, image, label) -> float:
    """A radius at which the root bound alone does not decide (found by bisection on
    CROWN's bound): the search has to branch."""
    module = bounded_module(model, tuple(image.shape), torch.device("cpu"))
    spec = margin_matrix(torch.tensor([label]), 3)
    lo, hi = 0.0, 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        lb, _ = module.compute_bounds(x=(perturbed(image[None], mid),), C=spec, method="CROWN")
        lo, hi = (mid, hi) if bool((lb > 0).all()) else (lo, mid)
    return 1.3 * hi


@pytest.mark.slow  # about 10 s: the full suite runs it, the fast subset stays under 2 minutes
def test_crown_with_ibp_intersection_is_tightest() -> None:
    """On the bundled IBP-trained model, CROWN now verifies at least as many images as
    auto_LiRPA's default (IBP bounds kept for neurons IBP finds stable), and no margin is
    looser than CROWN with every intermediate bound by CROWN alone (certify's before)."""
    model = _bundled()
    data = load_split("mnist", EMBEDDED_DIR / "data", "test", 0, 100)
    spec = margin_matrix(data.labels, 10)
    bounder = MarginBounder(model, (1, 28, 28), torch.device("cpu"))
    ours = bounder.lower_bounds(data.images, data.labels, 0.4, BoundMethod.CROWN)
    twin = bounder.twin
    results = {}
    for name, options in (("default", TRAINING_OPTIONS), ("crown only", EVALUATION_OPTIONS)):
        module = bounded_module(twin, (1, 28, 28), torch.device("cpu"), options)
        with torch.no_grad():
            lb, _ = module.compute_bounds(
                x=(perturbed(data.images, 0.4),), C=spec, method="CROWN", bound_upper=False
            )
        results[name] = lb
    verified = (ours.min(dim=1).values > 0).sum()
    assert verified >= (results["default"].min(dim=1).values > 0).sum()
    assert verified > (results["crown only"].min(dim=1).values > 0).sum()
    assert (ours >= results["crown only"] - 1e-4).all()


@pytest.mark.slow
def test_a_public_instance_is_verified_by_bab(shared_models, shared_data) -> None:
    """VNN-COMP 2021 mnistfc_256x4, image 1869 at eps 0.03: robust by the competition's
    sound tools; alpha-CROWN leaves it open and bab proves it (about 40 s here)."""
    import certify

    config = certify.EvalConfig(
        methods="crown,bab", start=1869, num_samples=1, bab=BabOptions(BabLimits(timeout=240))
    )
    result = certify.evaluate(
        shared_models / "mnistfc_256x4.onnx", "mnist", "0.03", config, data_dir=shared_data
    )
    assert result.outcomes.bab_verdict == [BabVerdict.VERIFIED.value]
    assert result.summary.verified[BoundMethod.BAB] == 1
    assert result.outcomes.decided_by == ["bab"]
