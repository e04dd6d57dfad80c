"""Training checkpoints: certify's model checkpoint plus the state to resume from.

The file is a regular certify checkpoint (written by
:func:`model_zoo.checkpoint.save_checkpoint`, so ``certify eval`` and
``load_checkpoint`` read it as any other) with one more entry, ``"training"``: the
epoch, the optimizer state, the learning rate and eps schedules, the random number
generator states and the best validation result so far. Every value is a tensor or a
plain value, so the file loads with ``weights_only=True``. Writes are atomic: a run
killed while saving keeps its previous checkpoint.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from certify.core.errors import CheckpointError
from model_zoo.checkpoint import read_checkpoint, save_checkpoint
from training.selection import Best

LAST = "last.pth"
BEST = "best.pth"


@dataclass
class TrainingState:
    """What a resumed run needs beyond the weights."""

    epoch: int
    optimizer: dict[str, Any]
    torch_rng: torch.Tensor
    data_rng: torch.Tensor
    best: Best
    lr: float
    schedules: dict[str, Any]

    def to_payload(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "optimizer": self.optimizer,
            "torch_rng": self.torch_rng,
            "data_rng": self.data_rng,
            "best": _finite(asdict(self.best)),
            "lr": self.lr,
            "schedules": self.schedules,
        }

    @classmethod
    def from_payload(cls, raw: dict[str, Any]) -> TrainingState:
        try:
            best = raw["best"]
            return cls(
                epoch=int(raw["epoch"]),
                optimizer=raw["optimizer"],
                torch_rng=raw["torch_rng"],
                data_rng=raw["data_rng"],
                best=Best(
                    int(best["epoch"]),
                    _inf(best["val_verified_err"]),
                    _inf(best["val_clean_err"]),
                ),
                lr=float(raw["lr"]),
                schedules=dict(raw["schedules"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"the training state is incomplete ({exc}); start anew") from None


def _finite(values: dict[str, Any]) -> dict[str, Any]:
    # inf survives torch.save, but keep the stored values JSON-like for other readers.
    return {
        k: (None if isinstance(v, float) and v == float("inf") else v) for k, v in values.items()
    }


def _inf(value: Any) -> float:
    return float("inf") if value is None else float(value)


def save_training_checkpoint(
    path: Path, model: nn.Module, meta: dict[str, Any], state: TrainingState | None
) -> None:
    """Write ``model`` in certify's format at ``path`` with ``state`` added, atomically."""
    extra = {"training": state.to_payload()} if state is not None else None
    save_checkpoint(path, model, meta, extra)


def load_training_checkpoint(path: Path) -> tuple[dict[str, Any], TrainingState]:
    """The raw certify checkpoint (weights and metadata) and its training state."""
    raw = read_checkpoint(path)
    if not isinstance(raw, dict) or raw.get("format") != "certify" or "training" not in raw:
        raise CheckpointError(f"{path} is not a training checkpoint of certify train")
    return raw, TrainingState.from_payload(raw["training"])
