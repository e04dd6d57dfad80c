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
