"""Which epoch of a training run is selected as ``best.pth`` and evaluated at the end.

Only epochs trained up to eps_max compete, as in the seed (earlier ones can have a low
clean error and a meaningless verified error); among them, the lowest IBP-verified
error on the validation split wins, then the lowest clean error. Without a validation
split the last epoch at eps_max is selected. :class:`SelectedWeights` keeps the winner's
weights in memory, so that the final evaluation needs no file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from certify.core.shard import Shard
from model_zoo.checkpoint import read_checkpoint
from model_zoo.normalization import NormalizedModel


@dataclass
class Best:
    """The selected epoch: lowest validation verified error (then clean error)."""

    epoch: int = 0
    val_verified_err: float = float("inf")
    val_clean_err: float = float("inf")

    def improved_by(self, verified: float, clean: float) -> bool:
        return (verified, clean) < (self.val_verified_err, self.val_clean_err)


def is_candidate(eps_after_epoch: float, eps_max: float) -> bool:
    """Whether an epoch whose last batch was trained at ``eps_after_epoch`` competes."""
    return eps_after_epoch >= eps_max


def select(
    best: Best, epoch: int, candidate: bool, val_errors: tuple[float, float] | None
) -> Best | None:
    """The new :class:`Best` if ``epoch`` (with its validation verified and clean
    errors, None without a validation split) wins over ``best``, else None."""
    if not candidate or (val_errors is not None and not best.improved_by(*val_errors)):
        return None
    verified, clean = val_errors if val_errors is not None else (float("nan"),) * 2
    return Best(epoch, verified, clean)


class SelectedWeights:
    """The weights of the selected (best) epoch's network, on the CPU."""

    def __init__(self) -> None:
        self.epoch = 0
        self.weights: dict[str, torch.Tensor] | None = None

    def keep(self, epoch: int, model: NormalizedModel) -> None:
        self.epoch = epoch
        self.weights = {k: v.detach().cpu().clone() for k, v in model.model.state_dict().items()}

    def model(
        self,
        build: Callable[[], NormalizedModel],
        best_file: Path,
        best: Best,
        current: NormalizedModel,
        last_epoch: int,
        shard: Shard,
    ) -> NormalizedModel:
        """The selected model, in memory in every process: rank 0 knows which epoch won."""
        weights = None
        if shard.is_main:
            if self.weights is not None and best.epoch == self.epoch:
                weights = self.weights
            elif best.epoch == last_epoch:  # the model in memory is the last epoch's
                weights = {k: v.detach().cpu() for k, v in current.model.state_dict().items()}
            else:  # selected before this run was resumed
                weights = read_checkpoint(best_file)["state_dict"]
        if shard.world_size > 1:
            box = [weights]
            dist.broadcast_object_list(box, src=0)
            weights = box[0]
        model = build()
        model.model.load_state_dict(weights)
        return model
