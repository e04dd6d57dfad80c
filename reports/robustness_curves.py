"""Robustness curves: certified and PGD accuracy against eps, the library behind the
curves of ``certify plot``.

The input is one or more results files, those that ``certify eval`` appends to and
``certify train``'s final evaluation writes (columns in :data:`reports.eval_csv.EVAL_COLUMNS`,
one row per evaluation and bound method). They are read and merged exactly as
``certify report`` does (:func:`reports.results_reading.read_results`, then
:func:`reports.results_table.merged_rows`): rows of the same model, data set, eps, mode and
method whose image ranges overlap are reruns, and the **last** one wins (the newest by
``date``, on equal dates the one read last, so the row appended last); rows with disjoint
image ranges are shards of one evaluation and are summed. eps is taken from the ``eps``
text (``2/255``) parsed as ``certify eval`` parses it, so ``eps_value`` is not needed and
older files without it plot too.

:func:`curve_series` turns the merged rows into the lines to draw (:class:`Series`, plain
data, so that tests and other programs can check them without a figure);
:func:`curve_figure` draws them, one panel per data set, and :func:`render` gives PNG or
PDF bytes. What is drawn, per (model, data set, mode):

- certified accuracy, ``100 * (1 - verified_error)``, one solid line per bound method;
- PGD accuracy, ``100 * (1 - pgd_error)``, dashed (an upper bound of the true robust
  accuracy, as the certified lines are lower bounds);
- clean accuracy as one point at eps 0 (from the rows at the smallest eps).

There is no separate "best of methods" line: a results row holds per-method counts only,
and the best of two methods' rows is not the share of images that either verifies. A
cascade's rows carry it themselves, though: there a method's row counts the images it
*or a cheaper method* verified, so the line of the last method is the best of all; its
legend names the methods it counts (``ibp + crown``). Every-method rows have no such row,
and no best line is drawn for them.

With one model each method has its own colour; with several, each model has a colour
and the methods are told apart by their markers. matplotlib is driven through
:class:`~matplotlib.figure.Figure` and its canvases, never pyplot (as in
:mod:`reports.plots`): no backend is selected and no global state changes. Bad input
raises :class:`~certify.core.errors.UsageError` with a one-line message; nothing here
prints or writes files.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.backends.backend_pdf import FigureCanvasPdf
from matplotlib.figure import Figure

from certify.core.errors import UsageError
from reports.results_reading import read_results
from reports.results_table import METHOD_ORDER, merged_rows

X_LABEL = "eps (L_inf, pixel space)"
Y_LABEL = "accuracy (%)"
# Width and height of one data set's panel, in inches (at 100 dpi: 800 x 550 pixels).
PANEL_SIZE = (8.0, 5.5)
# Markers of the methods, in METHOD_ORDER; methods we do not know take the later ones.
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


class CurveFormat(StrEnum):
    """The file formats :func:`render` writes."""

    PNG = "png"
    PDF = "pdf"

    @classmethod
    def from_path(cls, path: str | Path) -> CurveFormat:
        """The format a file name asks for by its suffix (``curves.pdf`` → PDF)."""
        suffix = Path(path).suffix.lower().lstrip(".")
        try:
            return cls(suffix)
        except ValueError:
            raise UsageError(
                f"{path}: give a .png or .pdf file name (the suffix picks the format)",
                param="out",
            ) from None


class Kind(StrEnum):
    """What a series measures."""

    CERTIFIED = "certified"
    PGD = "pgd"
    CLEAN = "clean"


@dataclass(frozen=True)
class Series:
    """One line (or, for clean accuracy, one point) of a panel.

    ``x`` are eps values in increasing order, ``eps`` their text as the rows give it
    (``2/255``, for the tick labels), ``y`` accuracies in percent. ``method`` is the bound
    method of a certified line, empty for PGD and clean accuracy.
    """

    dataset: str
    model: str
    mode: str
    kind: Kind
    method: str
    label: str
    x: tuple[float, ...]
    eps: tuple[str, ...]
    y: tuple[float, ...]


def read_curve_rows(paths: Sequence[str | Path]) -> pd.DataFrame:
    """The rows of the results files, typed and merged as ``certify report`` merges them
    (a rerun's last row wins, shards are summed; see the module's docstring)."""
    if not paths:
        raise UsageError("give at least one results CSV file")
    return merged_rows(read_results(paths))


def curve_series(rows: pd.DataFrame) -> list[Series]:
    """The series of merged rows (:func:`read_curve_rows`), panel by panel: data sets in
    the order they first appear, then models, then certified lines in the order of the
    methods' cost, then PGD, then clean accuracy."""
    if rows.empty:
        raise UsageError("the results files have no rows to plot")
    # The mode is named in the legend only where a panel (a data set) holds both.
    modes = rows.groupby("dataset", sort=False)["mode"].nunique()
    series: list[Series] = []
    key = ["dataset", "model", "mode"]
    for (dataset, model, mode), group in rows.groupby(key, sort=False):
        suffix = f" ({mode})" if modes[dataset] > 1 else ""
        line = _LineMaker(str(dataset), str(model), str(mode), suffix)
        methods = _method_order(group["method"].unique())
        for i, method in enumerate(methods):
            points = _one_per_eps(group[group["method"] == method])
            # A cascade's row of a method counts the cheaper methods' verified images too.
            name = " + ".join(methods[: i + 1]) if mode == "cascade" else method
            series.append(line(points, "verified_error", Kind.CERTIFIED, method, name))
        # All methods of one evaluation share PGD and clean: the latest row at each eps.
        latest = _one_per_eps(group)
        series.append(line(latest, "pgd_error", Kind.PGD, "", "PGD"))
        # Clean accuracy does not depend on eps: one point, at eps 0.
        clean = line(latest.iloc[:1], "clean_error", Kind.CLEAN, "", "clean")
        series.append(replace(clean, x=(0.0,), eps=("0",)))
    return series


@dataclass(frozen=True)
class _LineMaker:
    """Builds the series of one (data set, model, mode) from its rows."""

    dataset: str
    model: str
    mode: str
    suffix: str

    def __call__(
        self, points: pd.DataFrame, error: str, kind: Kind, method: str, label: str
    ) -> Series:
        return Series(
            dataset=self.dataset,
            model=self.model,
            mode=self.mode,
            kind=kind,
            method=method,
            label=label + self.suffix,
            x=tuple(float(v) for v in points["eps_value"]),
            eps=tuple(str(e) for e in points["eps"]),
            y=tuple(float(100 * (1 - v)) for v in points[error]),
        )


def _method_order(found: Sequence[str]) -> list[str]:
    known = [m for m in METHOD_ORDER if m in found]
    return known + sorted(m for m in found if m not in METHOD_ORDER)


def _one_per_eps(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per eps value, the latest; ``0.5`` and ``1/2`` are the same point."""
    latest = rows.sort_values(["date", "order"], na_position="first", kind="stable")
    latest = latest.drop_duplicates("eps_value", keep="last")
    return latest.sort_values("eps_value", kind="stable")


def curve_figure(paths: Sequence[str | Path]) -> Figure:
    """The figure of the results files: one panel per data set (see the module's
    docstring for what it shows)."""
    return series_figure(curve_series(read_curve_rows(paths)))


def series_figure(series: Sequence[Series]) -> Figure:
    """Draw series (:func:`curve_series`) into a new figure, one panel per data set."""
    datasets = list(dict.fromkeys(s.dataset for s in series))
    if not datasets:
        raise UsageError("nothing to plot: no series")
    width, height = PANEL_SIZE
    figure = Figure(figsize=(width * len(datasets), height), layout="constrained")
    axes = figure.subplots(1, len(datasets), squeeze=False)[0]
    for ax, dataset in zip(axes, datasets, strict=True):
        _draw_panel(ax, dataset, [s for s in series if s.dataset == dataset])
    return figure


def _draw_panel(ax, dataset: str, series: list[Series]) -> None:
    models = list(dict.fromkeys(s.model for s in series))
    methods = _method_order(list(dict.fromkeys(s.method for s in series if s.method)))
    modes = list(dict.fromkeys(s.mode for s in series))
    several = len(models) > 1
    model_colour = {m: f"C{i % 10}" for i, m in enumerate(models)}
    method_colour = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    for s in series:
        # One model: a colour per method, PGD and clean in black. Several: a colour per
        # model, and the marker tells the method. A second mode of the same model is
        # dash-dotted (its PGD marked +), since its lines share colours and markers.
        colour = model_colour[s.model] if several else method_colour.get(s.method, "black")
        label = f"{s.model}: {s.label}" if several else s.label
        second_mode = modes.index(s.mode) % 2 == 1
        if s.kind is Kind.CERTIFIED:
            rank = methods.index(s.method)
            # Methods often agree (a cascade's lines coincide where the cheap one did all
            # the work): each later method's markers are smaller, so both stay visible.
            ax.plot(
                s.x,
                s.y,
                "-." if second_mode else "-",
                color=colour,
                marker=_MARKERS[rank % len(_MARKERS)],
                ms=max(3.0, 8.0 - 1.5 * rank),
                label=label,
            )
        elif s.kind is Kind.PGD:
            marker = "+" if second_mode else "x"
            ax.plot(s.x, s.y, "--", color=colour, marker=marker, label=label)
        else:
            ax.plot(s.x, s.y, linestyle="none", color=colour, marker="*", ms=12, label=label)
    _eps_ticks(ax, series)
    ax.set_xlabel(X_LABEL)
    ax.set_ylabel(Y_LABEL)
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    title = dataset if several else f"{dataset}: {models[0]}"
    ax.set_title(f"certified and PGD accuracy, {title}")
    if len(series) > 8:
        # Several models: a long legend would cover the lines; it goes beside the panel.
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.legend(fontsize="small", loc="lower left")


def _eps_ticks(ax, series: list[Series]) -> None:
    """A tick at every eps that was evaluated, labelled as the rows wrote it (2/255)."""
    labels: dict[float, str] = {}
    for s in series:
        for value, text in zip(s.x, s.eps, strict=True):
            labels.setdefault(value, text)
    ticks = sorted(labels)
    ax.set_xticks(ticks, [labels[t] for t in ticks])
    gaps = [b - a for a, b in zip(ticks, ticks[1:], strict=False)]
    crowded = bool(gaps) and min(gaps) < 0.08 * (ticks[-1] - ticks[0])
    if len(ticks) > 6 or crowded:
        # Fractions such as 8/255 are wide: slanted they do not run into each other.
        ax.tick_params(axis="x", labelrotation=45)


def render(figure: Figure, fmt: CurveFormat = CurveFormat.PNG, dpi: int = 100) -> bytes:
    """The figure as PNG (``dpi`` dots per inch) or PDF (vector; ``dpi`` is unused)."""
    buf = io.BytesIO()
    if fmt is CurveFormat.PNG:
        FigureCanvasAgg(figure).print_figure(buf, format="png", dpi=dpi)
    else:
        # Pin the creation date: the same rows give the same bytes, run after run.
        FigureCanvasPdf(figure).print_figure(buf, format="pdf", metadata={"CreationDate": None})
    return buf.getvalue()


def plot_curves(
    paths: Sequence[str | Path], formats: Sequence[CurveFormat] = (CurveFormat.PNG,), dpi: int = 100
) -> dict[CurveFormat, bytes]:
    """The robustness curves of the results files, rendered in each of ``formats``."""
    figure = curve_figure(paths)
    return {fmt: render(figure, fmt, dpi) for fmt in formats}
