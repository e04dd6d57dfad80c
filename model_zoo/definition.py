"""A network defined by the user's own code, for checkpoints of architectures that the
registry does not know (``certify eval`` names it as ``FILE.py:FACTORY``).

:class:`ModelDefinition` names a factory, in a Python file or an importable module, and
the keyword arguments to call it with. Building it *runs that code*, with the rights of
the process: it is meant for the user's own model definitions, as alpha-beta-CROWN reads
the model of its config. Loading the checkpoint's weights into the module is the job of
:func:`model_zoo.checkpoint.loading.load_defined`.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from torch import nn

from certify.core.errors import ModelError, UsageError, first_line


@dataclass(frozen=True)
class ModelDefinition:
    """``factory`` in ``source`` (a ``.py`` file, or a module name such as
    ``mypackage.models``), called with the keyword arguments ``args``."""

    source: str
    factory: str
    args: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str, args: str | Mapping[str, Any] | None = None) -> ModelDefinition:
        """``FILE.py:FACTORY`` or ``module:factory``, with ``args`` as a JSON object (or a
        mapping)."""
        source, colon, factory = text.strip().rpartition(":")
        if not colon or not source or not factory.isidentifier():
            raise UsageError(
                f"{text!r}: give FILE.py:FACTORY or module:factory, e.g. resnet.py:resnet18",
                param="model_def",
            )
        return cls(source, factory, _parse_args(args))

    @property
    def is_file(self) -> bool:
        return self.source.endswith(".py") or "/" in self.source or "\\" in self.source

    def build(self) -> nn.Module:
        """Import the source (running its code), call the factory, and return the module."""
        module = _import_file(Path(self.source)) if self.is_file else _import_module(self.source)
        factory = getattr(module, self.factory, None)
        if not callable(factory):
            defined = sorted(
                n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
            )
            raise UsageError(
                f"{self.source} defines no {self.factory} (callables there: "
                f"{', '.join(defined[:8]) or 'none'})",
                param="model_def",
            )
        try:
            network = factory(**self.args)
        except Exception as exc:  # the user's code: any failure is reported in one line
            raise ModelError(
                f"{self.factory}(**{dict(self.args)}) of {self.source} failed: {first_line(exc)}"
            ) from None
        if not isinstance(network, nn.Module):
            raise ModelError(
                f"{self.factory} of {self.source} returned a {type(network).__name__}, "
                "not a torch.nn.Module"
            )
        return network

    def describe(self) -> str:
        """How results name the architecture: ``file.py:factory``."""
        name = Path(self.source).name if self.is_file else self.source
        return f"{name}:{self.factory}"


def _parse_args(args: str | Mapping[str, Any] | None) -> dict[str, Any]:
    if args is None:
        return {}
    if isinstance(args, Mapping):
        return dict(args)
    try:
        value = json.loads(args)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"{args!r} is not JSON ({exc.msg}): give an object, e.g. '{{\"num_classes\": 10}}'",
            param="model_args",
        ) from None
    if not isinstance(value, dict):
        raise UsageError(
            f"{args!r}: give a JSON object of keyword arguments, e.g. '{{\"width\": 2}}'",
            param="model_args",
        )
    return value


def _import_file(path: Path) -> ModuleType:
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise UsageError(f"model definition file {path} {what}", param="model_def")
    name = f"certify_model_definition_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"{path} is not a Python file", param="model_def")
    module = importlib.util.module_from_spec(spec)
    # Registered while it runs, so that dataclasses and pickling in it find their module.
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(name, None)
        raise ModelError(f"running {path} failed: {first_line(exc)}") from None
    return module


def _import_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        raise UsageError(
            f"no module {exc.name or name!r} to import: give FILE.py:FACTORY, or a module on "
            "the Python path",
            param="model_def",
        ) from None
    except Exception as exc:
        raise ModelError(f"importing {name} failed: {first_line(exc)}") from None
