"""Opening a downloaded checkpoint must never run code from it."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from click.testing import CliRunner

from certify.cli import cli
from certify.core.errors import CheckpointError
from model_zoo.checkpoint import load_checkpoint


class _Payload:
    """Unpickling this calls os.system, which would create the marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("container", ["zip", "legacy"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, container: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = {"state_dict": {"0.weight": torch.zeros(2)}, "x": _Payload(str(marker))}
    if container == "zip":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=2)
    assert not marker.exists()  # saving it ran nothing
    with pytest.raises(CheckpointError):
        load_checkpoint(path, arch="cnn_4layer", dataset="mnist")
    result = CliRunner().invoke(cli, ["eval", str(path), "--arch", "cnn_4layer"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert not marker.exists()
