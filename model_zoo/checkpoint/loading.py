"""Building a ready model from a checkpoint file: the last step of loading.

:func:`load_checkpoint` runs the steps that :mod:`model_zoo.checkpoint` lists and
resolves what the file does not say (architecture, geometry, normalization) from the
caller's arguments or from the tensor shapes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from certify.core.datasets import Dataset, get_spec, parse_dataset
from certify.core.errors import (
    CertifyError,
    CheckpointError,
    ModelError,
    UsageError,
    first_line,
)
from model_zoo.checkpoint.fit import (
    Geometry,
    batchnorm_counters,
    compare,
    infer_geometry,
    probe_arch,
)
from model_zoo.checkpoint.formats import (
    ADAPTERS,
    Adapted,
    Normalization,
    clean_state_dict,
    detect_format,
    shown,
)
from model_zoo.checkpoint.reading import read_checkpoint
from model_zoo.definition import ModelDefinition
from model_zoo.loaded import LoadedModel
from model_zoo.normalization import NormalizedModel
from model_zoo.registry import canonical_name, create_model, list_models


def _stored_geometry(meta: Mapping[str, Any]) -> Geometry:
    stored = meta.get("dataset")
    if stored is not None and not isinstance(stored, str):
        raise CheckpointError(f"the stored data set is a {type(stored).__name__}, not a name")
    try:
        dataset = parse_dataset(stored) if stored else None
    except CertifyError:
        raise CheckpointError(f"the file names an unknown data set {shown(stored)}") from None
    values = [meta["in_ch"], meta["in_dim"], meta["num_classes"]]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        raise CheckpointError("the stored input geometry is not positive integers: save it again")
    return Geometry(dataset, *values)


def _check_agrees(name: str, stored: Any, given: Any) -> None:
    if given is not None and stored is not None and given != stored:
        raise CheckpointError(
            f"the file is for {name} {getattr(stored, 'value', stored)!r}, not "
            f"{getattr(given, 'value', given)!r}: leave out `{name}`"
        )


def _resolve_arch(adapted: Adapted, fmt: str, arch: str | None) -> str:
    stored = adapted.meta.get("arch")
    if stored is not None:
        if not isinstance(stored, str):
            raise CheckpointError(f"the stored arch is a {type(stored).__name__}, not a name")
        try:
            stored = canonical_name(stored)
        except ModelError as error:  # the file's fault, not an argument's
            raise CheckpointError(f"the stored arch is unknown: {error.reason}") from None
        if arch is not None:
            _check_agrees("arch", stored, canonical_name(arch))
        return stored
    if arch is None:
        raise CheckpointError(
            f"a {fmt} checkpoint does not name its architecture: pass `arch` NAME; "
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
    try:
        probe = probe_arch(arch, geometry, _arch_options(adapted))
    except ModelError as error:
        raise CheckpointError(f"the stored geometry does not fit: {error}") from None
    mismatch = compare(probe, adapted.state_dict)
    if mismatch:
        raise CheckpointError(mismatch.describe(arch, geometry) + " (the file is inconsistent)")
    return geometry


def _resolve_normalization(adapted: Adapted, geometry: Geometry) -> Normalization:
    if adapted.normalization is not None:
        mean, std = adapted.normalization
    elif geometry.dataset is None:
        mean, std = (0.0,) * geometry.in_ch, (1.0,) * geometry.in_ch
    elif adapted.default_normalization and geometry.dataset in adapted.default_normalization:
        mean, std = adapted.default_normalization[geometry.dataset]
    else:
        spec = get_spec(geometry.dataset)
        mean, std = spec.mean, spec.std
    if len(mean) != len(std) or len(mean) not in (1, geometry.in_ch):
        raise CheckpointError(
            f"the stored normalization has {len(mean)} means and {len(std)} stds for "
            f"{geometry.in_ch} input channels: save it again"
        )
    # As the model computes them: a std that float32 rounds to 0 or infinity divides
    # every pixel by 0 or by infinity.
    if not all(math.isfinite(m) for m in torch.tensor(mean, dtype=torch.float32).tolist()):
        raise CheckpointError("the stored normalization has a mean that is not finite")
    std32 = torch.tensor(std, dtype=torch.float32).tolist()
    if any(not math.isfinite(s) or s <= 0 for s in std32):
        raise CheckpointError(
            "the stored normalization has a std that is not a positive float32 number"
        )
    return mean, std


def _arch_options(adapted: Adapted) -> dict[str, Any]:
    options = adapted.meta.get("arch_options")
    if options is None:
        return {}
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
    :class:`~certify.core.errors.ModelError` for an unknown architecture name).
    """
    try:
        return model_from_checkpoint(read_checkpoint(path), arch, dataset, num_classes)
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from None


def model_from_checkpoint(
    raw: Any,
    arch: str | None = None,
    dataset: str | None = None,
    num_classes: int | None = None,
) -> LoadedModel:
    """:func:`load_checkpoint` for what ``torch.load`` returned (errors carry no path)."""
    fmt = detect_format(raw)
    adapted = ADAPTERS[fmt](raw)
    arch_name = _resolve_arch(adapted, fmt, arch)
    geometry = _resolve_geometry(arch_name, adapted, dataset, num_classes)
    mean, std = _resolve_normalization(adapted, geometry)
    network = _build(arch_name, geometry, adapted)
    identity = all(m == 0 for m in mean) and all(s == 1 for s in std)
    try:
        model = network if identity else NormalizedModel(network, mean, std)
    except UsageError as error:  # the stored values' fault, not an argument's
        raise CheckpointError(f"the stored normalization is unusable: {error.reason}") from None
    model.eval()
    eps = adapted.meta.get("eps")
    return LoadedModel(
        model=model,
        arch=arch_name,
        dataset=geometry.dataset,
        num_classes=geometry.num_classes,
        input_shape=(geometry.in_ch, geometry.in_dim, geometry.in_dim),
        mean=tuple(mean),
        std=tuple(std),
        eps=float(eps) if isinstance(eps, int | float) else None,
        source_format=fmt,
    )


def load_defined(
    path: str | os.PathLike[str],
    definition: ModelDefinition,
    dataset: Dataset | None = None,
) -> LoadedModel:
    """The checkpoint at ``path`` loaded into the network that ``definition`` builds (which
    runs the user's code), strictly, after the same format detection as for the registry's
    architectures. The network takes what it was trained on: pixels in [0, 1] unless the
    file stores a normalization (then it is wrapped in it)."""
    try:
        raw = read_checkpoint(path)
        fmt = detect_format(raw)
        adapted = ADAPTERS[fmt](raw)
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from None
    network = definition.build()
    loaded = _load_strictly(network, [adapted.state_dict, _unadapted(raw)], path, definition)
    # A stored normalization goes around the network only where the adapter took it out
    # of the state dict; a file that loads as it is keeps it inside the user's network.
    normalization = adapted.normalization if loaded == 0 else None
    stored = adapted.meta.get("dataset")
    if dataset is None and isinstance(stored, str):
        dataset = parse_dataset(stored)
    spec = get_spec(dataset) if dataset is not None else None
    channels = spec.channels if spec is not None else 1
    mean, std = normalization or ((0.0,) * channels, (1.0,) * channels)
    model = NormalizedModel(network, mean, std) if normalization else network
    eps = adapted.meta.get("eps")
    return LoadedModel(
        model=model.eval(),
        arch=definition.describe(),
        dataset=dataset,
        num_classes=spec.num_classes if spec is not None else 0,
        input_shape=spec.input_shape if spec is not None else (0, 0, 0),
        mean=tuple(mean),
        std=tuple(std),
        eps=float(eps) if isinstance(eps, int | float) else None,
        source_format=fmt,
    )


def _unadapted(raw: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The file's state dict with only wrapper prefixes stripped: a user's network may
    name its layers as a format adapter would strip them (``layers.``)."""
    for key in ("state_dict", "model_state_dict"):
        if isinstance(raw.get(key), Mapping):
            return clean_state_dict(raw[key])
    return clean_state_dict(raw)


# Keys named in an error about a state dict that does not fit, at most.
_SHOWN_KEYS = 4


def _load_strictly(
    network: nn.Module,
    candidates: list[Mapping[str, torch.Tensor]],
    path: str | os.PathLike[str],
    definition: ModelDefinition,
) -> int:
    """Load the first candidate state dict that fits ``network`` exactly and return its
    position; otherwise say how the first one differs."""
    own = network.state_dict()
    for position, state in enumerate(candidates):
        full = dict(state)
        for key in batchnorm_counters(network) - set(full):
            full[key] = own[key]  # eval never reads BatchNorm's batch counter
        if set(full) == set(own) and all(full[k].shape == own[k].shape for k in own):
            network.load_state_dict(full, strict=True)
            return position
    state = dict(candidates[0])
    missing = [k for k in own if k not in state and k not in batchnorm_counters(network)]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and state[k].shape != own[k].shape]
    parts = []
    if missing:
        parts.append(f"missing in the file: {', '.join(missing[:_SHOWN_KEYS])}")
    if unexpected:
        parts.append(f"not in {definition.factory}: {', '.join(unexpected[:_SHOWN_KEYS])}")
    for key in shapes[:_SHOWN_KEYS]:
        file_shape, model_shape = tuple(state[key].shape), tuple(own[key].shape)
        parts.append(f"{key} is {file_shape} in the file but {model_shape} in the model")
    raise CheckpointError(
        f"{path}: the state dict does not fit {definition.describe()} "
        f"({'; '.join(parts)}): check the factory and its keyword arguments (`model_args`)"
    )
