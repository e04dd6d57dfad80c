"""Training curves of `certify train` runs as a PNG: the library behind ``certify plot``.

Each run folder holds ``train_log.csv`` (columns in :data:`reports.training_log.COLUMNS`, one
row per epoch). :func:`plot_runs` draws the eps schedule, the loss, both warmup
regularizers, clean and verified error on the training and validation data, and the
shares of active and inactive ReLUs, with one colour per run, and returns PNG bytes.

matplotlib is driven through :class:`matplotlib.figure.Figure` and the Agg canvas
directly, never pyplot: importing this module selects no backend and changes no global
matplotlib state, so it is safe inside other programs.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from certify.core.csv_files import read_csv_file
from certify.core.errors import UsageError
from reports.training_log import COLUMNS, LOG_NAME


@dataclass(frozen=True)
class Panel:
    """One subplot: a title, a y label, and the log columns it draws.

    ``series`` pairs a column with its line style, so that train (solid) and
    validation (dashed) of the same run share a colour.
    """

    title: str
    ylabel: str
    series: tuple[tuple[str, str, str], ...]  # (column, line style, legend suffix)
    percent: bool = False


PANELS = (
    Panel("eps schedule", "eps", (("eps", "-", ""),)),
    Panel("training loss", "loss", (("loss", "-", ""),)),
    Panel("tightness regularizer", "L_tightness", (("reg_tightness", "-", ""),)),
    Panel("ReLU stability regularizer", "L_relu", (("reg_relu", "-", ""),)),
    Panel(
        "clean error",
        "error (%)",
        (("train_clean_err", "-", "train"), ("val_clean_err", "--", "val")),
        percent=True,
    ),
    Panel(
        # Training batches are bounded at the epoch's eps, validation at eps_max.
        "IBP verified error\n(train: epoch's eps, val: eps_max)",
        "error (%)",
        (("train_verified_err", "-", "train"), ("val_verified_err", "--", "val")),
        percent=True,
    ),
    Panel("active ReLUs", "share (%)", (("active", "-", ""),), percent=True),
    Panel("inactive ReLUs", "share (%)", (("inactive", "-", ""),), percent=True),
)
# Columns a log must have to be drawn; everything the panels use, and the epoch axis.
NEEDED = ("epoch",) + tuple(col for p in PANELS for col, _, _ in p.series)


def read_log_frame(run_dir: str | Path) -> pd.DataFrame:
    """The training log of one run folder, with numeric columns (empty cells as NaN).

    The regularizers are empty after the warmup (and always, for vanilla IBP): they
    are simply not drawn there.
    """
    run_dir = Path(run_dir)
    path = run_dir / LOG_NAME if run_dir.is_dir() else run_dir
    log = read_csv_file(
        path,
        "training log",
        NEEDED,
        no_rows="has no epochs yet",
        missing_hint="; give a `certify train` run folder",
    )
    numeric = log[[c for c in COLUMNS if c in log.columns]].apply(pd.to_numeric, errors="coerce")
    return numeric.sort_values("epoch")


def run_label(run_dir: str | Path) -> str:
    """The legend entry of a run: its folder name (``runs/fast`` → ``fast``)."""
    path = Path(run_dir).resolve()
    return path.parent.name if path.is_file() else path.name


def plot_runs(run_dirs: Sequence[str | Path], dpi: int = 100) -> bytes:
    """PNG bytes of the training curves of all runs, one colour per run."""
    if not run_dirs:
        raise UsageError("give at least one run folder")
    logs = [(run_label(d), read_log_frame(d)) for d in run_dirs]
    figure = Figure(figsize=(16, 7.5), dpi=dpi, layout="constrained")
    axes = figure.subplots(2, 4).ravel()
    colours = [f"C{i % 10}" for i in range(len(logs))]
    for ax, panel in zip(axes, PANELS, strict=True):
        _draw_panel(ax, panel, logs, colours)
    figure.suptitle("certify train: " + " vs ".join(label for label, _ in logs))
    buf = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buf)
    return buf.getvalue()


def _draw_panel(ax, panel: Panel, logs: list[tuple[str, pd.DataFrame]], colours: list[str]):
    scale = 100.0 if panel.percent else 1.0
    for (label, log), colour in zip(logs, colours, strict=True):
        for column, style, suffix in panel.series:
            values = log[column] * scale
            if values.notna().any():
                name = f"{label} {suffix}".strip()
                ax.plot(log["epoch"], values, style, color=colour, marker=".", label=name)
    ax.set_title(panel.title)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(panel.ylabel)
    ax.grid(alpha=0.3)
    if ax.has_data():
        ax.legend(fontsize="small")
    else:
        # Vanilla runs log no regularizer: say so instead of leaving a bare frame.
        ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
