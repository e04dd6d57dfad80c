"""The cascade: each image decided by the cheapest stage, the same verified set as every
method on every image, a self-check of verified images, and PGD that drops images."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import certify
from certify.bounds.margins import BoundMethod, MarginBounder
from certify.core.errors import SoundnessError
from certify.data import load_split
from certify.evaluation.attack import PGDConfig, pgd_attack
from certify.evaluation.config import DEFAULT_PGD, EvalConfig, EvalMode, attack_config
from certify.evaluation.images import evaluate_images
from certify.evaluation.outcomes import check_consistency
from certify.pipeline.embedded import EMBEDDED_DATA, EMBEDDED_MODEL
from model_zoo import load_model

METHODS = "ibp,crown-ibp,crown"


def _both_modes(model, dataset=None, eps=None, *, data_dir=None, num_samples, pgd_steps):
    cascade, every = (
        certify.evaluate(
            model,
            dataset,
            eps,
            EvalConfig(
                methods=METHODS,
                mode=mode,
                num_samples=num_samples,
                attack=attack_config(mode, pgd_steps),
            ),
            data_dir=data_dir,
        )  # fmt: skip
        for mode in (EvalMode.CASCADE, EvalMode.EVERY_METHOD)
    )
    return cascade, every


def _assert_same_verdicts(cascade, every) -> None:
    c, e = cascade.samples, every.samples
    assert (c["verified_any"] == e["verified_any"]).all()
    assert cascade.summary.best_verified_error == every.summary.best_verified_error
    # Each verified image was decided by the first method that verifies it.
    for row, (_, image) in zip(c.itertuples(), e.iterrows(), strict=True):
        if row.verified_any:
            first = next(m.value for m in BoundMethod if image.get(f"verified_{m.value}") == 1)
            assert row.decided_by == first
    # Where the cascade ran a method, its bound is the one every-method gives the image.
    for method in METHODS.split(","):
        ran = c[f"margin_lower_{method}"].notna()
        diff = (c[f"margin_lower_{method}"][ran] - e[f"margin_lower_{method}"][ran]).abs()
        assert diff.max() <= 1e-4 * (1 + e[f"margin_lower_{method}"].abs().max())


@pytest.mark.slow
def test_cascade_verifies_what_every_method_verifies_on_the_bundled_model() -> None:
    cascade, every = _both_modes(EMBEDDED_MODEL, num_samples=120, pgd_steps=20)
    _assert_same_verdicts(cascade, every)
    s = cascade.summary
    assert s.mode == "cascade" and sum(s.decided.values()) <= 120
    assert s.decided["clean"] == round(s.clean_error * 120)
    # Cheaper stages decided most; the union is what verified (best) counts.
    assert s.verified_error[BoundMethod.CROWN] == pytest.approx(s.best_verified_error)


@pytest.mark.parametrize(
    "name",
    # The deeper model (about 2.5 s) in the full suite only.
    ["mnistfc_256x4.onnx", pytest.param("mnistfc_256x6.onnx", marks=pytest.mark.slow)],
)
def test_cascade_verifies_what_every_method_verifies_on_public_models(
    name, shared_data, shared_models
) -> None:
    path = shared_models / name
    cascade, every = _both_modes(
        path, "mnist", 0.02, data_dir=shared_data, num_samples=40, pgd_steps=20
    )
    _assert_same_verdicts(cascade, every)
    assert 0 < cascade.summary.best_verified_error < 1


class _Unsound:
    """A bounder that claims every image verified: the self-check must catch it."""

    def lower_bounds(self, images, labels, eps, method):
        return torch.ones(len(images), 9)


def test_the_self_check_catches_a_verified_image_that_pgd_attacks(monkeypatch) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 10)).eval()
    images = torch.rand(20, 1, 4, 4)
    labels = model(images).argmax(1)
    monkeypatch.setattr(MarginBounder, "__init__", lambda self, *a, **k: None)
    monkeypatch.setattr(MarginBounder, "lower_bounds", _Unsound.lower_bounds)
    config = EvalConfig(methods=(BoundMethod.IBP,), attack=PGDConfig(steps=10))
    outcomes, seconds = evaluate_images(model, images, labels, 0.5, config, torch.device("cpu"))
    assert outcomes.pgd_run.sum() >= 8 and "check" in seconds  # the first chunk at least
    with pytest.raises(SoundnessError, match="is verified by ibp but PGD attacked it"):
        check_consistency(outcomes)


def test_check_all_attacks_every_verified_image() -> None:
    model = load_model(EMBEDDED_MODEL).model
    data = load_split("mnist", EMBEDDED_DATA, "test", 0, 60)
    base = {"methods": (BoundMethod.IBP,), "attack": PGDConfig(steps=5)}
    for check_all in (False, True):
        config = EvalConfig(**base, check_all=check_all, batch_size=16)
        outcomes, _ = evaluate_images(
            model, data.images, data.labels, 0.4, config, torch.device("cpu")
        )
        verified = outcomes.verified_any()
        checked = (verified & outcomes.pgd_run).sum().item()
        assert checked == (verified.sum().item() if check_all else min(8, verified.sum().item()))
        # Images decided before PGD were never attacked, unless checked.
        assert not (outcomes.pgd_run & ~outcomes.clean_correct).any()
        check_consistency(outcomes)


class _CountingModel(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(len(x))
        return self.model(x)


def test_pgd_drops_attacked_images_from_its_batch() -> None:
    # Two classes by the sign of the mean pixel minus 0.5: an image at mean 0.52 falls at
    # eps 0.05 within a few steps, one at 0.9 never does.
    linear = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    with torch.no_grad():
        linear[1].weight.copy_(torch.stack([torch.full((16,), 1 / 16), torch.full((16,), -1 / 16)]))
        linear[1].bias.copy_(torch.tensor([-0.5, 0.5]))
    model = _CountingModel(linear.eval())
    images = torch.stack([torch.full((1, 4, 4), 0.52), torch.full((1, 4, 4), 0.9)])
    robust, _ = pgd_attack(
        model, images, torch.zeros(2, dtype=torch.long), 0.05, PGDConfig(steps=30)
    )
    assert robust.tolist() == [False, True]
    assert model.batches[1] == 2 and model.batches[-1] == 1  # the attacked image left
    assert model.batches.count(2) < 30


def test_the_cascade_attack_finds_every_attack_of_the_single_run_and_more() -> None:
    model = load_model(EMBEDDED_MODEL).model
    data = load_split("mnist", EMBEDDED_DATA, "test", 0, 200)
    weak, _ = pgd_attack(model, data.images, data.labels, 0.4, PGDConfig(steps=20))
    strong_config = PGDConfig(steps=20, restarts=2, losses=DEFAULT_PGD[EvalMode.CASCADE].losses)
    strong, _ = pgd_attack(model, data.images, data.labels, 0.4, strong_config)
    assert not (strong & ~weak).any()  # its first run is the single run
    assert (~strong).sum() > (~weak).sum()
