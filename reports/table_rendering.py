"""The table of ``certify report`` as text: a rich table, Markdown, LaTeX (booktabs) or
CSV, the best value of each error column among rows of the same data set and eps in bold.
"""

from __future__ import annotations

import io
from enum import StrEnum

import pandas as pd
from rich.markup import escape
from rich.table import Table

from certify.bounds.methods import BoundMethod
from certify.core.errors import UsageError
from reports.results_table import BEST_COLUMN, ERROR_PREFIX, error_columns


class ReportFormat(StrEnum):
    TERMINAL = "terminal"
    MARKDOWN = "markdown"
    LATEX = "latex"
    CSV = "csv"


FORMATS = tuple(f.value for f in ReportFormat)

HEADERS = {
    "model": "model",
    "dataset": "data set",
    "eps": "eps",
    "mode": "mode",
    "samples": "samples",
    "clean": "clean",
    "pgd": "PGD",
    BEST_COLUMN: "best method",
}
_METHOD_NAMES = {m.value: m.label for m in BoundMethod}
NOTE = (
    "Errors in percent: clean, PGD, and verified per bound method (in a cascade, by the "
    "methods up to that one together); best method: the lowest verified error of the "
    "methods. Bold: best in its column for that data set and eps."
)


def header(column: str) -> str:
    if column in HEADERS:
        return HEADERS[column]
    method = column.removeprefix(ERROR_PREFIX)
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


def check_format(fmt: str | ReportFormat) -> ReportFormat:
    """The format named by ``fmt`` (any case)."""
    try:
        return ReportFormat(str(fmt).lower())
    except ValueError:
        raise UsageError(
            f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}", param="fmt"
        ) from None


def render(groups: list[tuple[str, pd.DataFrame]], fmt: str | ReportFormat) -> str:
    """The table as text in ``fmt``."""
    renderers = {
        ReportFormat.TERMINAL: render_terminal_text,
        ReportFormat.MARKDOWN: render_markdown,
        ReportFormat.LATEX: render_latex,
        ReportFormat.CSV: render_csv,
    }
    return renderers[check_format(fmt)](groups)


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
    """The terminal table as plain text, for a file."""
    from rich.console import Console

    console = Console(file=io.StringIO(), width=200, color_system=None, force_terminal=False)
    console.print(terminal_table(groups))
    return console.file.getvalue()  # type: ignore[attr-defined]
