"""Reading and writing model checkpoints: certify's own, the seed's, CTBench's and CTRAIN's.

:func:`load_checkpoint` turns a file into a ready model that takes pixels in [0, 1]:

1. the file is read with ``torch.load(..., weights_only=True)`` and nothing else, so a
   file can never run code; files that need full unpickling are refused;
2. its format is recognised from its layout (:func:`detect_format`) and one adapter per
   format turns it into the state dict of a bare architecture from the registry, plus
   the input normalization when the file stores one;
3. the architecture and input geometry come from the file (certify's own format) or
   from the caller, with the data set and class count inferred from tensor shapes when
   not given; the layout is checked against the architecture before building it, so
   errors name the offending keys and shapes;
4. the network is built, loaded with ``strict=True``, wrapped in its normalization
   (:class:`~model_zoo.normalization.NormalizedModel`) and put in eval mode.

:func:`save_checkpoint` writes certify's own format, which records everything needed to
load the file again without flags.

The steps live in their own modules: reading in :mod:`model_zoo.checkpoint_reading`,
formats and adapters in :mod:`model_zoo.checkpoint_formats`, layout checks and geometry
inference in :mod:`model_zoo.checkpoint_fit`, writing in :mod:`model_zoo.checkpoint_saving`.
This module resolves the architecture, geometry and normalization and builds the model;
it re-exports the public names of the others, so callers import from here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from certify.datasets import get_spec, parse_dataset
from certify.errors import CertifyError, CheckpointError, first_line
from model_zoo.checkpoint_fit import (
    Geometry,
    batchnorm_counters,
    compare,
    infer_geometry,
    probe_arch,
)
from model_zoo.checkpoint_formats import (
    ADAPTERS,
    CTRAIN_NORMALIZATION,
    FORMAT_NAME,
    FORMAT_VERSION,
    Adapted,
    Normalization,
    clean_state_dict,
    detect_format,
)
from model_zoo.checkpoint_reading import read_checkpoint
from model_zoo.checkpoint_saving import save_checkpoint
from model_zoo.normalization import NormalizedModel
from model_zoo.registry import canonical_name, create_model, list_models

__all__ = [
    "ADAPTERS",
    "CTRAIN_NORMALIZATION",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "LoadedModel",
    "clean_state_dict",
    "detect_format",
    "load_checkpoint",
    "read_checkpoint",
    "save_checkpoint",
]


@dataclass
class LoadedModel:
    """A network ready for evaluation, with what is known about it."""

    model: nn.Module
    arch: str
    dataset: str | None
    num_classes: int
    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    eps: float | None
    source_format: str


def _stored_geometry(meta: Mapping[str, Any]) -> Geometry:
    try:
        dataset = parse_dataset(meta["dataset"]) if meta.get("dataset") else None
    except CertifyError:
        raise CheckpointError(f"the file names an unknown data set {meta['dataset']!r}") from None
    values = [meta["in_ch"], meta["in_dim"], meta["num_classes"]]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        raise CheckpointError("the stored input geometry is not positive integers: save it again")
    return Geometry(dataset, *values)


def _check_agrees(name: str, stored: Any, given: Any) -> None:
    if given is not None and stored is not None and given != stored:
        raise CheckpointError(
            f"the file is for {name} {getattr(stored, 'value', stored)!r}, not "
            f"{getattr(given, 'value', given)!r}: leave out --{name.replace('_', '-')}"
        )


def _resolve_arch(adapted: Adapted, fmt: str, arch: str | None) -> str:
    stored = adapted.meta.get("arch")
    if stored is not None:
        stored = canonical_name(str(stored))
        if arch is not None:
            _check_agrees("arch", stored, canonical_name(arch))
        return stored
    if arch is None:
        raise CheckpointError(
            f"a {fmt} checkpoint does not name its architecture: pass --arch NAME; "
            f"known: {', '.join(list_models())}"
        )
    return canonical_name(arch)


def _resolve_geometry(
    arch: str, adapted: Adapted, dataset: str | None, num_classes: int | None
) -> Geometry:
    wanted = parse_dataset(dataset) if dataset is not None else None
    if adapted.meta.get("in_ch") is None:
        return infer_geometry(arch, adapted.state_dict, wanted, num_classes)
    geometry = _stored_geometry(adapted.meta)
    _check_agrees("dataset", geometry.dataset, wanted)
    _check_agrees("num_classes", geometry.num_classes, num_classes)
    mismatch = compare(probe_arch(arch, geometry, _arch_options(adapted)), adapted.state_dict)
    if mismatch:
        raise CheckpointError(mismatch.describe(arch, geometry) + " (the file is inconsistent)")
    return geometry


def _resolve_normalization(adapted: Adapted, geometry: Geometry) -> Normalization:
    if adapted.normalization is not None:
        mean, std = adapted.normalization
    elif geometry.dataset is None:
        mean, std = (0.0,) * geometry.in_ch, (1.0,) * geometry.in_ch
    elif adapted.default_normalization is not None:
        mean, std = adapted.default_normalization[geometry.dataset]
    else:
        spec = get_spec(geometry.dataset)
        mean, std = spec.mean, spec.std
    if len(mean) != len(std) or len(mean) not in (1, geometry.in_ch):
        raise CheckpointError(
            f"the stored normalization has {len(mean)} means and {len(std)} stds for "
            f"{geometry.in_ch} input channels: save it again"
        )
    if any(s <= 0 for s in std):
        raise CheckpointError("the stored normalization has a std that is not positive")
    return mean, std


def _arch_options(adapted: Adapted) -> dict[str, Any]:
    options = adapted.meta.get("arch_options") or {}
    if not isinstance(options, Mapping):
        raise CheckpointError("the stored arch_options is not a dict: save it again")
    return dict(options)


def _build(arch: str, geometry: Geometry, adapted: Adapted) -> nn.Module:
    model = create_model(
        arch, geometry.in_ch, geometry.in_dim, geometry.num_classes, **_arch_options(adapted)
    )
    full = dict(adapted.state_dict)
    own = model.state_dict()
    for key in batchnorm_counters(model) - set(full):
        # The counter only matters for training with momentum=None; eval never reads it.
        full[key] = own[key]
    try:
        model.load_state_dict(full, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"the weights do not load: {first_line(error, limit=160)}") from None
    return model


def load_checkpoint(
    path: str | os.PathLike[str],
    arch: str | None = None,
    dataset: str | None = None,
    num_classes: int | None = None,
) -> LoadedModel:
    """Load a checkpoint of any supported format as a model taking pixels in [0, 1].

    ``arch``, ``dataset`` and ``num_classes`` are needed only where the file does not
    record them (every format but certify's own); ``dataset`` and ``num_classes`` are
    inferred from tensor shapes when left out. Raises :class:`CheckpointError` (or
    :class:`~certify.errors.ModelError` for an unknown architecture name).
    """
    try:
        raw = read_checkpoint(path)
        fmt = detect_format(raw)
        adapted = ADAPTERS[fmt](raw)
        arch_name = _resolve_arch(adapted, fmt, arch)
        geometry = _resolve_geometry(arch_name, adapted, dataset, num_classes)
        mean, std = _resolve_normalization(adapted, geometry)
        network = _build(arch_name, geometry, adapted)
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from None
    identity = all(m == 0 for m in mean) and all(s == 1 for s in std)
    model = network if identity else NormalizedModel(network, mean, std)
    model.eval()
    eps = adapted.meta.get("eps")
    return LoadedModel(
        model=model,
        arch=arch_name,
        dataset=geometry.dataset.value if geometry.dataset else None,
        num_classes=geometry.num_classes,
        input_shape=(geometry.in_ch, geometry.in_dim, geometry.in_dim),
        mean=tuple(mean),
        std=tuple(std),
        eps=float(eps) if isinstance(eps, int | float) else None,
        source_format=fmt,
    )
