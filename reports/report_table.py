"""Paper tables from evaluation CSV files: the library behind ``certify report``.

``certify eval --out`` and the final evaluation of ``certify train`` append one row per
(model, data set, eps, bound method) with the columns of
:data:`reports.eval_csv.EVAL_COLUMNS`. This module merges such files into one table
with a row per (model, data set, eps) and the errors of every method side by side,
filters, groups and sorts it, and renders it as a rich table, Markdown, LaTeX or CSV.

Everything here takes arguments and returns values (DataFrames, strings, rich tables);
bad input raises :class:`certify.errors.UsageError` with a one-line message. Printing
and writing files is the CLI's job (``certify/commands/report_command.py``).
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from rich.markup import escape
from rich.table import Table

from certify.eps import parse_eps
from certify.errors import CertifyError, UsageError
from reports.csv_input import read_string_csv

# The columns a results file must have for us to build the table from it.
REQUIRED_COLUMNS = (
    "model",
    "dataset",
    "eps",
    "method",
    "num_samples",
    "clean_error",
    "pgd_error",
    "verified_error",
    "date",
)
KEY_COLUMNS = ("model", "dataset", "eps", "method")
# The order of the bound methods in the table; methods we do not know come after these.
METHOD_ORDER = ("ibp", "crown-ibp", "crown")
# The checkpoint names `certify train` evaluates at the end of a run; every run names
# its model the same, so the run folder is what tells runs apart.
TRAIN_CHECKPOINTS = ("best.pth", "last.pth")
BEST_COLUMN = "best_method"
FORMATS = ("terminal", "markdown", "latex", "csv")
_ERROR_PREFIX = "verified_"
_WHERE = re.compile(r"^\s*([A-Za-z_][\w-]*)\s*(<=|>=|!=|=|<|>)\s*(.*?)\s*$")


@dataclass(frozen=True)
class Condition:
    """One ``--where`` filter: ``column op value`` (op one of = != < <= > >=)."""

    column: str
    op: str
    value: str

    @classmethod
    def parse(cls, text: str) -> Condition:
        match = _WHERE.match(text)
        if not match:
            raise UsageError(f"cannot read --where {text!r}; write e.g. dataset=cifar or pgd<30")
        return cls(*match.groups())


# ---------------------------------------------------------------------------- reading


def read_results(paths: Sequence[str | Path]) -> pd.DataFrame:
    """All rows of the given results files, in file order, with typed columns.

    Adds ``source`` (the file) and ``order`` (position in the merged input), which break
    ties between rows with the same date: the later one wins.
    """
    if not paths:
        raise UsageError("give at least one results CSV file")
    frames = [_read_one(Path(p)) for p in paths]
    rows = pd.concat(frames, ignore_index=True)
    rows["order"] = range(len(rows))
    return rows


def _read_one(path: Path) -> pd.DataFrame:
    if path.is_dir():
        raise UsageError(f"{path} is a folder; give its results CSV, e.g. {path / 'results.csv'}")
    frame = read_string_csv(path, "results file", REQUIRED_COLUMNS)
    frame = _typed(frame, path)
    frame["model"] = _qualified_models(frame["model"], path)
    frame["source"] = str(path)
    return frame


def _typed(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Numbers and dates parsed; a bad cell is named by its line in the file."""
    frame = frame.copy()
    for column in ("clean_error", "pgd_error", "verified_error", "num_samples"):
        frame[column] = _numbers(frame[column], column, path)
    dates = pd.to_datetime(frame["date"], errors="coerce", format="mixed")
    bad = dates.isna() & (frame["date"] != "")
    if bad.any():
        line = int(bad.to_numpy().nonzero()[0][0]) + 2  # + header, + 1-based lines
        raise UsageError(f"{path} line {line}: date {frame['date'][bad].iloc[0]!r} is no date")
    frame["date"] = dates
    frame["eps_value"] = [_eps_value(text, path) for text in frame["eps"]]
    return frame


def _numbers(column: pd.Series, name: str, path: Path) -> pd.Series:
    values = pd.to_numeric(column, errors="coerce")
    bad = values.isna()
    if bad.any():
        line = int(bad.to_numpy().nonzero()[0][0]) + 2
        raise UsageError(f"{path} line {line}: {name} {column[bad].iloc[0]!r} is not a number")
    return values


def _eps_value(text: str, path: Path) -> float:
    try:
        return parse_eps(text)
    except CertifyError:
        raise UsageError(f"{path}: eps {text!r} is not a number") from None


def _qualified_models(models: pd.Series, path: Path) -> pd.Series:
    """``best.pth`` of a training run becomes ``<run folder>/best.pth``.

    `certify train` writes OUT_DIR/results.csv with the model named after the checkpoint
    file only, so two runs would otherwise be the same model and one would hide the other.
    """
    folder = path.resolve().parent.name
    return models.where(~models.isin(TRAIN_CHECKPOINTS), folder + "/" + models)


# ----------------------------------------------------------------------------- table


def latest_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, data set, eps, method): the one with the latest ``date``.

    Rows without a date lose to dated ones; on equal dates the row read last wins.
    """
    ordered = rows.sort_values(["date", "order"], na_position="first", kind="stable")
    return ordered.drop_duplicates(list(KEY_COLUMNS), keep="last").sort_values("order")


def build_table(rows: pd.DataFrame) -> pd.DataFrame:
    """A row per (model, data set, eps): errors in percent, verified per method, best.

    ``clean`` and ``pgd`` come from the latest row of the group (all methods of one
    evaluation share them). ``best_method`` is the smallest per-method verified error:
    the rows hold per-method aggregates only, so an image verified by one method and
    another image by a second method cannot be counted together here.
    """
    rows = latest_rows(rows)
    group = ["model", "dataset", "eps"]
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
        table[_ERROR_PREFIX + method] = 100 * verified[method].reindex(base.index)
    table[BEST_COLUMN] = table[[_ERROR_PREFIX + m for m in methods]].min(axis=1)
    table = table.reset_index()
    return sort_table(table, ["dataset", "eps", "model"])


def _method_order(found: Sequence[str]) -> list[str]:
    known = [m for m in METHOD_ORDER if m in found]
    return known + sorted(m for m in found if m not in METHOD_ORDER)


def error_columns(table: pd.DataFrame) -> list[str]:
    """The columns that hold errors in percent (smaller is better)."""
    return [c for c in table.columns if c in ("clean", "pgd", BEST_COLUMN) or _is_verified(c)]


def _is_verified(column: str) -> bool:
    return column.startswith(_ERROR_PREFIX)


def check_columns(table: pd.DataFrame, columns: Sequence[str], option: str) -> None:
    unknown = [c for c in columns if c not in table.columns]
    if unknown:
        raise UsageError(
            f"{option}: unknown column {', '.join(unknown)}; "
            f"valid columns: {', '.join(table.columns)}"
        )


def filter_table(table: pd.DataFrame, conditions: Sequence[Condition]) -> pd.DataFrame:
    """Keep the rows that satisfy every condition (numeric columns compare as numbers)."""
    check_columns(table, [c.column for c in conditions], "--where")
    keep = pd.Series(True, index=table.index)
    for cond in conditions:
        keep &= _matches(table[cond.column], cond)
    return table[keep]


def _matches(column: pd.Series, cond: Condition) -> pd.Series:
    if cond.column == "eps":
        return _compare(column.map(parse_eps), cond.op, parse_eps(cond.value))
    if pd.api.types.is_numeric_dtype(column):
        try:
            value = float(cond.value)
        except ValueError:
            raise UsageError(f"--where {cond.column}: {cond.value!r} is not a number") from None
        return _compare(column, cond.op, value)
    if cond.op not in ("=", "!="):
        raise UsageError(f"--where {cond.column}: {cond.op} needs a numeric column")
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
    check_columns(table, names, "--sort-by")
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
    check_columns(table, group_by, "--group-by")
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
    """What ``certify report`` asks for, beyond the input files."""

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
    check_columns(table, list(options.group_by), "--group-by")
    table = sort_table(table, list(options.group_by) + list(options.sort_by))
    if table.empty:
        raise UsageError("no rows left after --where; check the values of the filters")
    return group_table(table, options.group_by)


# --------------------------------------------------------------------------- rendering

HEADERS = {
    "model": "model",
    "dataset": "data set",
    "eps": "eps",
    "samples": "samples",
    "clean": "clean",
    "pgd": "PGD",
    BEST_COLUMN: "best method",
}
_METHOD_NAMES = {"ibp": "IBP", "crown-ibp": "CROWN-IBP", "crown": "CROWN"}
NOTE = (
    "Errors in percent: clean, PGD, and verified per bound method; best method: the "
    "lowest verified error of the methods (not a per-image union). Bold: best in its column "
    "for that data set and eps."
)


def header(column: str) -> str:
    if column in HEADERS:
        return HEADERS[column]
    method = column.removeprefix(_ERROR_PREFIX)
    return _METHOD_NAMES.get(method, method)


def best_cells(table: pd.DataFrame) -> dict[str, set[int]]:
    """Per error column, the positions of the rows holding its smallest value.

    Rows compete only with rows of the same data set and eps: an error on CIFAR at
    8/255 is no rival of one on MNIST at 0.1.
    """
    best: dict[str, set[int]] = {c: set() for c in error_columns(table)}
    keys = [c for c in ("dataset", "eps") if c in table.columns]
    blocks = table.groupby(keys, sort=False) if keys else [((), table)]
    for _, block in blocks:
        for column in best:
            values = block[column]
            # One value alone is not "the best" of anything.
            if values.notna().sum() > 1:
                best[column] |= {
                    table.index.get_loc(i) for i in values.index[values == values.min()]
                }
    return best


def _cell(table: pd.DataFrame, column: str, pos: int) -> str:
    value = table[column].iloc[pos]
    if column in error_columns(table):
        return "–" if pd.isna(value) else f"{value:.2f}"
    return str(value)


def check_format(fmt: str) -> str:
    """``fmt`` in lower case if it is one of :data:`FORMATS`."""
    if fmt.lower() not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return fmt.lower()


def render(groups: list[tuple[str, pd.DataFrame]], fmt: str) -> str:
    """The table as text in ``fmt`` (one of :data:`FORMATS`)."""
    fmt = check_format(fmt)
    renderers = {
        "terminal": render_terminal_text,
        "markdown": render_markdown,
        "latex": render_latex,
        "csv": render_csv,
    }
    return renderers[fmt](groups)


def render_markdown(groups: list[tuple[str, pd.DataFrame]]) -> str:
    """GitHub Markdown: one table per group, under a bold group label; best in bold."""
    parts = []
    for label, table in groups:
        lines = [f"**{label}**", ""] if label else []
        columns = list(table.columns)
        right = set(error_columns(table)) | {"samples"}
        lines.append("| " + " | ".join(header(c) for c in columns) + " |")
        lines.append("|" + "|".join("---:" if c in right else "---" for c in columns) + "|")
        best = best_cells(table)
        for pos in range(len(table)):
            cells = [_markdown_cell(table, c, pos, best) for c in columns]
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + f"\n\n{NOTE}\n"


def _markdown_cell(table: pd.DataFrame, column: str, pos: int, best: dict[str, set[int]]) -> str:
    text = _cell(table, column, pos).replace("|", "\\|")
    return f"**{text}**" if pos in best.get(column, ()) else text


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def render_latex(groups: list[tuple[str, pd.DataFrame]]) -> str:
    """A booktabs ``tabular``; groups under a spanning label, best per column in bold."""
    columns = list(groups[0][1].columns)
    right = set(error_columns(groups[0][1])) | {"samples"}
    spec = "".join("r" if c in right else "l" for c in columns)
    lines = [
        f"\\begin{{tabular}}{{{spec}}}",
        "\\toprule",
        " & ".join(latex_escape(header(c)) for c in columns) + r" \\",
        "\\midrule",
    ]
    for i, (label, table) in enumerate(groups):
        if i:
            lines.append("\\midrule")
        if label:
            text = latex_escape(label)
            lines.append(f"\\multicolumn{{{len(columns)}}}{{l}}{{\\emph{{{text}}}}} \\\\")
        best = best_cells(table)
        for pos in range(len(table)):
            cells = [_latex_cell(table, c, pos, best) for c in columns]
            lines.append(" & ".join(cells) + r" \\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def _latex_cell(table: pd.DataFrame, column: str, pos: int, best: dict[str, set[int]]) -> str:
    text = _cell(table, column, pos)
    text = "--" if text == "–" else latex_escape(text)
    return f"\\textbf{{{text}}}" if pos in best.get(column, ()) else text


def render_csv(groups: list[tuple[str, pd.DataFrame]]) -> str:
    """Machine-readable: the column names of the table, errors in percent, no bold."""
    table = pd.concat([t for _, t in groups], ignore_index=True)
    buf = io.StringIO()
    table.to_csv(buf, index=False, float_format="%.4g", lineterminator="\n")
    return buf.getvalue()


def terminal_table(groups: list[tuple[str, pd.DataFrame]]) -> Table:
    """A rich table with a section per group; best per column in bold."""
    columns = list(groups[0][1].columns)
    table = Table(caption=NOTE, caption_justify="left")
    right = set(error_columns(groups[0][1])) | {"samples"}
    for column in columns:
        # Fold rather than elide: a cut model name or number is worse than a tall row.
        justify = "right" if column in right else "left"
        table.add_column(header(column), justify=justify, overflow="fold")
    for i, (_label, part) in enumerate(groups):
        if i:
            table.add_section()
        best = best_cells(part)
        for pos in range(len(part)):
            cells = [_terminal_cell(part, c, pos, best) for c in columns]
            table.add_row(*cells)
    return table


def _terminal_cell(table: pd.DataFrame, column: str, pos: int, best: dict[str, set[int]]) -> str:
    text = escape(_cell(table, column, pos))
    return f"[bold]{text}[/bold]" if pos in best.get(column, ()) else text


def render_terminal_text(groups: list[tuple[str, pd.DataFrame]]) -> str:
    """The terminal table as plain text (for ``--out`` with ``--format terminal``)."""
    from rich.console import Console

    console = Console(file=io.StringIO(), width=200, color_system=None, force_terminal=False)
    console.print(terminal_table(groups))
    return console.file.getvalue()  # type: ignore[attr-defined]
