"""Shared fixtures: the real data beside the repository and a fixed random seed.

Tests that read real images take the ``shared_data`` fixture: the folder
``../shared/data`` next to the checkout (or ``$CERTIFY_TEST_DATA``), with real MNIST and
CIFAR-10 files; tests of public ONNX models take ``shared_models`` (``../shared/models``).
Where a folder is absent its tests are skipped with the reason, except in CI (``CI``
set), where a missing folder is an error.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CERTIFY_TEST_DATA", REPO_ROOT.parent / "shared" / "data"))
SHARED_MODELS = REPO_ROOT.parent / "shared" / "models"


def _missing(message: str) -> None:
    """Skip a test whose fixture folder is absent, with the reason; fail in CI, which has it."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real MNIST and CIFAR-10 files laid out as torchvision leaves them."""
    if not (SHARED_DATA / "MNIST").is_dir():
        _missing(f"real test data not found at {SHARED_DATA}; set CERTIFY_TEST_DATA")
    return SHARED_DATA


@pytest.fixture(scope="session")
def shared_models() -> Path:
    """The folder of public third-party ONNX models (its README gives their inputs)."""
    if not SHARED_MODELS.is_dir():
        _missing(f"the public ONNX models are not at {SHARED_MODELS}")
    return SHARED_MODELS


@pytest.fixture
def float64() -> Iterator[None]:
    """torch's default dtype float64 for the test (tiny networks compared to float
    tolerance), restored after it."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session", autouse=True)
def _one_thread() -> None:
    # The tests use small tensors, where a second OpenMP thread gains little and, on a
    # busy 2-core machine, spin-waiting threads slow autograd down a hundredfold.
    torch.set_num_threads(1)


class RunsCommandOnLoad:
    """Unpickling this calls os.system, which would create the marker file: the payload of
    a hostile checkpoint, for the tests that it is refused and never runs."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))
