"""The rich table that ``certify eval`` prints in the terminal."""

from __future__ import annotations

from rich.table import Table

from certify.evaluation.outcomes import PGD_STAGE, EvalSummary

_CAPTIONS = {
    "cascade": (
        "cascade: each image decided by the cheapest stage; a verified row counts the "
        "methods up to it. Checked: no verified image is misclassified or attacked by PGD "
        "({checked} verified images attacked)"
    ),
    "every-method": "checked: no verified image is misclassified or attacked by PGD",
}


def summary_table(title: str, summary: EvalSummary) -> Table:
    """Errors in percent with counts, what each stage decided and its seconds."""
    cascade = summary.mode == "cascade"
    table = Table(
        title=title,
        title_justify="left",
        min_width=len(title),
        caption=_CAPTIONS[summary.mode].format(checked=summary.checked),
        caption_justify="left",
    )
    table.add_column("metric")
    table.add_column("error", justify="right")
    table.add_column("wrong / total", justify="right")
    if cascade:
        table.add_column("decided", justify="right")
    table.add_column("seconds", justify="right")
    n = summary.num_samples

    def add(name: str, error: float, stage: str | None, style: str = "") -> None:
        wrong = round(error * n)
        seconds = summary.seconds.get(stage) if stage else None
        cells = [name, f"{100 * error:.2f}%", f"{wrong} / {n}"]
        if cascade:
            cells.append(str(summary.decided.get(stage, 0)) if stage else "")
        cells.append("" if seconds is None else f"{seconds:.1f}")
        table.add_row(*cells, style=style)

    add("clean", summary.clean_error, "clean")
    add("PGD", summary.pgd_error, PGD_STAGE)
    for method, error in summary.verified_error.items():
        add(f"verified ({method.value})", error, method.value)
    if len(summary.verified_error) > 1:
        add("verified (best)", summary.best_verified_error, None, style="bold")
    if summary.bab:
        counts = summary.bab
        table.add_row(
            "bab decided",
            "",
            f"{counts.get('verified', 0)} verified, {counts.get('attacked', 0)} attacked",
            *([""] if cascade else []),
            "",
        )
        table.add_row(
            "bab hit a limit",
            "",
            f"{counts.get('timeout', 0)} time, {counts.get('domain-limit', 0)} subdomains",
            *([""] if cascade else []),
            "",
        )
    if cascade and "check" in summary.seconds:
        table.add_row("self-check", "", "", str(summary.checked), f"{summary.seconds['check']:.1f}")
    return table
