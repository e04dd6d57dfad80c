"""eps parsing: fractions stay exact, bad values are refused with a usable message."""

import pytest

from certify.core.eps import format_eps, parse_eps
from certify.core.errors import UsageError


@pytest.mark.parametrize(
    ("text", "value"),
    [("8/255", 8 / 255), ("0.0314", 0.0314), (" 1/255 ", 1 / 255), ("0", 0.0), ("1", 1.0)],
)
def test_parse_valid(text: str, value: float) -> None:
    assert parse_eps(text) == value


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("8/0", "division by zero"),
        ("abc", "not a number"),
        ("-1", "outside [0, 1]"),
        ("2", "outside [0, 1]"),
        ("nan", "outside [0, 1]"),
        ("inf", "outside [0, 1]"),
        ("", "not a number"),
    ],
)
def test_parse_invalid(text: str, fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        parse_eps(text)


@pytest.mark.parametrize(("eps", "shown"), [(8 / 255, "8/255"), (0.4, "0.4"), (0.0314, "0.0314")])
def test_format_round_trips(eps: float, shown: str) -> None:
    assert format_eps(eps) == shown
    assert parse_eps(shown) == pytest.approx(eps, abs=0)
