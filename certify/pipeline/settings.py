"""What an evaluation says about itself: :class:`EvalSettings`, kept in every
:class:`~certify.pipeline.result.EvalResult` and written into its CSV rows and JSON.

The settings are typed and frozen; :meth:`EvalSettings.columns` flattens them into the
named values of a results row (:data:`reports.eval_csv.EVAL_COLUMNS`) and of the JSON
output of ``certify eval``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import torch

from certify.bounds.methods import BoundMethod
from certify.core.eps import format_eps
from certify.core.version import __version__
from certify.evaluation.config import EvalConfig


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")


@dataclass(frozen=True)
class EvalSettings:
    """``model`` (its file's name, or the name given), ``arch``, ``dataset``, ``eps``,
    the ``config`` the images were evaluated with, the ``device`` in words, for an ONNX
    file the largest difference of a logit from onnxruntime, and, for the final
    evaluation of ``certify train``, the ``run`` folder."""

    model: str
    arch: str
    dataset: str
    eps: float
    config: EvalConfig
    device: str
    onnx_difference: float | None = None
    run: str = ""
    torch: str = torch.__version__
    certify: str = __version__
    date: str = field(default_factory=_now)

    @property
    def start(self) -> int:
        return self.config.start

    def columns(self) -> dict[str, Any]:
        """The settings as the named values of a results row and of the JSON."""
        pgd = self.config.pgd
        values: dict[str, Any] = {
            "model": self.model,
            "run": self.run,
            "arch": self.arch,
            "dataset": self.dataset,
            "eps": format_eps(self.eps),
            "eps_value": self.eps,
            "start": self.config.start,
            "mode": self.config.mode.value,
            "pgd_steps": pgd.steps,
            "pgd_restarts": pgd.restarts,
            "pgd_loss": ",".join(loss.value for loss in pgd.losses),
            "device": self.device,
            "onnx_difference": self.onnx_difference,
            "torch": self.torch,
            "certify": self.certify,
            "date": self.date,
        }
        if BoundMethod.BAB in self.config.methods:
            bab = self.config.bab
            values |= {
                "bab_timeout": bab.limits.timeout,
                "bab_max_domains": bab.limits.max_domains,
                "bab_branching": bab.branching.value,
            }
        return values
