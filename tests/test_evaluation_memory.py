"""Running out of GPU memory while bounding halves the chunk and goes on."""

from __future__ import annotations

import logging

import torch

from certify.bounds.margins import BoundMethod, MarginBounder
from certify.evaluation.images import EvalConfig, EvalMode
from certify.evaluation.images import evaluate_images as evaluate
from model_zoo import create_model


def test_out_of_memory_halves_the_chunk_and_gives_the_same_bounds(monkeypatch, caplog) -> None:
    model = create_model("cnn_4layer", 1, 28, 10).eval()
    images = torch.rand(12, 1, 28, 28)
    labels = torch.randint(0, 10, (12,))
    config = EvalConfig(
        eps=0.01, methods=(BoundMethod.CROWN,), crown_batch_size=8, mode=EvalMode.EVERY_METHOD
    )
    device = torch.device("cpu")
    reference, _ = evaluate(model, images, labels, config, device)

    real = MarginBounder.lower_bounds
    sizes: list[int] = []

    def limited(self, x, y, eps, method):
        sizes.append(len(x))
        if len(x) > 3:  # pretend that more than 3 images do not fit
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(self, x, y, eps, method)

    monkeypatch.setattr(MarginBounder, "lower_bounds", limited)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    with caplog.at_level(logging.WARNING):
        outcomes, _ = evaluate(model, images, labels, config, device)
    assert sizes[:3] == [8, 4, 2]
    assert all(n <= 2 for n in sizes[2:])
    assert "crown ran out of GPU memory; going on with 4 images at a time" in caplog.text
    torch.testing.assert_close(
        outcomes.margin_lower[BoundMethod.CROWN], reference.margin_lower[BoundMethod.CROWN]
    )


def test_out_of_memory_in_pgd_halves_the_batch_with_the_same_outcomes(monkeypatch) -> None:
    import certify.evaluation.images as evaluation

    model = create_model("cnn_4layer", 1, 28, 10).eval()
    images = torch.rand(10, 1, 28, 28)
    labels = torch.randint(0, 10, (10,))
    config = EvalConfig(eps=0.05, methods=(), batch_size=8)
    reference, _ = evaluate(model, images, labels, config, torch.device("cpu"))
    real = evaluation.pgd_attack

    def limited(model, x, *args):
        if len(x) > 3:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model, x, *args)

    monkeypatch.setattr(evaluation, "pgd_attack", limited)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    outcomes, _ = evaluate(model, images, labels, config, torch.device("cpu"))
    assert torch.equal(outcomes.pgd_robust, reference.pgd_robust)
    assert torch.equal(outcomes.clean_pred, reference.clean_pred)
