"""Step 3 of loading a checkpoint, also run before saving one: does a state dict fit an
architecture?

:func:`probe_arch` builds the architecture on the meta device (no weights allocated) to
learn its key names and shapes for one input geometry, :func:`compare` lists the
differences, and :func:`infer_geometry` finds the data set and class count whose shapes
fit a file that does not record them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from certify.core.datasets import SPECS, Dataset, DatasetSpec, get_spec
from certify.core.errors import CheckpointError, ModelError, first_line
from model_zoo.checkpoint.formats import SHOWN_KEYS, StateDict, one_line, shown
from model_zoo.registry import create_model, list_models


@dataclass(frozen=True)
class Geometry:
    """The input and output sizes an architecture is built for."""

    dataset: Dataset | None
    in_ch: int
    in_dim: int
    num_classes: int

    def describe(self) -> str:
        where = self.dataset.value if self.dataset else f"{self.in_ch}x{self.in_dim}x{self.in_dim}"
        return f"{where} input with {self.num_classes} classes"


@dataclass
class Mismatch:
    """How a state dict differs from what an architecture expects (false if it fits)."""

    missing: list[str]
    unexpected: list[str]
    shapes: list[tuple[str, tuple[int, ...], tuple[int, ...]]]

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.shapes)

    def rank(self) -> tuple[int, int]:
        return len(self.missing) + len(self.unexpected), len(self.shapes)

    def describe(self, arch: str, geometry: Geometry, subject: str = "the file") -> str:
        if self.missing or self.unexpected:
            return (
                f"{subject} does not fit architecture {arch!r}: {_listing(self.missing)} "
                f"missing, {_listing(self.unexpected)} unexpected; pass the `arch` it was "
                f"trained with (known: {', '.join(list_models())})"
            )
        key, in_file, in_model = self.shapes[0]
        extra = len(self.shapes) - 1
        more = f" (and {extra} more mismatching tensor{'s' * (extra > 1)})" if extra else ""
        return (
            f"{shown(key)} has shape {list(in_file)} in {subject} but {list(in_model)} in {arch!r} "
            f"for {geometry.describe()}{more}: pass the `arch`, `dataset` and `num_classes` "
            "the model was trained with"
        )


def _listing(keys: list[str]) -> str:
    names = ", ".join(one_line(k) for k in keys[:SHOWN_KEYS])
    etc = ", ..." if len(keys) > SHOWN_KEYS else ""
    return f"{len(keys)} keys ({names}{etc})" if keys else "0 keys"


@dataclass(frozen=True)
class Probe:
    """What an architecture expects: key shapes, optional keys, the output layer's key."""

    shapes: dict[str, tuple[int, ...]]
    counters: frozenset[str]
    output_key: str | None


def batchnorm_counters(model: nn.Module) -> frozenset[str]:
    """Keys of BatchNorm batch counters, which exporters such as auto_LiRPA omit."""
    return frozenset(
        f"{name}.num_batches_tracked" if name else "num_batches_tracked"
        for name, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
    )


def probe_arch(arch: str, geometry: Geometry, options: Mapping[str, Any] | None = None) -> Probe:
    """Key names and shapes of ``arch`` for ``geometry``, without allocating weights.

    Raises :class:`ModelError` when the architecture cannot be built with these sizes
    and options (which a damaged or foreign file can hold).
    """
    try:
        with torch.device("meta"):
            model = create_model(
                arch, geometry.in_ch, geometry.in_dim, geometry.num_classes, **(options or {})
            )
    except (RuntimeError, ValueError, TypeError, OverflowError) as error:
        # torch's layers reject sizes and option types with these; the message says which
        raise ModelError(
            f"architecture {arch!r} cannot be built for {geometry.describe()}"
            f"{f' with options {dict(options)}' if options else ''}: {first_line(error, limit=120)}"
        ) from None
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    counters = batchnorm_counters(model)
    matrices = [k for k, s in shapes.items() if k.endswith("weight") and len(s) == 2]
    return Probe(shapes, counters, matrices[-1] if matrices else None)


def compare(probe: Probe, state_dict: StateDict) -> Mismatch:
    missing = [k for k in probe.shapes if k not in state_dict and k not in probe.counters]
    unexpected = [k for k in state_dict if k not in probe.shapes]
    shapes = [
        (k, tuple(v.shape), probe.shapes[k])
        for k, v in state_dict.items()
        if k in probe.shapes and tuple(v.shape) != probe.shapes[k]
    ]
    return Mismatch(missing, unexpected, shapes)


def _candidate(
    arch: str, spec: DatasetSpec, state_dict: StateDict, classes: int | None
) -> Geometry:
    if classes is None:
        # The class count is the output size of the last matrix layer in the file.
        probe = probe_arch(arch, Geometry(spec.name, spec.channels, spec.size, spec.num_classes))
        out = state_dict.get(probe.output_key) if probe.output_key else None
        classes = int(out.shape[0]) if out is not None and out.dim() == 2 else spec.num_classes
    return Geometry(spec.name, spec.channels, spec.size, classes)


def infer_geometry(
    arch: str, state_dict: StateDict, dataset: Dataset | None, num_classes: int | None
) -> Geometry:
    """The first data set geometry (or the given one) whose shapes fit the state dict."""
    specs = [get_spec(dataset)] if dataset else list(SPECS.values())
    best: tuple[Geometry, Mismatch] | None = None
    for spec in specs:
        try:
            geometry = _candidate(arch, spec, state_dict, num_classes)
            mismatch = compare(probe_arch(arch, geometry), state_dict)
        except ModelError as error:  # e.g. an input too small for the architecture
            if len(specs) == 1:
                raise CheckpointError(str(error)) from None
            continue
        if not mismatch:
            return geometry
        if best is None or mismatch.rank() < best[1].rank():
            best = (geometry, mismatch)
    if best is None:
        raise CheckpointError(f"architecture {arch!r} cannot take any known data set's input")
    raise CheckpointError(best[1].describe(arch, best[0]))
