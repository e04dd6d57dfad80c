"""The rich table that ``certify eval`` prints in the terminal."""

from __future__ import annotations

from rich.table import Table

from certify.evaluation.outcomes import EvalSummary


def summary_table(title: str, summary: EvalSummary) -> Table:
    """Errors in percent with counts, and the seconds each stage took."""
    table = Table(
        title=title,
        title_justify="left",
        min_width=len(title),
        caption="checked: no verified image is misclassified or attacked by PGD",
        caption_justify="left",
    )
    table.add_column("metric")
    table.add_column("error", justify="right")
    table.add_column("wrong / total", justify="right")
    table.add_column("seconds", justify="right")
    n = summary.num_samples

    def add(name: str, error: float, seconds: float | None, style: str = "") -> None:
        wrong = round(error * n)
        shown = "" if seconds is None else f"{seconds:.1f}"
        table.add_row(name, f"{100 * error:.2f}%", f"{wrong} / {n}", shown, style=style)

    add("clean", summary.clean_error, summary.seconds.get("clean"))
    add("PGD", summary.pgd_error, summary.seconds.get("pgd"))
    for method, error in summary.verified_error.items():
        add(f"verified ({method.value})", error, summary.seconds.get(method.value))
    if len(summary.verified_error) > 1:
        add("verified (best)", summary.best_verified_error, None, style="bold")
    return table
