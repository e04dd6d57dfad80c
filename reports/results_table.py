"""The table of ``certify report``: a row per (model, data set, eps) with the errors of
every bound method side by side, filtered, sorted and grouped.

It takes the rows that :mod:`reports.results_reading` reads and returns DataFrames;
:mod:`reports.table_rendering` turns them into text. A bad filter, sort or group column
raises :class:`~certify.core.errors.UsageError` naming the argument at fault.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import pandas as pd

from certify.bounds.methods import BoundMethod
from certify.core.eps import parse_eps
from certify.core.errors import UsageError
from reports.results_reading import COUNTS, read_results

KEY_COLUMNS = ("model", "dataset", "eps", "mode", "method")
# The order of the bound methods in the table; methods we do not know come after these.
METHOD_ORDER = tuple(m.value for m in BoundMethod)
BEST_COLUMN = "best_method"
ERROR_PREFIX = "verified_"
_WHERE = re.compile(r"^\s*([A-Za-z_][\w-]*)\s*(<=|>=|!=|=|<|>)\s*(.*?)\s*$")


@dataclass(frozen=True)
class Condition:
    """One filter: ``column op value`` (op one of = != < <= > >=)."""

    column: str
    op: str
    value: str

    @classmethod
    def parse(cls, text: str) -> Condition:
        match = _WHERE.match(text)
        if not match:
            raise UsageError(
                f"cannot read `where` {text!r}; write e.g. dataset=cifar or pgd<30", param="where"
            )
        return cls(*match.groups())


def merged_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, data set, eps, mode, method), summing the shards.

    Rows of one key whose image ranges ``[start, start + num_samples)`` are disjoint are
    shards of one evaluation: their counts add up and the errors are recomputed from the
    sums. A row whose range overlaps that of a later row is an older run of the same
    images and gives way to it; rows without a date lose to dated ones, and on equal
    dates the row read last wins.
    """
    newest_first = rows.sort_values(["date", "order"], na_position="first", kind="stable")[::-1]
    merged = []
    for _, group in newest_first.groupby(list(KEY_COLUMNS), sort=False, dropna=False):
        kept: list[pd.Series] = []
        for _, row in group.iterrows():
            if not any(_overlap(row, other) for other in kept):
                kept.append(row)
        merged.append(_sum_shards(kept))
    return pd.DataFrame(merged).sort_values("order")


def _overlap(a: pd.Series, b: pd.Series) -> bool:
    return a["start"] < b["start"] + b["num_samples"] and b["start"] < a["start"] + a["num_samples"]


def _sum_shards(shards: list[pd.Series]) -> pd.Series:
    """The newest shard's row with the counts of all of them and their errors."""
    row = shards[0].copy()
    n = sum(int(s["num_samples"]) for s in shards)
    row["num_samples"] = n
    row["start"] = min(s["start"] for s in shards)
    row["order"] = max(s["order"] for s in shards)
    for count, error, wrong in COUNTS:
        total = sum(int(s[count]) for s in shards)
        row[count] = total
        row[error] = float(Fraction(total if wrong else n - total, n))
    return row


def build_table(rows: pd.DataFrame) -> pd.DataFrame:
    """A row per (model, data set, eps): errors in percent, verified per method, best.

    ``clean`` and ``pgd`` come from the latest row of the group (all methods of one
    evaluation share them). ``best_method`` is the smallest per-method verified error:
    the rows hold per-method aggregates only, so an image verified by one method and
    another image by a second method cannot be counted together here.
    """
    rows = merged_rows(rows)
    group = ["model", "dataset", "eps", "mode"]
    _check_same_images(rows, group)
    latest = rows.sort_values(["date", "order"], na_position="first", kind="stable")
    base = latest.groupby(group, sort=False).last()
    verified = rows.pivot_table(
        index=group, columns="method", values="verified_error", aggfunc="last", sort=False
    )
    methods = _method_order(verified.columns)
    table = pd.DataFrame(index=base.index)
    table["samples"] = base["num_samples"].astype(int)
    table["clean"] = 100 * base["clean_error"]
    table["pgd"] = 100 * base["pgd_error"]
    for method in methods:
        table[ERROR_PREFIX + method] = 100 * verified[method].reindex(base.index)
    table[BEST_COLUMN] = table[[ERROR_PREFIX + m for m in methods]].min(axis=1)
    table = table.reset_index()
    if table["mode"].nunique() == 1:
        # One mode: the column would say nothing (docs/formats.md tells what each means).
        table = table.drop(columns="mode")
    return sort_table(table, ["dataset", "eps", "model"])


def _check_same_images(rows: pd.DataFrame, group: list[str]) -> None:
    """A table row puts its methods side by side: they must cover the same images."""
    counts = rows.groupby(group, sort=False, dropna=False)["num_samples"].nunique()
    if (counts > 1).any():
        key = counts[counts > 1].index[0]
        part = rows.set_index(group).loc[[key]]
        sizes = ", ".join(
            f"{m}: {int(n)}" for m, n in zip(part["method"], part["num_samples"], strict=True)
        )
        raise UsageError(
            f"{key[0]} on {key[1]} at eps {key[2]} has results of different images per "
            f"method ({sizes} images): evaluate the missing shards, or report the files apart"
        )


def _method_order(found: Sequence[str]) -> list[str]:
    known = [m for m in METHOD_ORDER if m in found]
    return known + sorted(m for m in found if m not in METHOD_ORDER)


def error_columns(table: pd.DataFrame) -> list[str]:
    """The columns that hold errors in percent (smaller is better)."""
    return [c for c in table.columns if c in ("clean", "pgd", BEST_COLUMN) or _is_verified(c)]


def _is_verified(column: str) -> bool:
    return column.startswith(ERROR_PREFIX)


def check_columns(table: pd.DataFrame, columns: Sequence[str], param: str) -> None:
    """Raise naming ``param`` if some of ``columns`` are not columns of ``table``."""
    unknown = [c for c in columns if c not in table.columns]
    if unknown:
        raise UsageError(
            f"unknown column {', '.join(unknown)}; valid columns: {', '.join(table.columns)}",
            param=param,
        )


def filter_table(table: pd.DataFrame, conditions: Sequence[Condition]) -> pd.DataFrame:
    """Keep the rows that satisfy every condition (numeric columns compare as numbers)."""
    check_columns(table, [c.column for c in conditions], "where")
    keep = pd.Series(True, index=table.index)
    for cond in conditions:
        keep &= _matches(table[cond.column], cond)
    return table[keep]


def _matches(column: pd.Series, cond: Condition) -> pd.Series:
    if cond.column == "eps":
        try:
            value = parse_eps(cond.value)
        except UsageError as exc:
            raise UsageError(f"eps {exc.reason}", param="where") from None
        return _compare(column.map(parse_eps), cond.op, value)
    if pd.api.types.is_numeric_dtype(column):
        try:
            value = float(cond.value)
        except ValueError:
            raise UsageError(
                f"{cond.column}: {cond.value!r} is not a number", param="where"
            ) from None
        return _compare(column, cond.op, value)
    if cond.op not in ("=", "!="):
        raise UsageError(f"{cond.column}: {cond.op} needs a numeric column", param="where")
    return _compare(column.astype(str), cond.op, cond.value)


def _compare(column: pd.Series, op: str, value: object) -> pd.Series:
    ops: dict[str, Callable[[pd.Series], pd.Series]] = {
        "=": lambda c: c == value,
        "!=": lambda c: c != value,
        "<": lambda c: c < value,
        "<=": lambda c: c <= value,
        ">": lambda c: c > value,
        ">=": lambda c: c >= value,
    }
    return ops[op](column)


def sort_table(table: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """Sort by columns; a leading ``-`` sorts that column in descending order."""
    names = [c.lstrip("-") for c in by]
    check_columns(table, names, "sort_by")
    ascending = [not c.startswith("-") for c in by]
    if not names:
        return table
    return table.sort_values(
        names, ascending=ascending, key=_sort_key, kind="stable", na_position="last"
    ).reset_index(drop=True)


def _sort_key(column: pd.Series) -> pd.Series:
    # "8/255" must sort as a number, not as text.
    return column.map(parse_eps) if column.name == "eps" else column


def group_table(table: pd.DataFrame, group_by: Sequence[str]) -> list[tuple[str, pd.DataFrame]]:
    """Rows split by the group columns, in order of first appearance after sorting.

    Each group comes with a label such as ``dataset=mnist, eps=0.1``; without group
    columns there is one group with an empty label.
    """
    check_columns(table, group_by, "group_by")
    if not group_by:
        return [("", table.reset_index(drop=True))]
    keys = table[list(group_by)].astype(str).agg(", ".join, axis=1)
    groups = []
    for key in dict.fromkeys(keys):
        part = table[keys == key].reset_index(drop=True)
        label = ", ".join(f"{c}={part[c].iloc[0]}" for c in group_by)
        groups.append((label, part))
    return groups


@dataclass(frozen=True)
class ReportOptions:
    """Filters (``column op value``), group and sort columns (``-column`` descending)."""

    where: tuple[str, ...] = ()
    group_by: tuple[str, ...] = ()
    sort_by: tuple[str, ...] = ()


def make_report(
    paths: Sequence[str | Path], options: ReportOptions
) -> list[tuple[str, pd.DataFrame]]:
    """Read, merge, filter, sort and group: the groups to render."""
    table = build_table(read_results(paths))
    table = filter_table(table, [Condition.parse(w) for w in options.where])
    # Group columns sort first so that each group is one block of rows.
    check_columns(table, list(options.group_by), "group_by")
    table = sort_table(table, list(options.group_by) + list(options.sort_by))
    if table.empty:
        raise UsageError("no rows left after `where`; check the values of the filters",
                         param="where")  # fmt: skip
    return group_table(table, options.group_by)
