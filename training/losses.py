"""Losses of certified training: clean and robust cross-entropy.

The robust loss is the cross-entropy of the "worst-case logits" ``[0, -m_1, ...,
-m_{K-1}]`` with the true class at index 0, where m_j are lower bounds of the margins
z_y - z_j (the rows of :func:`certify.bounds.margin_matrix`): it is an upper bound of
the cross-entropy anywhere in the eps-ball.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def robust_cross_entropy(margin_lower: Tensor) -> Tensor:
    """Mean cross-entropy of ``[0, -margin_lower]`` with target 0."""
    padded = torch.cat([torch.zeros_like(margin_lower[:, :1]), margin_lower], dim=1)
    target = torch.zeros(len(margin_lower), dtype=torch.long, device=margin_lower.device)
    return F.cross_entropy(-padded, target)


def clean_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    return F.cross_entropy(logits, labels)


def verified_errors(margin_lower: Tensor) -> Tensor:
    """Per sample: 1 where some margin lower bound is not positive (not verified)."""
    return (margin_lower <= 0).any(dim=1)


def clean_errors(logits: Tensor, labels: Tensor) -> Tensor:
    return logits.argmax(dim=1) != labels
