"""The core of the compatibility layer: the registry of patches and the loader that
applies them.

Each family module of this package registers its patches here, where they are written,
with the :func:`patch` decorator; :data:`ORDER` fixes the order in which
:func:`load_auto_lirpa` checks and applies them. The import-time shims also find their
private torch symbols here (:data:`TORCH_PRIVATE_SYMBOLS`, :func:`first_resolvable`), and
every family gets the auto_LiRPA modules it patches from the small accessors at the end
(:func:`bound_ops`, :func:`patches_class`, :func:`clamped_multiplication`), which import
them only when a patch runs.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import logging
import os
import sys
import threading
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from certify.core.errors import CertifyError

logger = logging.getLogger(__name__)

#: Private torch symbols that the shims (and auto_LiRPA itself, last entries) rely on, by
#: name: each entry lists the dotted locations where the symbol has lived, newest first.
#: tests/test_lirpa_compat.py checks that one of them still resolves, so a torch that moves
#: one fails with the shim's name.
TORCH_PRIVATE_SYMBOLS: dict[str, tuple[str, ...]] = {
    "torch_onnx_private_api": (
        "torch.onnx._internal.torchscript_exporter.utils._optimize_graph",
        "torch.onnx.utils._optimize_graph",
    ),
    "torch_onnx_opset_global": (
        "torch.onnx._internal.torchscript_exporter._globals.GLOBALS",
        "torch.onnx._globals.GLOBALS",
    ),
    "node_getitem": ("torch._C.Node.kindOf",),
    "named_members_remove_duplicate": ("torch.nn.Module._named_members",),
    "jit_trace_graph": ("torch.jit._get_trace_graph",),
    "jit_unique_state_dict": ("torch.jit._unique_state_dict",),
    "jit_profiling_executor": ("torch._C._jit_set_profiling_executor",),
    "jit_profiling_mode": ("torch._C._jit_set_profiling_mode",),
}


@dataclass(frozen=True)
class Patch:
    """One fix. ``apply()`` may return an undo callable: import-time shims (``at_import``)
    are applied before ``import auto_LiRPA`` and undone right after it, so that other code
    never sees them."""

    name: str
    needed: Callable[[], bool]
    apply: Callable[[], Callable[[], None] | None]
    at_import: bool = False


#: The order in which the patches are checked and applied, whichever module registers
#: them. It matters: each ``needed()`` runs with the patches before it already applied
#: (several probes build the same auto_LiRPA nodes), and several patches wrap a method
#: that an earlier one may have replaced. Import-time shims come first.
ORDER: tuple[str, ...] = (
    "numpy_arraysetops",
    "tqdm_missing",
    "torch_onnx_private_api",
    "node_getitem",
    "named_members_remove_duplicate",
    "register_parameter_torch_six",
    "buffers_param",
    "avgpool_contiguous",
    "mul_channel_const_patches",
    "constant_operand_patches",
    "conv_groups_patches",
    "dense_bias_flatten",
    "buffer_batch_dim",
    "flat_add_matrix_mode",
    "alpha_clamp_gradient",
    "clampmult_gradients",
    "pad_attributes",
    "parameterless_model",
    "s_shaped_relaxation",
    "s_shaped_conv_alpha",
)

#: Every registered patch, kept in :data:`ORDER`.
PATCHES: list[Patch] = []

#: Comma-separated patch names to leave out, to check that a test fails without its patch
#: or to rule a patch out when chasing a bug: ``CERTIFY_LIRPA_SKIP=conv_groups_patches``.
SKIP_ENV = "CERTIFY_LIRPA_SKIP"

_LOCK = threading.Lock()
_MODULE: types.ModuleType | None = None
_APPLIED: list[str] = []

_Apply = TypeVar("_Apply", bound=Callable[[], Callable[[], None] | None])


def patch(
    name: str,
    *,
    needed: Callable[[], bool] | None = None,
    probe: Callable[[], bool] | None = None,
    at_import: bool = False,
) -> Callable[[_Apply], _Apply]:
    """Register the decorated function as the ``apply()`` of patch ``name``, which must be
    listed in :data:`ORDER`. Give either ``needed``, a check that is True when the fix is
    needed (a missing symbol, a changed signature), or ``probe``, a tiny computation that
    is True when auto_LiRPA gets it right (see :func:`_probe_fails`). ``at_import`` marks a
    shim that must be in place while auto_LiRPA is imported."""
    if name not in ORDER:
        raise ValueError(f"patch {name} is not listed in ORDER of {__name__}")
    if probe is not None and needed is None:
        check: Callable[[], bool] = functools.partial(_probe_fails, probe)
    elif needed is not None and probe is None:
        check = needed
    else:
        raise TypeError(f"patch {name}: give exactly one of needed= and probe=")

    def register(apply: _Apply) -> _Apply:
        if any(p.name == name for p in PATCHES):
            raise ValueError(f"patch {name} is registered twice")
        PATCHES.append(Patch(name, check, apply, at_import))
        PATCHES.sort(key=lambda p: ORDER.index(p.name))
        return apply

    return register


def check_every_patch_registered() -> None:
    """Raise when a patch listed in :data:`ORDER` has no registered code: the package
    imports every family module, so that can only be a patch renamed or removed in one
    place and not the other."""
    missing = set(ORDER) - {p.name for p in PATCHES}
    if missing:
        raise ImportError(f"patches listed in ORDER but never registered: {sorted(missing)}")


def load_auto_lirpa() -> types.ModuleType:
    """Apply every needed patch (idempotent, thread-safe enough) and return the imported
    auto_LiRPA module.

    Raises CertifyError when auto_LiRPA is not installed or cannot be imported even with
    the import-time shims.
    """
    global _MODULE
    with _LOCK:
        if _MODULE is not None:
            return _MODULE
        if importlib.util.find_spec("auto_LiRPA") is None:
            raise CertifyError(
                "auto-LiRPA is not installed; run ./install.sh "
                "(it installs auto-LiRPA 0.3 without its declared dependencies)"
            )
        applied: list[str] = []
        skip = _skipped()
        module = _import_with_shims(applied, skip)
        for patch in PATCHES:
            if not patch.at_import and patch.name not in skip and patch.needed():
                patch.apply()
                applied.append(patch.name)
        logger.debug("auto_LiRPA %s patched with: %s", _version(module), ", ".join(applied))
        _APPLIED[:] = applied
        _MODULE = module
        return module


def applied_patches() -> list[str]:
    """Names of the patches that load_auto_lirpa() applied (empty before its first call)."""
    with _LOCK:
        return list(_APPLIED)


def _version(module: types.ModuleType) -> str:
    return str(getattr(module, "__version__", "?"))


def _skipped() -> set[str]:
    names = {n.strip() for n in os.environ.get(SKIP_ENV, "").split(",") if n.strip()}
    if names:
        logger.warning("%s: leaving out auto_LiRPA patches %s", SKIP_ENV, sorted(names))
    return names


def _import_with_shims(applied: list[str], skip: set[str]) -> types.ModuleType:
    undo: list[Callable[[], None]] = []
    try:
        for patch in PATCHES:
            if patch.at_import and patch.name not in skip and patch.needed():
                restore = patch.apply()
                if restore is not None:
                    undo.append(restore)
                applied.append(patch.name)
        # auto_LiRPA calls warnings.simplefilter("once") at import, which would change the
        # warning filters of the whole process, and its torch.jit.script decorators warn
        # that TorchScript is deprecated: catch_warnings() puts the filters back, and the
        # recorded warnings go to the debug log instead of the user's terminal.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                module = importlib.import_module("auto_LiRPA")
            except Exception as exc:
                raise CertifyError(
                    f"auto_LiRPA failed to import ({type(exc).__name__}: {exc}); "
                    "certify.bounds.lirpa_compat lacks a shim for this torch/numpy"
                ) from exc
        for warning in {str(w.message) for w in caught}:
            logger.debug("while importing auto_LiRPA: %s", warning)
        return module
    finally:
        for restore in reversed(undo):
            restore()


# --- helpers the family modules share --------------------------------------------------


def _probe_fails(probe: Callable[[], bool]) -> bool:
    """Run a tiny computation that exercises a known bug; True when it crashes or gives a
    wrong answer (probe returns False). A probe that fails because auto_LiRPA's internals
    changed also says True: the patch relies on the same internals, and the tests of
    tests/test_lirpa_compat.py then show whether it still fits."""
    try:
        return not probe()
    except Exception as exc:  # a probe that cannot even run counts as buggy, see below
        logger.debug("probe %s failed: %s: %s", probe.__name__, type(exc).__name__, exc)
        return True


def resolve(dotted: str) -> Any:
    """The object at a dotted path such as ``torch.onnx.utils._optimize_graph``; raises
    AttributeError or ImportError when it is not there."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(f"no module in {dotted}")


def first_resolvable(shim: str) -> Any:
    """The first location of ``TORCH_PRIVATE_SYMBOLS[shim]`` that this torch has; raises
    CertifyError, naming the shim, when it has none."""
    for location in TORCH_PRIVATE_SYMBOLS[shim]:
        with contextlib.suppress(ImportError, AttributeError):
            return resolve(location)
    raise CertifyError(
        f"shim {shim} of certify.bounds.lirpa_compat broke: none of "
        f"{', '.join(TORCH_PRIVATE_SYMBOLS[shim])} exists in this torch"
    )


def lacks(dotted: str) -> bool:
    """True when nothing is at the dotted path."""
    try:
        resolve(dotted)
    except (ImportError, AttributeError):
        return True
    return False


def temporary_module(name: str, module: types.ModuleType) -> Callable[[], None]:
    """Put ``module`` in sys.modules as ``name``; returns the undo."""
    sys.modules[name] = module

    def restore() -> None:
        if sys.modules.get(name) is module:
            del sys.modules[name]

    return restore


def temporary_attr(owner: Any, name: str, value: Any) -> Callable[[], None]:
    """Set ``owner.name`` to ``value``; returns the undo."""
    setattr(owner, name, value)

    def restore() -> None:
        if getattr(owner, name, None) is value:
            delattr(owner, name)

    return restore


def bound_ops() -> types.ModuleType:
    """auto_LiRPA's operators (BoundConv, BoundAdd, BoundRelu...), imported once a patch
    needs them."""
    return importlib.import_module("auto_LiRPA.bound_ops")


def clamped_multiplication() -> type:
    """auto_LiRPA's sign-split product ``A+ * d_pos + A- * d_neg`` (an autograd Function)."""
    return importlib.import_module("auto_LiRPA.operators.clampmult").ClampedMultiplication


def patches_class() -> type:
    """auto_LiRPA's Patches, the A of a convolution in conv_mode "patches"."""
    return importlib.import_module("auto_LiRPA.patches").Patches
