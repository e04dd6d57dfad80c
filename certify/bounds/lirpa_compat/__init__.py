"""Compatibility layer that makes auto-LiRPA 0.3 work on current torch and numpy.

certify computes its bounds (IBP, CROWN-IBP, CROWN, alpha-CROWN) with auto-LiRPA. The
only release on the package index, 0.3 (2022), was written for torch 1.12 and numpy 1.x;
on the torch and numpy that certify supports it fails to import, several of its operators
crash or give wrong bounds in ``conv_mode="patches"`` (its default), CROWN crashes on a
model without parameters (weights kept in buffers), alpha-CROWN on a sigmoid or tanh
before a convolution, its sigmoid and tanh lines are unsound past +-500 and loose
across 0 (:func:`~certify.bounds.s_shaped.s_shaped_relaxation` replaces them), and
alpha-CROWN's backward through every ReLU computes gradients that nothing asks for.
Every other module of certify gets auto_LiRPA from :func:`load_auto_lirpa`, never with a
plain ``import auto_LiRPA``::

    from certify.bounds.lirpa_compat import load_auto_lirpa

    auto_LiRPA = load_auto_lirpa()
    bounded = auto_LiRPA.BoundedModule(model, dummy_input, device="cpu")

Each breakage has one :class:`Patch` in :data:`PATCHES`: a ``needed()`` check that looks
for the missing symbol or runs the failing computation on tiny tensors (never a version
comparison), and an ``apply()`` that fixes it with ``setattr`` on an auto_LiRPA class (or,
for the few import-time breakages, with a shim that is only present while auto_LiRPA is
being imported). Nothing is patched when this package is imported, only on the first call
of :func:`load_auto_lirpa`; later calls return the same module. When a newer auto_LiRPA or
torch fixes a breakage, its ``needed()`` returns False and the patch is skipped.

The patches are grouped by what they fix, one module per family, each registering its
patches with the :func:`~certify.bounds.lirpa_compat.registry.patch` decorator where they
are written:

- :mod:`~certify.bounds.lirpa_compat.registry`: the registry, the order in which the
  patches are applied (:data:`~certify.bounds.lirpa_compat.registry.ORDER`), the loader
  and the helpers the families share;
- :mod:`~certify.bounds.lirpa_compat.import_shims`: what ``import auto_LiRPA`` needs;
- :mod:`~certify.bounds.lirpa_compat.torch_api`: torch APIs that changed under
  BoundedModule and its graph parsing;
- :mod:`~certify.bounds.lirpa_compat.buffers`: models whose weights are buffers;
- :mod:`~certify.bounds.lirpa_compat.patches_mode`: operators in ``conv_mode="patches"``;
- :mod:`~certify.bounds.lirpa_compat.alpha_crown`: alpha-CROWN's gradients through ReLU;
- :mod:`~certify.bounds.lirpa_compat.sigmoid_tanh`: the sigmoid and tanh relaxations.

A new patch goes in the module of its family (or a new one, imported below), with its
name added to ORDER. Leave patches out with the environment variable named by
:data:`SKIP_ENV` (``CERTIFY_LIRPA_SKIP=conv_groups_patches``).

tests/test_lirpa_compat.py proves each patch with a bound computation compared against an
independent reference (the sigmoid and tanh lines: tests/test_sigmoid_relaxation.py), and
fails naming the shim when a new torch moves one of the private symbols listed in
:data:`TORCH_PRIVATE_SYMBOLS`.
"""

from __future__ import annotations

# The family modules register their patches when imported; ORDER, not the order of these
# imports, decides the order in which they are applied.
from certify.bounds.lirpa_compat import (
    alpha_crown,
    buffers,
    import_shims,
    patches_mode,
    sigmoid_tanh,
    torch_api,
)
from certify.bounds.lirpa_compat.alpha_crown import clamp_unit_passing_gradient
from certify.bounds.lirpa_compat.registry import (
    ORDER,
    PATCHES,
    SKIP_ENV,
    TORCH_PRIVATE_SYMBOLS,
    Patch,
    applied_patches,
    check_every_patch_registered,
    load_auto_lirpa,
    patch,
    resolve,
)

check_every_patch_registered()

__all__ = [
    "ORDER",
    "PATCHES",
    "SKIP_ENV",
    "TORCH_PRIVATE_SYMBOLS",
    "Patch",
    "alpha_crown",
    "applied_patches",
    "buffers",
    "clamp_unit_passing_gradient",
    "import_shims",
    "load_auto_lirpa",
    "patch",
    "patches_mode",
    "resolve",
    "sigmoid_tanh",
    "torch_api",
]
