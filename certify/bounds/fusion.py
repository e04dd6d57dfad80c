"""Folding eval-mode BatchNorm layers into the convolution or linear layer before them.

In eval mode a BatchNorm is a per-channel affine map, so ``BN(conv(x))`` equals a single
convolution with rescaled weights. Bounding the folded network gives the same bounds
(interval and linear relaxations pass exactly through affine maps) with fewer layers to
go through. The original model is left untouched.
"""

from __future__ import annotations

import logging

from torch import fx, nn
from torch.fx.experimental.optimization import fuse

log = logging.getLogger(__name__)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (in eval mode) with BN folded into the layer before it.

    Models that torch.fx cannot trace are returned unchanged: folding is only an
    optimization.
    """
    model = model.eval()
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return model
    try:
        folded = fuse(model, inplace=False)
    except Exception as exc:  # fx tracing raises many kinds of errors on dynamic code
        log.debug("BatchNorm not folded, the model cannot be traced: %s", exc)
        return model
    left = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    log.debug("folded BatchNorm layers; %d left unfolded", left)
    return _without_grad(folded)


def _without_grad(module: fx.GraphModule) -> fx.GraphModule:
    # fuse() creates new Parameters; bounds never need their gradients.
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()
