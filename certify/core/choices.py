"""Parsing a user's name for one of an enum's values, with the one-line error that lists
the valid names."""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar

from certify.core.errors import UsageError

E = TypeVar("E", bound=StrEnum)


def parse_choice(kind: type[E], value: object, *, param: str, what: str) -> E:
    """``value`` (an enum member or its name, any case) as a member of ``kind``; a
    :class:`UsageError` naming ``param`` and the valid names otherwise."""
    if isinstance(value, kind):
        return value
    try:
        return kind(str(value).strip().lower())
    except ValueError:
        valid = ", ".join(member.value for member in kind)
        raise UsageError(f"unknown {what} {value!r}: use one of {valid}", param=param) from None
