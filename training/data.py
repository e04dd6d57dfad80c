"""Training data in memory: the validation split, shuffled batches and augmentation.

All randomness comes from one ``torch.Generator`` whose state is saved in checkpoints,
so a resumed run draws exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from certify.core.errors import UsageError


@dataclass(frozen=True)
class Augmentation:
    """Random crop after padding by repeating edge pixels, and horizontal flips,
    as the seed's torchvision pipeline (``RandomCrop(size, pad, padding_mode="edge")``)."""

    crop_padding: int = 0
    flip: bool = False

    @property
    def active(self) -> bool:
        return self.crop_padding > 0 or self.flip


@dataclass
class Split:
    images: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def split_validation(
    images: Tensor, labels: Tensor, val_size: int, seed: int
) -> tuple[Split, Split]:
    """Carve ``val_size`` images, chosen at random with ``seed``, out of the training data.

    The rest is the training split; model selection never sees the test set.
    """
    n = len(labels)
    if val_size < 0 or val_size >= n - 1:
        raise UsageError(
            f"{val_size}: give a number from 0 to {n - 2} (the training data "
            f"has {n} images and at least 2 must remain for training)",
            param="val_size",
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val, train = order[:val_size].sort().values, order[val_size:].sort().values
    return Split(images[train], labels[train]), Split(images[val], labels[val])


def epoch_length(num_images: int, batch_size: int) -> int:
    """Batches per epoch; a last batch of one image is dropped, as BatchNorm in training
    needs two values per channel."""
    full, rest = divmod(num_images, batch_size)
    return full + (1 if rest > 1 else 0)


def batches(
    split: Split, batch_size: int, generator: torch.Generator, augment: Augmentation
) -> Iterator[tuple[Tensor, Tensor]]:
    """Shuffled (and augmented) batches of one epoch."""
    order = torch.randperm(len(split), generator=generator)
    for k in range(epoch_length(len(split), batch_size)):
        index = order[k * batch_size : (k + 1) * batch_size]
        x = split.images[index]
        if augment.active:
            x = augment_batch(x, augment, generator)
        yield x, split.labels[index]


def augment_batch(x: Tensor, augment: Augmentation, generator: torch.Generator) -> Tensor:
    n, _, h, w = x.shape
    if augment.flip:
        flip = torch.rand(n, generator=generator) < 0.5
        x = torch.where(flip.view(n, 1, 1, 1).to(x.device), x.flip(3), x)
    p = augment.crop_padding
    if p > 0:
        padded = F.pad(x, (p, p, p, p), mode="replicate")
        dy = torch.randint(0, 2 * p + 1, (n,), generator=generator).to(x.device)
        dx = torch.randint(0, 2 * p + 1, (n,), generator=generator).to(x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device)).view(n, 1, h, 1)
        cols = (dx[:, None] + torch.arange(w, device=x.device)).view(n, 1, 1, w)
        batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
        channels = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
        x = padded[batch, channels, rows, cols]
    return x
