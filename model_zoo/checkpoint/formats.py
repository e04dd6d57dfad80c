"""Step 2 of loading a checkpoint: the formats certify reads, how to recognise each, and
one adapter per format.

An adapter returns an :class:`Adapted`: the state dict under the key names of the bare
registry architecture, plus the normalization and metadata the file records. Formats:
certify's own (:data:`FORMAT_NAME`), the seed's, CTRAIN's, CTBench's, the state dict of
certify's :class:`~model_zoo.normalization.NormalizedModel`, and a bare state dict.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from certify.core.datasets import Dataset
from certify.core.errors import CheckpointError

FORMAT_NAME = "certify"
FORMAT_VERSION = 1

StateDict = dict[str, torch.Tensor]
Normalization = tuple[tuple[float, ...], tuple[float, ...]]

# CTRAIN normalizes in its data loaders with its own constants, which differ from the
# seed's (certify.core.datasets); a CTRAIN network expects inputs normalized its way.
CTRAIN_NORMALIZATION: dict[Dataset, Normalization] = {
    Dataset.MNIST: ((0.1307,), (0.3081,)),
    Dataset.CIFAR: ((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)),
    Dataset.TINYIMAGENET: ((0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262)),
}

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# The metadata fields of certify's own format.
META_FIELDS = (
    "arch", "arch_options", "dataset", "in_ch", "in_dim", "num_classes", "mean", "std",
    "eps", "method", "train_args", "epoch",
)  # fmt: skip
# How many key names an error message lists before "...".
SHOWN_KEYS = 4


@dataclass
class Adapted:
    """What a format adapter extracts from a raw checkpoint.

    ``state_dict`` uses the key names of the bare registry architecture. ``normalization``
    is set when the file stores one; otherwise ``default_normalization`` (by data set)
    says what the source trained with, and ``None`` there means certify's data set specs.
    ``meta`` holds fields the file records about itself (arch, geometry, eps ...).
    """

    state_dict: StateDict
    normalization: Normalization | None = None
    default_normalization: Mapping[Dataset, Normalization] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- messages


def one_line(text: str, limit: int = 60) -> str:
    """``text`` with control characters escaped and cut to ``limit``, for an error message
    (keys and values come from the file, and a message must stay one line)."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shown(value: Any) -> str:
    """A value read from a file, for an error message: its repr on one line, cut short."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {list(value.shape)}"
    return one_line(repr(value))


# --------------------------------------------------------------------------- keys


def clean_state_dict(state_dict: Mapping[str, Any]) -> StateDict:
    """Strip wrapper prefixes (``module.`` of DataParallel, ``_orig_mod.`` of torch.compile).

    Raises :class:`CheckpointError` if a value is not a tensor or two keys collide.
    """
    cleaned: StateDict = {}
    origin: dict[str, str] = {}
    for key, value in state_dict.items():
        if not isinstance(key, str):
            raise CheckpointError(
                f"a key of the state dict is a {type(key).__name__} ({shown(key)}), not a "
                "name: the file is not a state dict"
            )
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"entry {shown(key)} holds a {type(value).__name__}, not a tensor: "
                "the file is not a state dict"
            )
        new_key = key
        while new_key.startswith(_WRAPPER_PREFIXES):
            new_key = new_key.split(".", 1)[1]
        # torch.compile also wraps submodules; "_orig_mod" is never a real layer name.
        new_key = new_key.replace("._orig_mod.", ".")
        if new_key in cleaned:
            raise CheckpointError(
                f"keys {shown(origin[new_key])} and {shown(key)} both name {shown(new_key)}: "
                "the file mixes wrapped and unwrapped state dicts"
            )
        cleaned[new_key], origin[new_key] = value, key
    return cleaned


def _strip_prefix(state_dict: StateDict, prefix: str) -> StateDict:
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix) :]: v for k, v in state_dict.items()}
    return state_dict


def as_floats(value: Any, what: str) -> tuple[float, ...]:
    """``value`` (a tensor, a number or numbers) as finite floats; ``what`` names it."""
    if isinstance(value, torch.Tensor):
        value = value.detach().flatten().tolist()
    if isinstance(value, int | float):
        value = [value]
    try:
        floats = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise CheckpointError(f"the stored {what} is not a list of numbers") from None
    if not floats or not all(math.isfinite(v) for v in floats):
        raise CheckpointError(f"the stored {what} is empty or not finite")
    return floats


# ----------------------------------------------------------------------- adapters


def _adapt_certify(raw: Mapping[str, Any]) -> Adapted:
    # Compared only as plain values: a damaged file can hold a tensor there, whose == is
    # elementwise and has no truth value.
    fmt, version = raw.get("format"), raw.get("version")
    if not isinstance(fmt, str) or fmt != FORMAT_NAME:
        raise CheckpointError(f"unknown checkpoint format {shown(fmt)}: expected {FORMAT_NAME!r}")
    if type(version) is not int or version != FORMAT_VERSION:
        raise CheckpointError(
            f"certify checkpoint version {shown(version)} is not readable by this "
            f"version of certify (reads version {FORMAT_VERSION}): upgrade certify"
        )
    required = ("arch", "in_ch", "in_dim", "num_classes", "mean", "std", "state_dict")
    missing = [k for k in required if raw.get(k) is None]
    if missing:
        raise CheckpointError(f"certify checkpoint lacks {', '.join(missing)}: save it again")
    if not isinstance(raw["state_dict"], Mapping):
        raise CheckpointError("the 'state_dict' entry is not a state dict: save it again")
    norm = (as_floats(raw["mean"], "mean"), as_floats(raw["std"], "std"))
    meta = {k: raw.get(k) for k in META_FIELDS}
    return Adapted(clean_state_dict(raw["state_dict"]), normalization=norm, meta=meta)


def _adapt_seed(raw: Mapping[str, Any]) -> Adapted:
    # The seed saves {"state_dict", "optimizer", "epoch", "best"}; the network itself
    # has no normalization (the seed normalized in its data pipeline).
    epoch = raw.get("epoch")
    meta = {"epoch": epoch if isinstance(epoch, int) else None}
    return Adapted(clean_state_dict(raw["state_dict"]), meta=meta)


def _adapt_ctrain(raw: Mapping[str, Any]) -> Adapted:
    # CTRAIN saves {"epoch", "model_state_dict", "optimizer_state_dict", "loss"} or a bare
    # state dict; its networks keep their layers in a Sequential named "layers".
    state = raw.get("model_state_dict", raw)
    if not isinstance(state, Mapping):
        raise CheckpointError("the 'model_state_dict' entry is not a state dict")
    state_dict = _strip_prefix(clean_state_dict(state), "layers.")
    return Adapted(state_dict, default_normalization=CTRAIN_NORMALIZATION)


def _adapt_ctbench(raw: Mapping[str, Any]) -> Adapted:
    # CTBench networks are Sequentials whose layer 0 normalizes (mean, std, or "sigma" in
    # its abstract-domain copy, stored under "layers."); every other index is one more
    # than in the bare architecture. Abstract ReLUs also store DeepZ slopes
    # ("deepz_lambda"), which are verifier state, not weights.
    state_dict: StateDict = {}
    for key, value in clean_state_dict(raw).items():
        # detect_format looks for the normalization with or without "layers." per key
        bare = key.removeprefix("layers.")
        if bare in state_dict:
            raise CheckpointError(
                f"keys {shown(key)} and {shown(bare)} both name layer {shown(bare)}"
            )
        state_dict[bare] = value
    mean = state_dict.pop("0.mean")
    std = state_dict.pop("0.sigma") if "0.sigma" in state_dict else state_dict.pop("0.std")
    shifted: StateDict = {}
    for key, value in state_dict.items():
        index, _, rest = key.partition(".")
        if rest.endswith("deepz_lambda"):
            continue
        if not index.isdigit() or int(index) == 0:
            raise CheckpointError(f"key {shown(key)} does not fit a CTBench Sequential network")
        shifted[f"{int(index) - 1}.{rest}"] = value
    norm = (as_floats(mean, "mean"), as_floats(std, "std"))
    return Adapted(shifted, normalization=norm)


def _adapt_normalized(raw: Mapping[str, Any]) -> Adapted:
    # The state dict of certify's own NormalizedModel: normalize.{mean,std} + model.*
    state_dict = clean_state_dict(raw)
    mean, std = state_dict.pop("normalize.mean"), state_dict.pop("normalize.std")
    state_dict = _strip_prefix(state_dict, "model.")
    return Adapted(state_dict, normalization=(as_floats(mean, "mean"), as_floats(std, "std")))


def _adapt_state_dict(raw: Mapping[str, Any]) -> Adapted:
    return Adapted(clean_state_dict(raw))


ADAPTERS: dict[str, Callable[[Mapping[str, Any]], Adapted]] = {
    "certify": _adapt_certify,
    "seed": _adapt_seed,
    "ctrain": _adapt_ctrain,
    "ctbench": _adapt_ctbench,
    "normalized_state_dict": _adapt_normalized,
    "state_dict": _adapt_state_dict,
}


def _is_tensor_map(value: Any) -> bool:
    return (
        isinstance(value, Mapping)
        and len(value) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())
    )


def detect_format(raw: Any) -> str:
    """Name the format of a loaded checkpoint object (a key of :data:`ADAPTERS`)."""
    if not isinstance(raw, Mapping):
        raise CheckpointError(
            f"the file holds a {type(raw).__name__}, not a checkpoint dict: "
            "expected a state dict or a dict with a 'state_dict' entry"
        )
    if "format" in raw:
        return "certify"
    if _is_tensor_map(raw.get("state_dict")):
        return "seed"
    if _is_tensor_map(raw.get("model_state_dict")):
        return "ctrain"
    if not _is_tensor_map(raw):
        keys = ", ".join(shown(k) for k in list(raw)[:SHOWN_KEYS]) or "none"
        raise CheckpointError(
            f"not a checkpoint: no 'state_dict' entry and not a state dict (top-level keys: "
            f"{keys}); save the model with torch.save(model.state_dict(), path)"
        )
    keys = set(clean_state_dict(raw))
    if {"normalize.mean", "normalize.std"} <= keys:
        return "normalized_state_dict"
    bare = {k.removeprefix("layers.") for k in keys}
    if "0.mean" in bare and ("0.sigma" in bare or "0.std" in bare):
        return "ctbench"
    if all(k.startswith("layers.") for k in keys):
        return "ctrain"
    return "state_dict"
