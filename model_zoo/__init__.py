"""Models: the architectures certify trains, and loading of checkpoints and ONNX files.

``create_model(name, ...)`` builds a registered architecture by name (``list_models()``
names them all, ``register_model`` adds one); ``load_model(path, ...)`` reads a checkpoint
of any supported format or an ONNX file as a model over pixel images in [0, 1]. The
checkpoint formats live in :mod:`model_zoo.checkpoint`, ONNX loading in
:mod:`model_zoo.onnx`. This package imports only :mod:`certify.core` of the project.
"""

from model_zoo import architectures  # noqa: F401  (registers every architecture)
from model_zoo.definition import ModelDefinition
from model_zoo.loaded import LoadedModel
from model_zoo.loading import ModelFile, load_model
from model_zoo.registry import create_model, list_models, register_model

__all__ = [
    "LoadedModel",
    "ModelDefinition",
    "ModelFile",
    "create_model",
    "list_models",
    "load_model",
    "register_model",
]
