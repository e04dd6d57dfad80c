"""The expressive losses of De Palma et al. (ICLR 2024): MTL-IBP, CC-IBP and EXP-IBP.

Each mixes an adversarial loss with IBP's bound of the worst case, through one
coefficient ``coef`` (alpha in the paper) that moves the loss from the adversarial one
(0) to IBP's (1):

- ``mtl-ibp``: ``coef * L_IBP + (1 - coef) * L_adv``;
- ``cc-ibp``: the robust cross-entropy of ``coef * m_IBP + (1 - coef) * m_adv``, the
  convex combination of IBP's lower bounds of the margins ``z_y - z_j`` and the margins
  at the adversarial point;
- ``exp-ibp``: ``L_IBP ** coef * L_adv ** (1 - coef)``.

L_IBP is the robust cross-entropy of IBP's margin bounds over the eps-ball and L_adv the
cross-entropy at the point PGD finds in the ball (eps times ``attack_eps_factor``),
both batch means. As in the authors' code, a clean pass comes first (its batch
statistics enter BatchNorm's running ones), the attack runs with the network in eval
mode (running statistics), and both terms then use the statistics of the adversarial
batch in one train-mode pass. The epoch loop adds the seed's warmup regularizers, and
the run starts from IBP initialization.

:func:`published_settings` gives the paper's coefficient and attack for a data set and
eps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from certify.bounds.training_bounders import IBPBounder
from certify.core.datasets import Dataset
from certify.core.eps_box import eps_box
from certify.core.errors import UsageError
from training.attack import TrainingAttack, adversarial_points, attack_starts, eval_mode
from training.losses import clean_errors, robust_cross_entropy, verified_errors
from training.methods import Method, nearest_published
from training.objective import Terms


@dataclass(frozen=True)
class ExpressiveLoss:
    """``method``'s loss: the coefficient of IBP's term, and the attack (over eps x
    ``attack_eps_factor``)."""

    method: Method
    coef: float
    attack: TrainingAttack
    attack_eps_factor: float = 1.0

    def __post_init__(self) -> None:
        if self.method not in (Method.MTL_IBP, Method.CC_IBP, Method.EXP_IBP):
            raise ValueError(f"{self.method} is not an expressive loss")
        if not 0 <= self.coef <= 1:
            raise UsageError(f"{self.coef!r}: must be in [0, 1]", param="ibp_coef")
        if not self.attack_eps_factor > 0:
            raise UsageError(
                f"{self.attack_eps_factor!r}: must be positive", param="attack_eps_factor"
            )

    def settings(self) -> dict[str, float | int]:
        return {
            "ibp_coef": self.coef,
            **self.attack.settings(),
            "attack_eps_factor": self.attack_eps_factor,
        }

    def check(self, model: nn.Module) -> None:
        """Any model: nothing to refuse."""

    def terms(
        self,
        model: nn.Module,
        bounder: IBPBounder,
        x: Tensor,
        y: Tensor,
        eps: float,
        spec: Tensor,
        seeds: Tensor,
        warmup: bool = False,
    ) -> Terms:
        starts = attack_starts(seeds, self.attack.restarts, tuple(x.shape[1:]))
        with torch.no_grad():
            clean_logits = model(x)
        with eval_mode(model):
            radius = eps * self.attack_eps_factor
            points = adversarial_points(model, x, y, radius, self.attack, starts)
        lower, upper = eps_box(x, eps)
        result = bounder.bounds_at(points, lower, upper, spec)
        assert result.logits is not None
        loss, ibp, adv = expressive_loss(self.method, self.coef, result.lower, result.logits, spec)
        stats = {
            "robust_ce": ibp.item(),
            "verified_err": float(verified_errors(result.lower).float().mean()),
            "adv_ce": adv.item(),
            "adv_err": float(clean_errors(result.logits, y).float().mean()),
        }
        return Terms(loss, result, clean_logits, stats)


def expressive_loss(
    method: Method, coef: float, ibp_lower: Tensor, adv_logits: Tensor, spec: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """``method``'s loss from IBP's margin lower bounds ``ibp_lower`` (N x K-1) and the
    logits at the adversarial points, with ``spec`` the margin matrix (N x K-1 x K);
    returns it with L_IBP and L_adv (batch means)."""
    ibp = robust_cross_entropy(ibp_lower)
    adv_margins = torch.bmm(spec, adv_logits.unsqueeze(-1)).squeeze(-1)
    # The cross-entropy of the logits, written through the margins: with the true class's
    # logit taken as 0, the others are -(z_y - z_j).
    adv = robust_cross_entropy(adv_margins)
    if method is Method.MTL_IBP:
        loss = coef * ibp + (1 - coef) * adv
    elif method is Method.CC_IBP:
        loss = robust_cross_entropy(coef * ibp_lower + (1 - coef) * adv_margins)
    elif method is Method.EXP_IBP:
        loss = ibp**coef * adv ** (1 - coef)
    else:
        raise ValueError(f"{method} is not an expressive loss")
    return loss, ibp, adv


# The paper's settings (its README's commands for CNN7), by data set and the eps they
# were published for: the coefficient of each loss (EXP-IBP has none on MNIST, which
# takes CC-IBP's), the attack's steps and step size, and the factor on its eps.
_PUBLISHED: dict[tuple[Dataset, float], tuple[dict[Method, float], TrainingAttack, float]] = {
    (Dataset.MNIST, 0.1): (
        {Method.CC_IBP: 0.1, Method.MTL_IBP: 1e-2, Method.EXP_IBP: 0.1},
        TrainingAttack(steps=1, step_size=10.0),
        1.0,
    ),
    (Dataset.MNIST, 0.3): (
        {Method.CC_IBP: 0.3, Method.MTL_IBP: 8e-2, Method.EXP_IBP: 0.3},
        TrainingAttack(steps=1, step_size=10.0),
        1.0,
    ),
    (Dataset.CIFAR, 2 / 255): (
        {Method.CC_IBP: 1e-2, Method.MTL_IBP: 4e-3, Method.EXP_IBP: 9.5e-2},
        TrainingAttack(steps=8, step_size=0.25),
        2.1,
    ),
    (Dataset.CIFAR, 8 / 255): (
        {Method.CC_IBP: 0.5, Method.MTL_IBP: 0.5, Method.EXP_IBP: 0.5},
        TrainingAttack(steps=1, step_size=10.0),
        1.0,
    ),
    (Dataset.TINYIMAGENET, 1 / 255): (
        {Method.CC_IBP: 1e-2, Method.MTL_IBP: 1e-2, Method.EXP_IBP: 4e-2},
        TrainingAttack(steps=1, step_size=10.0),
        1.0,
    ),
}


def published_settings(method: Method, dataset: Dataset, eps: float) -> ExpressiveLoss:
    """The paper's settings for ``method`` on ``dataset``, taken from the published eps
    nearest to ``eps`` (by ratio) on that data set."""
    coefs, attack, factor = nearest_published(_PUBLISHED, dataset, eps)
    return ExpressiveLoss(method, coefs[method], attack, factor)
