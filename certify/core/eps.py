"""Parsing of perturbation radii given on the command line.

eps is an L_inf radius in pixel space, where images lie in [0, 1]. Users write it as a
fraction (``8/255``) or a decimal (``0.0314``); fractions stay exact so that a preset of
8/255 is not silently rounded.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

from certify.core.errors import UsageError


def parse_eps(text: str | float) -> float:
    """Return eps in [0, 1] from ``"8/255"``, ``"0.0314"`` or a number."""
    if isinstance(text, int | float):
        value = float(text)
        shown = repr(text)
    else:
        value = _parse_text(text.strip())
        shown = _short(text.strip())
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise UsageError(
            f"{shown} is outside [0, 1]: give it in pixel space, e.g. 8/255 or 0.0314",
            param="eps",
        )
    return value


# Fraction("1e999999") builds 10**999999 exactly, which is slow; no eps
# needs an exponent beyond float's range, so larger ones are refused before that.
_EXPONENT = re.compile(r"e([-+]?[0-9_]+)", re.IGNORECASE)
_LARGEST_EXPONENT = 400


def _parse_text(text: str) -> float:
    try:
        if "/" in text:
            num, den = text.split("/", 1)
            return float(_exact(num, text) / _exact(den, text))
        return float(text)
    except ZeroDivisionError:
        raise UsageError(
            f"{_short(text)}: division by zero; write e.g. 8/255", param="eps"
        ) from None
    except OverflowError:  # the quotient is beyond float's range
        raise UsageError(
            f"{_short(text)} is outside [0, 1]: give it in pixel space, e.g. 8/255 or 0.0314",
            param="eps",
        ) from None
    except ValueError:
        raise UsageError(
            f"{_short(text)!r} is not a number; write e.g. 8/255 or 0.0314", param="eps"
        ) from None


def _exact(part: str, text: str) -> Fraction:
    """One side of ``a/b`` as an exact fraction."""
    part = part.strip()
    exponent = _EXPONENT.search(part)
    if exponent is not None and abs(int(exponent.group(1))) > _LARGEST_EXPONENT:
        raise UsageError(
            f"{_short(text)}: the exponent is out of range; write e.g. 8/255", param="eps"
        )
    return Fraction(part)


def _short(text: str) -> str:
    """``text`` cut and with control characters escaped, for a one-line error message."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= 40 else text[:37] + "..."


def format_eps(eps: float) -> str:
    """Show eps as a short decimal (``0.4``) or, when it needs more digits and is a
    whole number of 255ths, as ``k/255``."""
    short = f"{eps:.4g}"
    if float(short) == eps:
        return short
    k = eps * 255
    if round(k) >= 1 and abs(k - round(k)) < 1e-9:  # not for tiny eps, whose k rounds to 0
        return f"{round(k)}/255"
    return f"{eps:.6g}"
