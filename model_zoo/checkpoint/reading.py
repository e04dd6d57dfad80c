"""Step 1 of loading a checkpoint: ``torch.load`` with ``weights_only=True`` and nothing else.

Also used to resume training. Every failure becomes a :class:`CheckpointError` that says
what is wrong with the file (the caller adds its path).
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


def _refusal(error: pickle.UnpicklingError) -> CheckpointError:
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
    if found is None:
        return CheckpointError(
            "the file is corrupt or not a PyTorch checkpoint (its pickle data is unreadable); "
            "download or save it again"
        )
    return CheckpointError(
        f"the file stores Python objects ({found.group(1)}), not only tensors, and certify "
        "never unpickles arbitrary objects: re-save it with "
        "torch.save(model.state_dict(), path) and load that"
    )


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
        raise _refusal(error) from None
    except OSError as error:
        raise CheckpointError(f"cannot read the file ({error.strerror or error})") from None
    except Exception as error:  # torch raises many types for damaged files
        raise CheckpointError(
            f"the file is truncated or not a PyTorch checkpoint ({first_line(error, limit=160)}); "
            "download or save it again"
        ) from None
