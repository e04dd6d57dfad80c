"""CSV reports: appending keeps old rows, refuses foreign columns, writes atomically."""

import pytest

from certify.core.csv_files import append_rows, read_csv_file
from certify.core.errors import UsageError


def test_append_creates_then_appends(tmp_path) -> None:
    path = tmp_path / "r.csv"
    append_rows(path, [{"a": 1, "b": 0.5}], ["a", "b"])
    append_rows(path, [{"a": 2, "b": 0.25}], ["a", "b"])
    rows = read_csv_file(path)
    assert list(rows.columns) == ["a", "b"]
    assert list(rows["a"]) == ["1", "2"]
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_append_refuses_other_columns_and_keeps_file(tmp_path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("x,y\n1,2\n")
    with pytest.raises(UsageError, match="other columns"):
        append_rows(path, [{"a": 1}], ["a"])
    assert path.read_text() == "x,y\n1,2\n"


def test_missing_folder_is_a_usage_error(tmp_path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        append_rows(tmp_path / "nope" / "r.csv", [{"a": 1}], ["a"])


def test_written_files_are_readable_by_others_like_any_new_file(tmp_path) -> None:
    path = tmp_path / "r.csv"
    append_rows(path, [{"a": 1}], ["a"])
    reference = tmp_path / "plain.txt"
    reference.write_text("x")
    assert path.stat().st_mode & 0o777 == reference.stat().st_mode & 0o777
