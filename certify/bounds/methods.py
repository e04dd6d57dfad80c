"""The bound methods, in one table: each one's name, label, place in the order of cost,
how it bounds and how its work is shared out.

Adding a method is one entry here and its bounder (the ``bounding`` kind that
:class:`~certify.bounds.margins.MarginBounder` builds). Evaluation, the reports and the
CLI take the order, labels and chunking from here. This module imports nothing of
certify's but its errors, so that the CLI can list the methods without loading the bounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from certify.core.errors import UsageError


class Bounding(StrEnum):
    """How a method's bounds are computed."""

    INTERVAL = "interval"  # IBP: the hand-written interval pass where it matches auto_LiRPA
    LIRPA = "lirpa"  # one of auto_LiRPA's methods, by its name there
    OPTIMIZED = "optimized"  # auto_LiRPA's slopes optimized by gradient steps
    BRANCH_AND_BOUND = "branch-and-bound"  # certify.bounds.bab, image by image


class Chunking(StrEnum):
    """How many images a method bounds at once."""

    BATCH = "batch"  # the evaluation's batch size
    MEMORY = "memory"  # chunks sized from the memory at hand
    IMAGE = "image"  # one image at a time (its subdomains sized from memory)


@dataclass(frozen=True)
class MethodInfo:
    label: str
    bounding: Bounding
    chunking: Chunking
    lirpa_name: str | None = None


class BoundMethod(StrEnum):
    """The bound methods, in order of cost."""

    IBP = "ibp"
    CROWN_IBP = "crown-ibp"
    CROWN = "crown"
    ALPHA_CROWN = "alpha-crown"
    # Complete: branch and bound with beta-CROWN.
    BAB = "bab"

    @property
    def info(self) -> MethodInfo:
        return METHOD_TABLE[self]

    @property
    def label(self) -> str:
        return self.info.label

    @property
    def lirpa_name(self) -> str:
        """The method's name in auto_LiRPA's ``compute_bounds``."""
        name = self.info.lirpa_name
        if name is None:
            raise ValueError(f"{self.value} is not one of auto_LiRPA's methods")
        return name


METHOD_TABLE: dict[BoundMethod, MethodInfo] = {
    BoundMethod.IBP: MethodInfo("IBP", Bounding.INTERVAL, Chunking.BATCH, "IBP"),
    BoundMethod.CROWN_IBP: MethodInfo("CROWN-IBP", Bounding.LIRPA, Chunking.BATCH, "CROWN-IBP"),
    BoundMethod.CROWN: MethodInfo("CROWN", Bounding.LIRPA, Chunking.MEMORY, "CROWN"),
    BoundMethod.ALPHA_CROWN: MethodInfo(
        "alpha-CROWN", Bounding.OPTIMIZED, Chunking.MEMORY, "CROWN-Optimized"
    ),
    BoundMethod.BAB: MethodInfo("bab", Bounding.BRANCH_AND_BOUND, Chunking.IMAGE),
}

# alpha-CROWN costs tens of CROWN passes and bab minutes per image: named when wanted.
DEFAULT_METHODS = (BoundMethod.IBP, BoundMethod.CROWN_IBP, BoundMethod.CROWN)


def parse_methods(text: str | list[str] | tuple[str, ...]) -> list[BoundMethod]:
    """Parse ``"ibp,crown"`` (or a sequence) into methods, in the order given, no repeats."""
    names = text.split(",") if isinstance(text, str) else list(text)
    methods: list[BoundMethod] = []
    for name in names:
        key = str(name).strip().lower()
        if not key:
            continue
        try:
            method = BoundMethod(key)
        except ValueError:
            valid = ", ".join(m.value for m in BoundMethod)
            raise UsageError(
                f"unknown bound method {name!r}: use one of {valid}", param="methods"
            ) from None
        if method not in methods:
            methods.append(method)
    if BoundMethod.BAB in methods and BoundMethod.ALPHA_CROWN not in methods:
        # Branch and bound starts from the images alpha-CROWN leaves open.
        methods.insert(methods.index(BoundMethod.BAB), BoundMethod.ALPHA_CROWN)
    if not methods:
        valid = ", ".join(m.value for m in BoundMethod)
        raise UsageError(f"no bound method given: name at least one of {valid}", param="methods")
    return methods
