"""The registry of architectures: build any network by name.

Each architecture module in :mod:`model_zoo.architectures` decorates a short entry
function with :func:`register_model`; importing :mod:`model_zoo` imports them all, so
``create_model("cnn", in_ch=3, in_dim=32, num_classes=10)`` works everywhere and
``list_models()`` names what exists. The checkpoint loader and the CLI only ever refer
to architectures through this module.

An entry function takes the input geometry (``in_ch``, ``in_dim``, ``num_classes``)
plus optional keyword options (widths and the like) and returns an ``nn.Module`` that
expects normalized input; the normalization layer is added by the caller.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from torch import nn

from certify.core.errors import ModelError

EntryFn = Callable[..., nn.Module]
F = TypeVar("F", bound=EntryFn)

_REQUIRED_PARAMS = ("in_ch", "in_dim", "num_classes")


@dataclass(frozen=True)
class ModelEntry:
    """One registered architecture."""

    name: str
    fn: EntryFn
    aliases: tuple[str, ...] = ()

    @property
    def description(self) -> str:
        doc = inspect.getdoc(self.fn) or ""
        return doc.splitlines()[0] if doc else ""


_ENTRIES: dict[str, ModelEntry] = {}
_ALIASES: dict[str, str] = {}


def _check_entry_signature(name: str, fn: EntryFn) -> None:
    params = inspect.signature(fn).parameters
    missing = [p for p in _REQUIRED_PARAMS if p not in params]
    if missing:
        raise TypeError(f"entry function for {name!r} lacks parameters {missing}")


def _same_function(a: EntryFn, b: EntryFn) -> bool:
    # A reloaded module registers new function objects under the same names; that is
    # the same architecture, not a clash.
    return (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


def _add(entry: ModelEntry) -> None:
    for key in (entry.name, *entry.aliases):
        owner = _ALIASES.get(key, key if key in _ENTRIES else None)
        if owner is not None and not _same_function(_ENTRIES[owner].fn, entry.fn):
            raise ModelError(f"architecture name {key!r} is registered twice")
    _ENTRIES[entry.name] = entry
    for alias in entry.aliases:
        _ALIASES[alias] = entry.name


@overload
def register_model(fn: F) -> F: ...


@overload
def register_model(
    *, name: str | None = None, aliases: tuple[str, ...] = ()
) -> Callable[[F], F]: ...


def register_model(
    fn: F | None = None, *, name: str | None = None, aliases: tuple[str, ...] = ()
) -> F | Callable[[F], F]:
    """Register an entry function, as ``@register_model`` or ``@register_model(name=...)``.

    The architecture is listed under ``name`` (default: the function's name); ``aliases``
    are extra names that :func:`create_model` accepts but :func:`list_models` does not show.
    """

    def decorate(f: F) -> F:
        entry_name = name or f.__name__
        _check_entry_signature(entry_name, f)
        _add(ModelEntry(entry_name, f, tuple(aliases)))
        return f

    return decorate(fn) if fn is not None else decorate


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted names of the registered architectures, filtered by a shell-style pattern."""
    names = sorted(_ENTRIES, key=str.lower)
    if pattern is None:
        return names
    pat = pattern.lower()
    return [n for n in names if fnmatch.fnmatchcase(n.lower(), pat)]


def canonical_name(name: str) -> str:
    """The registered name for ``name``: exact, alias, or a case-insensitive match."""
    if name in _ENTRIES:
        return name
    if name in _ALIASES:
        return _ALIASES[name]
    folded = {k.lower(): k for k in _ENTRIES}
    folded.update({k.lower(): v for k, v in _ALIASES.items()})
    if name.lower() in folded:
        return folded[name.lower()]
    raise ModelError(
        f"unknown architecture {name!r}: use one of {', '.join(list_models())}", param="arch"
    )


def get_entry(name: str) -> ModelEntry:
    """The registry entry for ``name`` (any accepted spelling)."""
    return _ENTRIES[canonical_name(name)]


def _check_positive(**values: int) -> None:
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ModelError(f"{key} must be a positive integer, got {value!r}")


def create_model(name: str, in_ch: int, in_dim: int, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build architecture ``name`` for ``in_ch`` x ``in_dim`` x ``in_dim`` inputs.

    Extra keyword options (``width=...`` and so on) go to the entry function; an option
    it does not take raises :class:`ModelError` naming the ones it does.
    """
    entry = get_entry(name)
    _check_positive(in_ch=in_ch, in_dim=in_dim, num_classes=num_classes)
    signature = inspect.signature(entry.fn)
    options = [p for p in signature.parameters if p not in _REQUIRED_PARAMS]
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        accepted = ", ".join(options) or "none"
        raise ModelError(
            f"architecture {entry.name!r} has no option {', '.join(unknown)}: "
            f"its options are {accepted}"
        )
    return entry.fn(in_ch=in_ch, in_dim=in_dim, num_classes=num_classes, **kwargs)
