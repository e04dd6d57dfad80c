"""The architecture modules; importing this package registers every architecture.

Each module defines networks and decorates one short entry function per architecture
with :func:`model_zoo.registry.register_model`. Add a new module to the import list
below so that :func:`model_zoo.create_model` can find it.
"""

from model_zoo.architectures import feedforward, resnext, wide_resnet

__all__ = ["feedforward", "resnext", "wide_resnet"]
