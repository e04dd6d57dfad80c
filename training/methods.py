"""The training methods that ``certify train`` offers.

A leaf module: the configuration, the epoch loop and the CLI all name methods, and none
of them has to import another to do so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from enum import StrEnum
from typing import TypeVar

from certify.core.datasets import Dataset

T = TypeVar("T")


class Method(StrEnum):
    """How a batch's loss is taken once eps > 0.

    - ``fast``: Shi et al. (2021), IBP with IBP initialization and the warmup regularizers;
    - ``vanilla``: IBP alone;
    - ``crown-ibp``: CROWN-IBP's bounds (Zhang et al., 2020);
    - ``mtl-ibp``, ``cc-ibp``, ``exp-ibp``: the expressive losses of De Palma et al.
      (2024), an adversarial loss and IBP's mixed by one coefficient
      (:mod:`training.expressive`), on ``fast``'s initialization and regularizers;
    - ``sabr``: Müller et al. (2023), IBP over a small box around an adversarial point
      (:mod:`training.sabr`), on ``fast``'s initialization and regularizers;
    - ``taps``, ``staps``: Mao et al. (2023), IBP through a feature extractor and PGD
      through the head over the feature box (``staps``: over SABR's small box)
      (:mod:`training.taps`), on ``fast``'s initialization and regularizers.
    """

    FAST = "fast"
    VANILLA = "vanilla"
    CROWN_IBP = "crown-ibp"
    MTL_IBP = "mtl-ibp"
    CC_IBP = "cc-ibp"
    EXP_IBP = "exp-ibp"
    SABR = "sabr"
    TAPS = "taps"
    STAPS = "staps"

    @property
    def builds_on_fast(self) -> bool:
        """Whether the run starts from IBP initialization and adds the warmup
        regularizers, as ``fast`` does (the methods built on the seed's)."""
        return self not in (Method.VANILLA, Method.CROWN_IBP)

    @property
    def attacks(self) -> bool:
        """Whether its loss takes a point an attack found in training."""
        return self not in (Method.FAST, Method.VANILLA, Method.CROWN_IBP)


def published_dataset(dataset: Dataset) -> Dataset:
    """The data set whose published settings a method takes on ``dataset``: CIFAR-100,
    for which the papers of these methods publish none, takes CIFAR-10's (the same
    images, ten times the classes)."""
    return Dataset.CIFAR if dataset is Dataset.CIFAR100 else dataset


def nearest_published(table: Mapping[tuple[Dataset, float], T], dataset: Dataset, eps: float) -> T:
    """The entry of ``table`` (by data set and the eps a paper published it for) for
    ``dataset`` at the published eps nearest to ``eps``, by ratio."""
    dataset = published_dataset(dataset)
    rows = [(at, row) for (data, at), row in table.items() if data is dataset]
    return min(rows, key=lambda r: abs(math.log(eps / r[0])))[1]
