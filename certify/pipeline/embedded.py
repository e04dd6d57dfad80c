"""The model and data bundled with the package: what ``certify eval`` runs with no arguments."""

from __future__ import annotations

from pathlib import Path

EMBEDDED_DIR = Path(__file__).resolve().parent.parent / "embedded"
EMBEDDED_MODEL = EMBEDDED_DIR / "mnist_cnn_4layer.pth"
EMBEDDED_DATA = EMBEDDED_DIR / "data"
