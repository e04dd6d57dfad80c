"""The two ways an evaluation runs its methods over the images (:class:`EvalMode`)."""

from __future__ import annotations

from enum import StrEnum


class EvalMode(StrEnum):
    """``cascade``: each image decided by the cheapest stage that can; ``every-method``:
    each method and PGD run on every image, for tables with one column per method."""

    CASCADE = "cascade"
    EVERY_METHOD = "every-method"
