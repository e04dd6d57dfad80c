"""Step 1 of loading a checkpoint: ``torch.load`` with ``weights_only=True`` and nothing else.

Also used to resume training. Every failure becomes a :class:`CheckpointError` that says
what is wrong with the file (the caller adds its path); a refused file is explained by
the globals its pickle data names (:mod:`~model_zoo.checkpoint.pickle_globals`), so that
a hostile file is called hostile and not corrupt.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from certify.core.errors import CheckpointError, first_line
from model_zoo.checkpoint.formats import one_line
from model_zoo.checkpoint.pickle_globals import code_global, pickled_globals, runs_code

# How torch 2.13 names the global it refused ("Unsupported global: GLOBAL x.y was not ...",
# "unsupported GLOBAL x.y whose module x is blocked"); used only where the opcodes name
# nothing that runs code, since the wording is torch's to change.
_TORCH_REFUSED = re.compile(r"GLOBAL ([\w.]+)")


def _hostile(name: str) -> CheckpointError:
    return CheckpointError(
        f"the file tries to run code when it is loaded (its pickle data calls "
        f"{one_line(name)}), so it is not a plain checkpoint: refused for safety; do not "
        "trust where it came from"
    )


def _refusal(error: pickle.UnpicklingError, file: Path) -> CheckpointError:
    names = pickled_globals(file)
    code = next((name for name in names if runs_code(name)), None)
    if code is not None:
        return _hostile(code)
    found = _TORCH_REFUSED.search(str(error))
    stored = found.group(1) if found else next((n for n in names if n not in _allowed()), None)
    if stored is None:
        return CheckpointError(
            "the file is corrupt or not a PyTorch checkpoint (its pickle data is unreadable); "
            "download or save it again"
        )
    return CheckpointError(
        f"the file stores Python objects ({one_line(stored)}), not only tensors, and certify "
        "never unpickles arbitrary objects: re-save it with "
        "torch.save(model.state_dict(), path) and load that"
    )


def _allowed() -> set[str]:
    """The globals torch's weights_only unpickler accepts (a private list: empty if gone)."""
    try:
        from torch import _weights_only_unpickler

        return set(_weights_only_unpickler._get_allowed_globals())
    except Exception:
        return set()


def read_checkpoint(path: str | os.PathLike[str]) -> Any:
    """Read a checkpoint file with ``weights_only=True`` (errors carry no path)."""
    file = Path(path)
    if not file.exists():
        raise CheckpointError("no such file: check the path")
    if file.is_dir():
        raise CheckpointError("this is a folder: pass the checkpoint file inside it")
    if file.stat().st_size == 0:
        raise CheckpointError(
            "the file is empty (0 bytes), probably cut off while being written: "
            "save or download it again"
        )
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols of older files; that is not our user's concern
            warnings.simplefilter("ignore")
            return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise _refusal(error, file) from None
    except OSError as error:
        raise CheckpointError(f"cannot read the file ({error.strerror or error})") from None
    except Exception as error:  # torch raises many types for damaged files
        code = code_global(file)
        if code is not None:
            raise _hostile(code) from None
        raise CheckpointError(
            f"the file is truncated or not a PyTorch checkpoint ({first_line(error, limit=160)}); "
            "download or save it again"
        ) from None
