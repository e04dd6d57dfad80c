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
"""

from __future__ import annotations

import math
import os
import pickle
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from torch import nn

from certify.atomic_files import atomic_write
from certify.datasets import SPECS, Dataset, DatasetSpec, get_spec, parse_dataset
from certify.errors import CertifyError, CheckpointError, ModelError
from model_zoo.normalization import NormalizedModel
from model_zoo.registry import canonical_name, create_model, list_models

FORMAT_NAME = "certify"
FORMAT_VERSION = 1

StateDict = dict[str, torch.Tensor]
Normalization = tuple[tuple[float, ...], tuple[float, ...]]

# CTRAIN normalizes in its data loaders with its own constants, which differ from the
# seed's (certify.datasets); a CTRAIN network expects inputs normalized its way.
CTRAIN_NORMALIZATION: dict[Dataset, Normalization] = {
    Dataset.MNIST: ((0.1307,), (0.3081,)),
    Dataset.CIFAR: ((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)),
    Dataset.TINYIMAGENET: ((0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262)),
}

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_META_FIELDS = (
    "arch", "arch_options", "dataset", "in_ch", "in_dim", "num_classes", "mean", "std",
    "eps", "method", "train_args", "epoch",
)  # fmt: skip
_SHOWN_KEYS = 4


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


@dataclass(frozen=True)
class _Geometry:
    dataset: Dataset | None
    in_ch: int
    in_dim: int
    num_classes: int

    def describe(self) -> str:
        where = self.dataset.value if self.dataset else f"{self.in_ch}x{self.in_dim}x{self.in_dim}"
        return f"{where} input with {self.num_classes} classes"


# --------------------------------------------------------------------------- keys


def clean_state_dict(state_dict: Mapping[str, Any]) -> StateDict:
    """Strip wrapper prefixes (``module.`` of DataParallel, ``_orig_mod.`` of torch.compile).

    Raises :class:`CheckpointError` if a value is not a tensor or two keys collide.
    """
    cleaned: StateDict = {}
    origin: dict[str, str] = {}
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"entry {key!r} holds a {type(value).__name__}, not a tensor: "
                "the file is not a state dict"
            )
        new_key = key
        while new_key.startswith(_WRAPPER_PREFIXES):
            new_key = new_key.split(".", 1)[1]
        # torch.compile also wraps submodules; "_orig_mod" is never a real layer name.
        new_key = new_key.replace("._orig_mod.", ".")
        if new_key in cleaned:
            raise CheckpointError(
                f"keys {origin[new_key]!r} and {key!r} both name {new_key!r}: "
                "the file mixes wrapped and unwrapped state dicts"
            )
        cleaned[new_key], origin[new_key] = value, key
    return cleaned


def _strip_prefix(state_dict: StateDict, prefix: str) -> StateDict:
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix) :]: v for k, v in state_dict.items()}
    return state_dict


def _as_floats(value: Any, what: str) -> tuple[float, ...]:
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
    if raw.get("format") != FORMAT_NAME:
        raise CheckpointError(
            f"unknown checkpoint format {raw.get('format')!r}: expected {FORMAT_NAME!r}"
        )
    if raw.get("version") != FORMAT_VERSION:
        raise CheckpointError(
            f"certify checkpoint version {raw.get('version')!r} is not readable by this "
            f"version of certify (reads version {FORMAT_VERSION}): upgrade certify"
        )
    required = ("arch", "in_ch", "in_dim", "num_classes", "mean", "std", "state_dict")
    missing = [k for k in required if raw.get(k) is None]
    if missing:
        raise CheckpointError(f"certify checkpoint lacks {', '.join(missing)}: save it again")
    if not isinstance(raw["state_dict"], Mapping):
        raise CheckpointError("the 'state_dict' entry is not a state dict: save it again")
    norm = (_as_floats(raw["mean"], "mean"), _as_floats(raw["std"], "std"))
    meta = {k: raw.get(k) for k in _META_FIELDS}
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
    state_dict = _strip_prefix(clean_state_dict(raw), "layers.")
    mean = state_dict.pop("0.mean")
    std = state_dict.pop("0.sigma") if "0.sigma" in state_dict else state_dict.pop("0.std")
    shifted: StateDict = {}
    for key, value in state_dict.items():
        index, _, rest = key.partition(".")
        if rest.endswith("deepz_lambda"):
            continue
        if not index.isdigit() or int(index) == 0:
            raise CheckpointError(f"key {key!r} does not fit a CTBench Sequential network")
        shifted[f"{int(index) - 1}.{rest}"] = value
    norm = (_as_floats(mean, "mean"), _as_floats(std, "std"))
    return Adapted(shifted, normalization=norm)


def _adapt_normalized(raw: Mapping[str, Any]) -> Adapted:
    # The state dict of certify's own NormalizedModel: normalize.{mean,std} + model.*
    state_dict = clean_state_dict(raw)
    mean, std = state_dict.pop("normalize.mean"), state_dict.pop("normalize.std")
    state_dict = _strip_prefix(state_dict, "model.")
    return Adapted(state_dict, normalization=(_as_floats(mean, "mean"), _as_floats(std, "std")))


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
        keys = ", ".join(repr(k) for k in list(raw)[:_SHOWN_KEYS]) or "none"
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


# ------------------------------------------------------------------------ reading


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:160]


def _refusal(error: pickle.UnpicklingError) -> CheckpointError:
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
    if found is None:
        return CheckpointError(
            "the file is corrupt or not a PyTorch checkpoint (its pickle data is unreadable); "
            "download or save it again"
        )
    return CheckpointError(
        f"the file stores Python objects ({found.group(1)}), not only tensors, and certify "
        "never unpickles arbitrary objects: re-save it with "
        "torch.save(model.state_dict(), path) and load that"
    )


def read_checkpoint(path: str | os.PathLike[str]) -> Any:
    """Read a checkpoint file with ``weights_only=True`` (errors carry no path)."""
    file = Path(path)
    if not file.exists():
        raise CheckpointError("no such file: check the path")
    if file.is_dir():
        raise CheckpointError("this is a folder: pass the checkpoint file inside it")
    if file.stat().st_size == 0:
        raise CheckpointError(
            "the file is empty (0 bytes), probably cut off while being written: "
            "save or download it again"
        )
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols of older files; that is not our user's concern
            warnings.simplefilter("ignore")
            return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise _refusal(error) from None
    except OSError as error:
        raise CheckpointError(f"cannot read the file ({error.strerror or error})") from None
    except Exception as error:  # torch raises many types for damaged files
        raise CheckpointError(
            f"the file is truncated or not a PyTorch checkpoint ({_first_line(error)}); "
            "download or save it again"
        ) from None


# ----------------------------------------------------------------- layout checks


@dataclass
class _Mismatch:
    missing: list[str]
    unexpected: list[str]
    shapes: list[tuple[str, tuple[int, ...], tuple[int, ...]]]

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.shapes)

    def rank(self) -> tuple[int, int]:
        return len(self.missing) + len(self.unexpected), len(self.shapes)

    def describe(self, arch: str, geometry: _Geometry, subject: str = "the file") -> str:
        if self.missing or self.unexpected:
            return (
                f"{subject} does not fit architecture {arch!r}: {_listing(self.missing)} "
                f"missing, {_listing(self.unexpected)} unexpected; pass the --arch it was "
                f"trained with (known: {', '.join(list_models())})"
            )
        key, in_file, in_model = self.shapes[0]
        extra = len(self.shapes) - 1
        more = f" (and {extra} more mismatching tensor{'s' * (extra > 1)})" if extra else ""
        return (
            f"{key!r} has shape {list(in_file)} in {subject} but {list(in_model)} in {arch!r} "
            f"for {geometry.describe()}{more}: pass the --arch, --dataset and --num-classes "
            "the model was trained with"
        )


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN_KEYS])
    etc = ", ..." if len(keys) > _SHOWN_KEYS else ""
    return f"{len(keys)} keys ({shown}{etc})" if keys else "0 keys"


@dataclass(frozen=True)
class _Probe:
    shapes: dict[str, tuple[int, ...]]
    counters: frozenset[str]
    output_key: str | None


def _batchnorm_counters(model: nn.Module) -> frozenset[str]:
    """Keys of BatchNorm batch counters, which exporters such as auto_LiRPA omit."""
    return frozenset(
        f"{name}.num_batches_tracked" if name else "num_batches_tracked"
        for name, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
    )


def _probe(arch: str, geometry: _Geometry, options: Mapping[str, Any] | None = None) -> _Probe:
    """Key names and shapes of ``arch`` for ``geometry``, without allocating weights."""
    with torch.device("meta"):
        model = create_model(
            arch, geometry.in_ch, geometry.in_dim, geometry.num_classes, **(options or {})
        )
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    counters = _batchnorm_counters(model)
    matrices = [k for k, s in shapes.items() if k.endswith("weight") and len(s) == 2]
    return _Probe(shapes, counters, matrices[-1] if matrices else None)


def _compare(probe: _Probe, state_dict: StateDict) -> _Mismatch:
    missing = [k for k in probe.shapes if k not in state_dict and k not in probe.counters]
    unexpected = [k for k in state_dict if k not in probe.shapes]
    shapes = [
        (k, tuple(v.shape), probe.shapes[k])
        for k, v in state_dict.items()
        if k in probe.shapes and tuple(v.shape) != probe.shapes[k]
    ]
    return _Mismatch(missing, unexpected, shapes)


def _candidate(
    arch: str, spec: DatasetSpec, state_dict: StateDict, classes: int | None
) -> _Geometry:
    if classes is None:
        # The class count is the output size of the last matrix layer in the file.
        probe = _probe(arch, _Geometry(spec.name, spec.channels, spec.size, spec.num_classes))
        out = state_dict.get(probe.output_key) if probe.output_key else None
        classes = int(out.shape[0]) if out is not None and out.dim() == 2 else spec.num_classes
    return _Geometry(spec.name, spec.channels, spec.size, classes)


def _infer_geometry(
    arch: str, state_dict: StateDict, dataset: Dataset | None, num_classes: int | None
) -> _Geometry:
    """The first data set geometry (or the given one) whose shapes fit the state dict."""
    specs = [get_spec(dataset)] if dataset else list(SPECS.values())
    best: tuple[_Geometry, _Mismatch] | None = None
    for spec in specs:
        try:
            geometry = _candidate(arch, spec, state_dict, num_classes)
            mismatch = _compare(_probe(arch, geometry), state_dict)
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


def _stored_geometry(meta: Mapping[str, Any]) -> _Geometry:
    try:
        dataset = parse_dataset(meta["dataset"]) if meta.get("dataset") else None
    except CertifyError:
        raise CheckpointError(f"the file names an unknown data set {meta['dataset']!r}") from None
    values = [meta["in_ch"], meta["in_dim"], meta["num_classes"]]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        raise CheckpointError("the stored input geometry is not positive integers: save it again")
    return _Geometry(dataset, *values)


def _check_agrees(name: str, stored: Any, given: Any) -> None:
    if given is not None and stored is not None and given != stored:
        raise CheckpointError(
            f"the file is for {name} {getattr(stored, 'value', stored)!r}, not "
            f"{getattr(given, 'value', given)!r}: leave out --{name.replace('_', '-')}"
        )


# ------------------------------------------------------------------------ loading


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
) -> _Geometry:
    wanted = parse_dataset(dataset) if dataset is not None else None
    if adapted.meta.get("in_ch") is None:
        return _infer_geometry(arch, adapted.state_dict, wanted, num_classes)
    geometry = _stored_geometry(adapted.meta)
    _check_agrees("dataset", geometry.dataset, wanted)
    _check_agrees("num_classes", geometry.num_classes, num_classes)
    mismatch = _compare(_probe(arch, geometry, _arch_options(adapted)), adapted.state_dict)
    if mismatch:
        raise CheckpointError(mismatch.describe(arch, geometry) + " (the file is inconsistent)")
    return geometry


def _resolve_normalization(adapted: Adapted, geometry: _Geometry) -> Normalization:
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


def _build(arch: str, geometry: _Geometry, adapted: Adapted) -> nn.Module:
    model = create_model(
        arch, geometry.in_ch, geometry.in_dim, geometry.num_classes, **_arch_options(adapted)
    )
    full = dict(adapted.state_dict)
    own = model.state_dict()
    for key in _batchnorm_counters(model) - set(full):
        # The counter only matters for training with momentum=None; eval never reads it.
        full[key] = own[key]
    try:
        model.load_state_dict(full, strict=True)
    except RuntimeError as error:
        raise CheckpointError(f"the weights do not load: {_first_line(error)}") from None
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


# ------------------------------------------------------------------------ writing


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
    if isinstance(model, NormalizedModel):
        norm = model.normalize
        return model.model, (
            tuple(norm.mean.flatten().tolist()),
            tuple(norm.std.flatten().tolist()),
        )
    return model, None


def _complete_meta(meta: Mapping[str, Any], norm: Normalization | None) -> dict[str, Any]:
    unknown = sorted(set(meta) - set(_META_FIELDS))
    if unknown:
        raise CheckpointError(
            f"unknown checkpoint fields {', '.join(unknown)}: use {', '.join(_META_FIELDS)}"
        )
    info = {k: meta.get(k) for k in _META_FIELDS}
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
        list(_as_floats(info["mean"], "mean")),
        list(_as_floats(info["std"], "std")),
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
    geometry = _Geometry(None, info["in_ch"], info["in_dim"], info["num_classes"])
    mismatch = _compare(_probe(info["arch"], geometry, info["arch_options"]), state_dict)
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
