"""The L1 penalty on the parameters that the certified-training papers add to their
loss, with each paper's coefficients and its own reach.

The papers differ in what they sum, and ``certify train --l1`` follows the method's paper:

- SABR (Müller et al., 2023): |p| over every parameter, BatchNorm's included;
- TAPS and STAPS (Mao et al., 2023): |W| + |b| of each convolution and dense layer,
  averaged over those layers;
- the expressive losses (De Palma et al., 2024), and the methods without a published
  L1 term (``fast``, ``vanilla``, ``crown-ibp``), as CTRAIN takes it for every method:
  |W| of each convolution and dense layer.

The epoch loop adds ``l1 * l1_norm(model, l1_reach(method))`` to every step's loss, the
warmup's included, as the papers' code does.
"""

from __future__ import annotations

from enum import StrEnum

import torch
from torch import Tensor, nn

from certify.core.datasets import Dataset
from training.methods import Method, nearest_published


class L1Reach(StrEnum):
    ALL_PARAMETERS = "all parameters"
    AFFINE_LAYERS = "weights and biases of each affine layer, averaged over the layers"
    AFFINE_WEIGHTS = "weights of the affine layers"


_AFFINE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def l1_reach(method: Method) -> L1Reach:
    if method is Method.SABR:
        return L1Reach.ALL_PARAMETERS
    if method in (Method.TAPS, Method.STAPS):
        return L1Reach.AFFINE_LAYERS
    return L1Reach.AFFINE_WEIGHTS


def l1_norm(model: nn.Module, reach: L1Reach) -> Tensor:
    """The penalty's sum over ``model`` (before its coefficient), differentiable."""
    if reach is L1Reach.ALL_PARAMETERS:
        terms = [p.abs().sum() for p in model.parameters()]
        return torch.stack(terms).sum()
    layers = [m for m in model.modules() if isinstance(m, _AFFINE)]
    if reach is L1Reach.AFFINE_WEIGHTS:
        return torch.stack([m.weight.abs().sum() for m in layers]).sum()
    per_layer = [
        m.weight.abs().sum() + (m.bias.abs().sum() if m.bias is not None else 0.0) for m in layers
    ]
    return torch.stack(per_layer).sum() / len(layers)


# The coefficients of the papers' commands for CNN7, by data set and the eps they were
# published for; 0 where a setting has none. EXP-IBP publishes no MNIST setting and
# takes CC-IBP's there, as its other settings do (training.expressive).
_PUBLISHED: dict[tuple[Dataset, float], dict[Method, float]] = {
    (Dataset.MNIST, 0.1): {
        Method.SABR: 1e-5, Method.TAPS: 0.0, Method.STAPS: 2e-5,
        Method.MTL_IBP: 1e-5, Method.CC_IBP: 2e-6, Method.EXP_IBP: 2e-6,
    },
    (Dataset.MNIST, 0.3): {
        Method.SABR: 1e-6, Method.TAPS: 0.0, Method.STAPS: 2e-6,
        Method.MTL_IBP: 1e-6, Method.CC_IBP: 3e-6, Method.EXP_IBP: 3e-6,
    },
    (Dataset.CIFAR, 2 / 255): {
        Method.SABR: 1e-6, Method.TAPS: 2e-6, Method.STAPS: 2e-6,
        Method.MTL_IBP: 3e-6, Method.CC_IBP: 3e-6, Method.EXP_IBP: 4e-6,
    },
    (Dataset.CIFAR, 8 / 255): {
        Method.SABR: 0.0, Method.TAPS: 2e-6, Method.STAPS: 2e-6,
        Method.MTL_IBP: 1e-7, Method.CC_IBP: 0.0, Method.EXP_IBP: 0.0,
    },
    (Dataset.TINYIMAGENET, 1 / 255): {
        Method.SABR: 1e-6, Method.TAPS: 0.0, Method.STAPS: 1e-6,
        Method.MTL_IBP: 5e-5, Method.CC_IBP: 5e-5, Method.EXP_IBP: 5e-5,
    },
}  # fmt: skip


def published_l1(method: Method, dataset: Dataset, eps: float) -> float:
    """The paper's L1 coefficient for ``method`` on ``dataset`` at the published eps
    nearest to ``eps``; 0 for the methods without one (``fast`` as the seed trains it)."""
    return nearest_published(_PUBLISHED, dataset, eps).get(method, 0.0)
