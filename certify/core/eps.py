"""Parsing of perturbation radii given on the command line.

eps is an L_inf radius in pixel space, where images lie in [0, 1]. Users write it as a
fraction (``8/255``) or a decimal (``0.0314``); fractions stay exact so that a preset of
8/255 is not silently rounded.
"""

from __future__ import annotations

import math
from fractions import Fraction

from certify.core.errors import UsageError


def parse_eps(text: str | float) -> float:
    """Return eps in [0, 1] from ``"8/255"``, ``"0.0314"`` or a number."""
    if isinstance(text, int | float):
        value = float(text)
        shown = repr(text)
    else:
        shown = text.strip()
        value = _parse_text(shown)
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise UsageError(
            f"{shown} is outside [0, 1]: give it in pixel space, e.g. 8/255 or 0.0314",
            param="eps",
        )
    return value


def _parse_text(text: str) -> float:
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            return float(Fraction(num.strip()) / Fraction(den.strip()))
        return float(text)
    except ZeroDivisionError:
        raise UsageError(f"{text}: division by zero; write e.g. 8/255", param="eps") from None
    except ValueError:
        raise UsageError(
            f"{text!r} is not a number; write e.g. 8/255 or 0.0314", param="eps"
        ) from None


def format_eps(eps: float) -> str:
    """Show eps as a short decimal (``0.4``) or, when it needs more digits and is a
    whole number of 255ths, as ``k/255``."""
    short = f"{eps:.4g}"
    if float(short) == eps:
        return short
    k = eps * 255
    if abs(k - round(k)) < 1e-9:
        return f"{round(k)}/255"
    return f"{eps:.6g}"
