"""certify: certified robustness of image classifiers.

The Python verbs, as the CLI runs them::

    import certify

    config = certify.EvalConfig(methods="ibp,crown", num_samples=100)
    result = certify.evaluate("best.pth", "cifar", "8/255", config, data_dir="~/data")
    run = certify.train(certify.TrainConfig(dataset="mnist", data_dir="~/data", out_dir="r"))

The code is layered, each layer importing only those below it: ``certify.core``
(errors, eps, data set specs, devices, files), ``model_zoo`` (architectures, checkpoint
and ONNX loading), ``certify.data`` (data set readers), ``certify.bounds`` (interval and
auto_LiRPA bounds), ``certify.evaluation`` (PGD and per-image outcomes), ``reports``
(CSV rows, tables, plots), ``certify.pipeline`` (``evaluate``), ``training`` (``train``)
and the CLI (``certify.cli``, ``certify.commands``). This module is the roof over all of
them: it names the verbs and imports each only when it is first used, so that importing
``certify`` or ``certify.core`` stays cheap and changes no global settings.
"""

from __future__ import annotations

import importlib
from typing import Any

from certify.core.version import __version__

# name -> the module that defines it; imported on first use (PEP 562).
_VERBS = {
    "evaluate": "certify.pipeline.evaluate",
    "evaluate_sweep": "certify.pipeline.sweep",
    "EvalResult": "certify.pipeline.result",
    "EvalConfig": "certify.evaluation.config",
    "EvalMode": "certify.evaluation.modes",
    "train": "training.run",
    "TrainConfig": "training.config",
    "TrainResult": "training.run",
}

__all__ = [
    "EvalConfig",
    "EvalMode",
    "EvalResult",
    "TrainConfig",
    "TrainResult",
    "__version__",
    "evaluate",
    "evaluate_sweep",
    "train",
]


def __getattr__(name: str) -> Any:
    if name not in _VERBS:
        raise AttributeError(f"module 'certify' has no attribute {name!r}")
    value = getattr(importlib.import_module(_VERBS[name]), name)
    globals()[name] = value
    return value
