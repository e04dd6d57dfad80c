"""Shared fixtures: the real data in ../shared/data and a fixed random seed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CERTIFY_TEST_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real MNIST and CIFAR-10 files laid out as torchvision leaves them."""
    if not (SHARED_DATA / "MNIST").is_dir():
        pytest.fail(f"real test data not found at {SHARED_DATA}; set CERTIFY_TEST_DATA")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session", autouse=True)
def _one_thread() -> None:
    # The tests use small tensors, where a second OpenMP thread gains little and, on a
    # busy 2-core machine, spin-waiting threads slow autograd down a hundredfold.
    torch.set_num_threads(1)
