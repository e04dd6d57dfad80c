"""Running out of GPU memory while bounding halves the chunk and goes on."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import torch

from certify.bounds.margins import BoundMethod, MarginBounder
from certify.evaluation.config import EvalConfig, EvalMode
from certify.evaluation.images import evaluate_images as evaluate
from model_zoo import create_model
from tests.conftest import REPO_ROOT


def test_out_of_memory_halves_the_chunk_and_gives_the_same_bounds(monkeypatch, caplog) -> None:
    model = create_model("cnn_4layer", 1, 28, 10).eval()
    images = torch.rand(12, 1, 28, 28)
    labels = torch.randint(0, 10, (12,))
    config = EvalConfig(
        methods=(BoundMethod.CROWN,), crown_batch_size=8, mode=EvalMode.EVERY_METHOD
    )
    device = torch.device("cpu")
    reference, _ = evaluate(model, images, labels, 0.01, config, device)

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
        outcomes, _ = evaluate(model, images, labels, 0.01, config, device)
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
    config = EvalConfig(methods=(), batch_size=8)
    reference, _ = evaluate(model, images, labels, 0.05, config, torch.device("cpu"))
    real = evaluation.pgd_attack

    def limited(model, x, *args):
        if len(x) > 3:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model, x, *args)

    monkeypatch.setattr(evaluation, "pgd_attack", limited)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    outcomes, _ = evaluate(model, images, labels, 0.05, config, torch.device("cpu"))
    assert torch.equal(outcomes.pgd_robust, reference.pgd_robust)
    assert torch.equal(outcomes.clean_pred, reference.clean_pred)


_CAPPED = """
import resource, sys, torch
torch.set_num_threads(1)
from certify.bounds.margins import BoundMethod
from certify.core.errors import CertifyError
from certify.evaluation.config import EvalConfig, EvalMode
from certify.evaluation.images import evaluate_images
from certify.evaluation.memory import available_memory
from model_zoo import create_model

torch.manual_seed(0)
model = create_model("cnn_4layer", 1, 28, 10).eval()
images, labels = torch.rand(40, 1, 28, 28), torch.randint(0, 10, (40,))
chunk = None if sys.argv[1] == "auto" else int(sys.argv[1])
config = EvalConfig(methods=(BoundMethod.CROWN,), crown_batch_size=chunk,
                    mode=EvalMode.EVERY_METHOD)
evaluate_images(model, images[:2], labels[:2], 0.05, config, torch.device("cpu"))  # warm up
size = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + int(sys.argv[2]) * 2**20, resource.RLIM_INFINITY))
assert available_memory(torch.device("cpu")) < (int(sys.argv[2]) + 64) * 2**20
try:
    outcomes, _ = evaluate_images(model, images, labels, 0.05, config, torch.device("cpu"))
except (RuntimeError, MemoryError, CertifyError) as exc:
    print("out of memory:", str(exc).splitlines()[0])
    sys.exit(3)
print("bounded", len(outcomes.margin_lower[BoundMethod.CROWN]))
"""


@pytest.mark.slow
def test_crown_chunks_fit_a_memory_cap_that_the_fixed_chunk_does_not(tmp_path) -> None:
    """Under an address-space limit of 300 MiB more than the process holds, CROWN on 32
    images of cnn_4layer (about 18 MiB each) fails, and the chunk chosen from the memory
    at hand does not."""
    script = tmp_path / "capped.py"
    script.write_text(_CAPPED)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))

    def run(chunk: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, str(script), chunk, "300"]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)

    fixed = run("32")
    assert fixed.returncode == 3, fixed.stdout + fixed.stderr[-2000:]
    auto = run("auto")
    assert auto.returncode == 0, auto.stdout + auto.stderr[-2000:]
    assert "bounded 40" in auto.stdout
