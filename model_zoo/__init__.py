"""Architectures, the model registry, and loading of checkpoints and ONNX files.

``create_model(name, ...)`` builds an architecture by name; ``list_models()`` names
them all. Loading of foreign files lives in :mod:`model_zoo.checkpoints` and
:mod:`model_zoo.onnx_loading`.
"""

from model_zoo import architectures  # noqa: F401  (registers every architecture)
from model_zoo.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
