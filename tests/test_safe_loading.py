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
from tests.conftest import RunsCommandOnLoad


@pytest.mark.parametrize("container", ["zip", "legacy"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, container: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = {"state_dict": {"0.weight": torch.zeros(2)}, "x": RunsCommandOnLoad(str(marker))}
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


class _Eval:
    """Unpickling this calls builtins.eval on an expression that creates the marker."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({self.marker!r}, 'w')",))


def _write(path, payload, container: str) -> None:
    """``payload`` saved by torch (zip) or pickled directly with protocol 0, 2 or 4."""
    if container == "zip":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f, protocol=int(container.removeprefix("protocol ")))


# The name pickle records for os.system is that of the module defining it.
_SYSTEM = f"{os.system.__module__}.system"


@pytest.mark.parametrize("container", ["zip", "protocol 0", "protocol 2", "protocol 4"])
@pytest.mark.parametrize("payload", [RunsCommandOnLoad, _Eval])
def test_hostile_pickle_is_called_hostile_and_names_its_global(
    tmp_path, container: str, payload: type
) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    _write(path, {"state_dict": {"0.weight": torch.zeros(2)}, "x": payload(str(marker))}, container)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path, arch="cnn_4layer", dataset="mnist")
    message = str(caught.value)
    assert "tries to run code" in message and "refused for safety" in message
    assert "not a plain checkpoint" in message and "corrupt" not in message
    assert (_SYSTEM if payload is RunsCommandOnLoad else "builtins.eval") in message
    assert len(message.splitlines()) == 1
    assert not marker.exists()


def test_full_model_pickle_is_not_called_hostile(tmp_path) -> None:
    # A whole module pickled (torch.save(model)) stores classes, which is not an attack.
    path = tmp_path / "full.pth"
    torch.save(torch.nn.Linear(2, 2), path)
    with pytest.raises(CheckpointError, match=r"stores Python objects \(torch\.nn\."):
        load_checkpoint(path, arch="cnn_4layer")


def test_corrupt_file_is_still_called_corrupt(tmp_path) -> None:
    path = tmp_path / "corrupt.pth"
    path.write_bytes(b"\x80\x02}q\x00(X\x01\x00\x00\x00a" + bytes(range(256)) * 4)
    with pytest.raises(CheckpointError, match="corrupt") as caught:
        load_checkpoint(path, arch="cnn_4layer")
    assert "run code" not in str(caught.value)
