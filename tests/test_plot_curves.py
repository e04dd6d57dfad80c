"""`certify plot`: training curves of run folders rendered to a real, non-blank PNG."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from certify.cli import cli
from certify.core.errors import UsageError
from reports.plots import plot_runs
from reports.training_log import COLUMNS, LOG_NAME, EpochRow, write_log


def _make_run(folder: Path, epochs: int = 6, regularized: bool = True, shift: float = 0.0) -> Path:
    """A run folder with a plausible train_log.csv (regularizers empty after warmup)."""
    folder.mkdir(parents=True)
    rows = []
    for epoch in range(1, epochs + 1):
        warm = epoch <= 3
        row = dict.fromkeys(COLUMNS, None)
        row |= {
            "epoch": epoch,
            "eps": min(1.0, epoch / 3) * 0.1,
            "eps_max": 0.1,
            "lr": 5e-4,
            "loss": 2.0 * math.exp(-epoch / 3) + shift,
            "clean_ce": 0.5,
            "robust_ce": 1.0,
            "reg_tightness": 0.9 - 0.1 * epoch if regularized and warm else None,
            "reg_relu": 0.05 * epoch if regularized and warm else None,
            "train_clean_err": 0.3 / epoch + shift,
            "train_verified_err": 0.8 / epoch + shift,
            "val_clean_err": 0.35 / epoch + shift,
            "val_verified_err": min(1.0, 1.2 / epoch) + shift,
            "active": 0.3 + 0.01 * epoch,
            "inactive": 0.4 - 0.01 * epoch,
            "epoch_seconds": 1.0,
            "val_seconds": 0.1,
            "best": not warm,
        }
        rows.append(EpochRow(**row))
    write_log(folder / LOG_NAME, rows)
    return folder


def _check_png(data: bytes) -> Image.Image:
    from io import BytesIO

    image = Image.open(BytesIO(data)).convert("RGB")
    assert image.size == (1600, 750)
    pixels = np.asarray(image)
    assert pixels.astype(float).var() > 0
    colours = {tuple(p) for p in pixels.reshape(-1, 3)[::7]}
    assert len(colours) > 20  # lines of two runs, text, grid: far from a blank canvas
    return image


def test_plot_two_runs_to_png(tmp_path):
    fast = _make_run(tmp_path / "fast")
    vanilla = _make_run(tmp_path / "vanilla", regularized=False, shift=0.05)
    _check_png(plot_runs([fast, vanilla]))


@pytest.mark.slow
def test_plot_does_not_touch_pyplot(tmp_path):
    # The library draws with Figure + the Agg canvas: importing and using it must not
    # import pyplot or pick a backend for the whole process. A fresh interpreter tells.
    run = _make_run(tmp_path / "fast", epochs=2)
    code = (
        "import sys, matplotlib; before = matplotlib.rcParams._get_backend_or_none(); "
        "from reports.plots import plot_runs; plot_runs([sys.argv[1]], dpi=30); "
        "print('matplotlib.pyplot' in sys.modules, before == "
        "matplotlib.rcParams._get_backend_or_none())"
    )
    out = subprocess.run([sys.executable, "-c", code, str(run)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True"]


def test_cli_plot_writes_png(tmp_path):
    runs = [_make_run(tmp_path / "fast"), _make_run(tmp_path / "vanilla", regularized=False)]
    out = tmp_path / "curves.png"
    res = CliRunner().invoke(cli, ["plot", *map(str, runs), "--out", str(out), "--dpi", "50"])
    assert res.exit_code == 0, res.output
    image = Image.open(out)
    assert image.size == (800, 375)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        ("", "is empty"),
        ("a,b\n1,2\n", "is not a certify training log"),
        (",".join(COLUMNS) + "\n", "has no epochs yet"),
    ],
)
def test_cli_plot_bad_input_is_one_line(tmp_path, content, message):
    run = tmp_path / "run"
    run.mkdir()
    if content is not None:
        (run / LOG_NAME).write_text(content)
    out = tmp_path / "curves.png"
    res = CliRunner().invoke(cli, ["plot", str(run), "--out", str(out)])
    assert res.exit_code == 1  # the run's log is at fault, not a flag
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.output
    assert "Traceback" not in res.output
    assert not out.exists()


def test_plot_needs_a_run():
    with pytest.raises(UsageError):
        plot_runs([])


# --- Robustness curves (`certify plot --curves`) from real `certify eval` rows --------

CURVE_EPS = ("0.1", "0.2", "0.3")


@pytest.fixture(scope="module")
def results_csv(tmp_path_factory) -> Path:
    """A results file as `certify eval --out` appends to it: the bundled MNIST model on
    its own images, at three eps, two methods (a cascade: the default)."""
    path = tmp_path_factory.mktemp("eval") / "results.csv"
    for eps in CURVE_EPS:
        args = ["eval", "--eps", eps, "--num-samples", "40", "--pgd-steps", "5"]
        args += ["--methods", "ibp,crown", "--device", "cpu", "--out", str(path)]
        res = CliRunner().invoke(cli, args)
        assert res.exit_code == 0, res.output
    return path


def _csv_rows(path: Path) -> list[dict[str, str]]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write_csv(path: Path, rows: list[dict[str, str]], columns: list[str]) -> Path:
    import csv

    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows({c: r.get(c, "") for c in columns} for r in rows)
    return path


def _series_of(paths):
    from reports.robustness_curves import curve_series, read_curve_rows

    return curve_series(read_curve_rows(paths))


def test_curves_plot_what_the_rows_say(results_csv):
    from reports.robustness_curves import Kind

    rows = _csv_rows(results_csv)
    assert len(rows) == 2 * len(CURVE_EPS)
    series = _series_of([results_csv])
    by_kind = {(s.kind, s.method): s for s in series}
    assert set(by_kind) == {
        (Kind.CERTIFIED, "ibp"),
        (Kind.CERTIFIED, "crown"),
        (Kind.PGD, ""),
        (Kind.CLEAN, ""),
    }
    for method in ("ibp", "crown"):
        line = by_kind[(Kind.CERTIFIED, method)]
        mine = sorted((float(r["eps_value"]), r) for r in rows if r["method"] == method)
        assert line.x == tuple(x for x, _ in mine)
        assert line.eps == CURVE_EPS
        expected = [100 * (1 - float(r["verified_error"])) for _, r in mine]
        assert line.y == pytest.approx(expected, abs=1e-9)
        # The errors are the counts over the images: the accuracy is verified / n.
        assert line.y == pytest.approx([100 * int(r["verified"]) / 40 for _, r in mine])
    # A cascade's crown row counts ibp's verified images too: its legend says so.
    assert by_kind[(Kind.CERTIFIED, "crown")].label == "ibp + crown"
    pgd = by_kind[(Kind.PGD, "")]
    ibp_rows = sorted((float(r["eps_value"]), r) for r in rows if r["method"] == "ibp")
    assert pgd.y == pytest.approx([100 * (1 - float(r["pgd_error"])) for _, r in ibp_rows])
    clean = by_kind[(Kind.CLEAN, "")]
    assert clean.x == (0.0,)
    assert clean.y == pytest.approx((100 * (1 - float(rows[0]["clean_error"])),))
    # Sound bounds: certified accuracy never above PGD's, nor PGD's above clean.
    for method in ("ibp", "crown"):
        certified = by_kind[(Kind.CERTIFIED, method)].y
        assert all(c <= p <= clean.y[0] for c, p in zip(certified, pgd.y, strict=True))


def test_curves_rerun_last_row_wins_and_eps_value_is_not_needed(results_csv, tmp_path):
    from reports.robustness_curves import Kind

    rows = _csv_rows(results_csv)
    rerun = dict(next(r for r in rows if r["method"] == "ibp" and r["eps"] == "0.2"))
    rerun |= {"verified": "20", "verified_error": "0.5"}  # appended later, same images
    columns = [c for c in rows[0] if c != "eps_value"]  # eps comes from the eps text
    path = _write_csv(tmp_path / "rerun.csv", rows + [rerun], columns)
    ibp = next(s for s in _series_of([path]) if s.kind is Kind.CERTIFIED and s.method == "ibp")
    assert ibp.x == (0.1, 0.2, 0.3)
    assert ibp.y[1] == 50.0


def test_curves_one_eps_and_several_models(results_csv, tmp_path):
    from reports.robustness_curves import Kind, render, series_figure

    rows = [r for r in _csv_rows(results_csv) if r["eps"] == "0.1"]
    other = [r | {"model": "other.pth"} for r in rows]
    path = _write_csv(tmp_path / "one.csv", rows + other, list(rows[0]))
    series = _series_of([path])
    assert {s.model for s in series} == {"mnist_cnn_4layer.pth", "other.pth"}
    assert all(len(s.x) == 1 for s in series if s.kind is not Kind.CLEAN)
    _check_curves_png(render(series_figure(series), dpi=50), (400, 275))


def _check_curves_png(data: bytes, size: tuple[int, int]) -> None:
    from io import BytesIO

    image = Image.open(BytesIO(data)).convert("RGB")
    assert image.size == size
    pixels = np.asarray(image)
    colours = {tuple(p) for p in pixels.reshape(-1, 3)[::5]}
    assert len(colours) > 20  # lines, markers, text, grid: far from a blank canvas


@pytest.mark.parametrize("name", ["curves.png", "curves.pdf"])
def test_cli_plot_curves_writes_png_and_pdf(results_csv, tmp_path, name):
    out = tmp_path / name
    res = CliRunner().invoke(
        cli, ["plot", "--curves", str(results_csv), "--out", str(out), "--dpi", "50"]
    )
    assert res.exit_code == 0, res.output
    assert "wrote" in res.output
    _check_curves_png((tmp_path / "curves.png").read_bytes(), (400, 275))
    assert (tmp_path / "curves.pdf").read_bytes().startswith(b"%PDF")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.pdf", "curves.png"]


@pytest.mark.parametrize(
    ("content", "code", "message"),
    [
        (None, 1, "does not exist"),
        ("a,b\n1,2\n", 1, "is not a certify results file"),
        ("header only", 1, "has a header but no rows"),
        ("bad eps", 1, "eps 'x' is not a number"),
        ("folder", 1, "is a folder; give its results CSV"),
        ("svg", 2, "give a .png or .pdf file name"),
    ],
)
def test_cli_plot_curves_bad_input_is_one_line(results_csv, tmp_path, content, code, message):
    rows = _csv_rows(results_csv)
    given = tmp_path / "input.csv"
    out = tmp_path / "out" / ("curves.svg" if content == "svg" else "curves.png")
    out.parent.mkdir()
    if content == "header only":
        _write_csv(given, [], list(rows[0]))
    elif content == "bad eps":
        _write_csv(given, [rows[0] | {"eps": "x"}], list(rows[0]))
    elif content == "folder":
        given.mkdir()
    elif content == "svg":
        given = results_csv
    elif content is not None:
        given.write_text(content)
    res = CliRunner().invoke(cli, ["plot", "--curves", str(given), "--out", str(out)])
    assert res.exit_code == code, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.output
    assert "Traceback" not in res.output
    assert list(out.parent.iterdir()) == []  # neither the PNG nor the PDF


def test_cli_plot_results_file_without_curves_says_so(results_csv, tmp_path):
    out = tmp_path / "curves.png"
    res = CliRunner().invoke(cli, ["plot", str(results_csv), "--out", str(out)])
    assert res.exit_code == 1
    assert "add --curves" in res.output and len(res.output.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.slow
def test_curves_do_not_touch_pyplot(results_csv):
    code = (
        "import sys, matplotlib; before = matplotlib.rcParams._get_backend_or_none(); "
        "from reports.robustness_curves import plot_curves, CurveFormat; "
        "plot_curves([sys.argv[1]], tuple(CurveFormat), dpi=30); "
        "print('matplotlib.pyplot' in sys.modules, before == "
        "matplotlib.rcParams._get_backend_or_none())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(results_csv)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True"]
