"""Writing a model in certify's own checkpoint format.

The file records the architecture, its options, the input geometry and normalization
next to the weights, and holds only plain values and tensors, so a weights-only load
reads it back without further arguments. The model is checked against its architecture
before anything is written, and the file is replaced atomically.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from torch import nn

from certify.core.atomic_files import atomic_write
from certify.core.datasets import get_spec
from certify.core.errors import CheckpointError
from model_zoo.checkpoint.fit import Geometry, compare, probe_arch
from model_zoo.checkpoint.formats import (
    FORMAT_NAME,
    FORMAT_VERSION,
    META_FIELDS,
    Normalization,
    as_floats,
)
from model_zoo.normalization import NormalizedModel
from model_zoo.registry import canonical_name


def _plain(value: Any, where: str) -> Any:
    """``value`` as types a weights-only load can read back (no arbitrary objects)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Enum):
        return _plain(value.value, where)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise CheckpointError(
        f"{where} holds a {type(value).__name__}, which a checkpoint cannot store: "
        "use numbers, strings, lists or dicts"
    )


def _unwrap(model: nn.Module) -> tuple[nn.Module, Normalization | None]:
    """The bare network inside ``model``, and the normalization around it if any."""
    if isinstance(model, NormalizedModel):
        norm = model.normalize
        return model.model, (
            tuple(norm.mean.flatten().tolist()),
            tuple(norm.std.flatten().tolist()),
        )
    return model, None


def _complete_meta(meta: Mapping[str, Any], norm: Normalization | None) -> dict[str, Any]:
    """Every field of :data:`META_FIELDS`, checked, with defaults filled in, as plain values."""
    unknown = sorted(set(meta) - set(META_FIELDS))
    if unknown:
        raise CheckpointError(
            f"unknown checkpoint fields {', '.join(unknown)}: use {', '.join(META_FIELDS)}"
        )
    info = {k: meta.get(k) for k in META_FIELDS}
    if not info["arch"]:
        raise CheckpointError("checkpoint metadata needs 'arch'")
    info["arch"] = canonical_name(str(info["arch"]))
    spec = get_spec(info["dataset"]) if info["dataset"] else None
    info["dataset"] = spec.name.value if spec else None
    for key, attr in (("in_ch", "channels"), ("in_dim", "size"), ("num_classes", "num_classes")):
        if info[key] is None:
            if spec is None:
                raise CheckpointError(f"checkpoint metadata needs 'dataset' or '{key}'")
            info[key] = getattr(spec, attr)
    if info["mean"] is None or info["std"] is None:
        if norm is not None:
            info["mean"], info["std"] = norm
        elif spec is not None:
            info["mean"], info["std"] = spec.mean, spec.std
        else:
            info["mean"], info["std"] = (0.0,) * info["in_ch"], (1.0,) * info["in_ch"]
    info["mean"], info["std"] = (
        list(as_floats(info["mean"], "mean")),
        list(as_floats(info["std"], "std")),
    )
    info["eps"] = None if info["eps"] is None else float(info["eps"])
    info["train_args"] = _plain(info["train_args"] or {}, "train_args")
    info["arch_options"] = _plain(info["arch_options"] or {}, "arch_options")
    return _plain(info, "meta")


def _atomic_save(payload: Mapping[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda handle: torch.save(dict(payload), handle))


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    meta: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` in certify's format, atomically (temp file + ``os.replace``).

    ``model`` is the bare architecture or a :class:`NormalizedModel` around it. ``meta``
    needs ``arch`` and either ``dataset`` or ``in_ch``/``in_dim``/``num_classes``; the
    normalization defaults to the model's own, then the data set's. Optional fields:
    ``arch_options`` (keyword options given to ``create_model``, e.g. ``width``), ``eps``,
    ``method``, ``train_args`` (plain values only) and ``epoch``. ``extra`` entries (plain
    values and tensors, e.g. a training state) are stored beside them.
    """
    network, norm = _unwrap(model)
    info = _complete_meta(meta, norm)
    state_dict = {k: v.detach().cpu() for k, v in network.state_dict().items()}
    geometry = Geometry(None, info["in_ch"], info["in_dim"], info["num_classes"])
    mismatch = compare(probe_arch(info["arch"], geometry, info["arch_options"]), state_dict)
    if mismatch:
        raise CheckpointError(mismatch.describe(info["arch"], geometry, subject="the model"))
    payload = {"format": FORMAT_NAME, "version": FORMAT_VERSION, **info, "state_dict": state_dict}
    payload |= dict(extra or {})
    target = Path(path)
    try:
        _atomic_save(payload, target)
    except OSError as error:
        raise CheckpointError(
            f"{target}: cannot write the checkpoint ({error.strerror or error}); "
            "check that the folder is writable and has space"
        ) from None
    return target
