"""Golden bound values: the margin lower bounds of IBP, CROWN-IBP, CROWN and alpha-CROWN
on fixed models, inputs and eps, pinned in ``tests/golden/margin_bounds.json``.

The soundness tests (tests/test_soundness_properties.py, tests/test_bounds_soundness.py)
pass for any bound that stays below the true margins, however loose. These tests catch
a bound that gets looser: each method's margins, computed the way ``certify eval`` does
(:class:`~certify.bounds.margins.MarginBounder`), must equal the stored ones within a
tolerance. Lower fails as a regression; higher fails too, so that an improvement is
recorded on purpose and the next regression is measured from it.

The golden file holds everything a case needs: the weights of two small random models (a
dense ReLU MLP and a Conv-ReLU-Conv-ReLU-Linear net, drawn once from fixed seeds and
stored, so that a change in torch's random number generator changes nothing), their
inputs, labels and eps; and, for the bundled MNIST model, its file's SHA-256 and the
labels of its first four test images. A second test checks the stored margins against
the models themselves on sampled points, so the file is a checked record, not just a
recording.

To record new values after a deliberate change of the bounds, run::

    CERTIFY_REGENERATE_GOLDEN=1 .venv/bin/python -m pytest -q tests/test_golden_bounds.py

It rewrites the margins (keeping the stored models and inputs; a model missing from the
file is drawn from its seed) and skips the comparisons, saying so. Review the diff of the
file before committing it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from certify.bounds.margins import AlphaCrownOptions, BoundMethod, MarginBounder, margin_matrix
from certify.data import load_split
from certify.pipeline.embedded import EMBEDDED_DATA, EMBEDDED_MODEL
from model_zoo import load_model

GOLDEN_FILE = Path(__file__).resolve().parent / "golden" / "margin_bounds.json"
REGENERATE_VARIABLE = "CERTIFY_REGENERATE_GOLDEN"
REGENERATE = f"{REGENERATE_VARIABLE}=1 .venv/bin/python -m pytest -q tests/test_golden_bounds.py"
METHODS = (BoundMethod.IBP, BoundMethod.CROWN_IBP, BoundMethod.CROWN, BoundMethod.ALPHA_CROWN)
# Fixed steps and learning rate (certify's defaults, written out so that a change of the
# defaults shows up here as a change of bounds, not silently).
ALPHA = AlphaCrownOptions(iterations=20, lr=0.5)
# MarginBounder computes in float32 (it traces the model on a float32 image), so the
# bounds are float32 values. Run to run on one machine they are bit-identical, alpha-CROWN
# included (its Adam steps are deterministic on the CPU); between thread counts or CPUs
# float32 kernels sum in other orders, which moved them by up to 4e-6 (two threads instead
# of one). 1e-4 (relative plus absolute) leaves room for that and catches any real change.
RTOL = ATOL = 1e-4
# Float32 rounding of the model's own logits, for the sampling check.
SAMPLE_SLACK = 1e-5
SAMPLES = 1000


def _dense_mlp() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4)
    )


def _tiny_conv() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(32, 4),
    )  # fmt: skip


@dataclass(frozen=True)
class Case:
    """A model with fixed inputs and eps; ``build`` is None for the bundled model."""

    build: Callable[[], nn.Module] | None
    input_shape: tuple[int, ...]
    num_inputs: int
    eps: float
    seed: int = 0


CASES = {
    "dense_mlp": Case(_dense_mlp, (1, 8, 8), 3, 0.05, seed=1),
    "tiny_conv": Case(_tiny_conv, (3, 8, 8), 3, 0.05, seed=2),
    # Past half its training eps, where CROWN and alpha-CROWN part from IBP.
    "bundled_mnist": Case(None, (1, 28, 28), 4, 0.3),
}


@dataclass
class Problem:
    model: nn.Module
    images: torch.Tensor
    labels: torch.Tensor
    eps: float
    entry: dict[str, Any]  # what the golden file stores about it, margins aside


def _drawn(case: Case) -> Problem:
    """A small model, its inputs and labels (its own predictions) from the case's seed."""
    assert case.build is not None
    generator = torch.Generator().manual_seed(case.seed)
    model = case.build().eval()
    with torch.no_grad():
        for name, tensor in model.named_parameters():
            fan_in = tensor[0].numel() if name.endswith("weight") else 1
            scale = (2.0 / fan_in) ** 0.5 if name.endswith("weight") else 0.1
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * scale)
        images = torch.rand(case.num_inputs, *case.input_shape, generator=generator)
        labels = model(images).argmax(1)
    return _small_problem(model, images, labels, case.eps)


def _small_problem(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float
) -> Problem:
    entry = {
        "eps": eps,
        "labels": labels.tolist(),
        "inputs": _tensor_entry(images),
        "weights": {name: _tensor_entry(t) for name, t in model.state_dict().items()},
    }
    return Problem(model, images, labels, eps, entry)


def _stored(name: str, entry: dict[str, Any]) -> Problem:
    case = CASES[name]
    if case.build is None:
        return _bundled(case, entry)
    model = case.build().eval()
    weights = {key: _tensor(value) for key, value in entry["weights"].items()}
    model.load_state_dict(weights)
    labels = torch.tensor(entry["labels"])
    return _small_problem(model, _tensor(entry["inputs"]), labels, entry["eps"])


def _bundled(case: Case, entry: dict[str, Any] | None) -> Problem:
    """The bundled model on its first test images; with a stored entry, checked to be
    the model and images the stored margins were computed for."""
    digest = hashlib.sha256(EMBEDDED_MODEL.read_bytes()).hexdigest()
    data = load_split("mnist", EMBEDDED_DATA, "test", num_samples=case.num_inputs)
    eps = case.eps if entry is None else entry["eps"]
    if entry is not None:
        if entry["sha256"] != digest:
            pytest.fail(
                f"{EMBEDDED_MODEL.name} changed since the margins were stored: {REGENERATE}"
            )
        if data.labels.tolist() != entry["labels"]:
            pytest.fail(f"the bundled MNIST images changed: {REGENERATE}")
    model = load_model(EMBEDDED_MODEL).model.eval()
    fresh = {"eps": eps, "labels": data.labels.tolist(), "sha256": digest}
    return Problem(model, data.images, data.labels, eps, fresh)


def _tensor_entry(t: torch.Tensor) -> dict[str, Any]:
    # Nine significant digits give back the same float32.
    return {"shape": list(t.shape), "values": [float(f"{v:.9g}") for v in t.flatten().tolist()]}


def _tensor(entry: dict[str, Any]) -> torch.Tensor:
    return torch.tensor(entry["values"], dtype=torch.float32).view(entry["shape"])


class Bounds:
    """Margin bounds of each problem by each method, each computed once."""

    def __init__(self, problems: dict[str, Problem]) -> None:
        self.problems = problems
        self._bounders: dict[str, MarginBounder] = {}
        self._margins: dict[tuple[str, BoundMethod], torch.Tensor] = {}

    def margins(self, name: str, method: BoundMethod) -> torch.Tensor:
        if (name, method) not in self._margins:
            p = self.problems[name]
            if name not in self._bounders:
                shape = tuple(p.images.shape[1:])
                self._bounders[name] = MarginBounder(
                    p.model, shape, torch.device("cpu"), alpha=ALPHA
                )
            bounder = self._bounders[name]
            self._margins[name, method] = bounder.lower_bounds(p.images, p.labels, p.eps, method)
        return self._margins[name, method]


def _regenerate(old: dict[str, Any] | None) -> None:
    models = (old or {}).get("models", {})
    problems = {
        name: _stored(name, models[name]) if name in models else _fresh(name) for name in CASES
    }
    bounds = Bounds(problems)
    out: dict[str, Any] = {
        "about": f"margin lower bounds pinned by tests/test_golden_bounds.py; {REGENERATE}",
        "torch": torch.__version__,
        "alpha_crown": {"iterations": ALPHA.iterations, "lr": ALPHA.lr},
        "models": {},
    }
    for name, p in problems.items():
        margins = {m.value: _rows(bounds.margins(name, m)) for m in METHODS}
        out["models"][name] = {**p.entry, "margins": margins}
    GOLDEN_FILE.parent.mkdir(exist_ok=True)
    GOLDEN_FILE.write_text(_dumps(out) + "\n")


def _rows(margins: torch.Tensor) -> list[list[float]]:
    """Margins (N, K-1) as one list per image, each float32 in nine digits."""
    return [[float(f"{v:.9g}") for v in row] for row in margins.tolist()]


def _fresh(name: str) -> Problem:
    case = CASES[name]
    return _bundled(case, None) if case.build is None else _drawn(case)


def _dumps(obj: Any, indent: str = "") -> str:
    """JSON with one line per list of numbers: margins diff row by row."""
    inner = indent + "  "
    if isinstance(obj, dict):
        items = [f"{inner}{json.dumps(k)}: {_dumps(v, inner)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + f"\n{indent}}}"
    if isinstance(obj, list) and obj and isinstance(obj[0], list):
        return "[\n" + ",\n".join(inner + _dumps(v, inner) for v in obj) + f"\n{indent}]"
    return json.dumps(obj)


@pytest.fixture(scope="module")
def golden() -> dict[str, Any]:
    old = json.loads(GOLDEN_FILE.read_text()) if GOLDEN_FILE.is_file() else None
    if os.environ.get(REGENERATE_VARIABLE) == "1":
        _regenerate(old)
        pytest.skip(f"{REGENERATE_VARIABLE}=1: wrote {GOLDEN_FILE}, compared nothing")
    if old is None:
        pytest.fail(f"{GOLDEN_FILE} is missing: {REGENERATE}")
    return old


@pytest.fixture(scope="module")
def bounds(golden: dict[str, Any]) -> Bounds:
    return Bounds({name: _stored(name, golden["models"][name]) for name in CASES})


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.value)
@pytest.mark.parametrize("name", list(CASES))
def test_margins_equal_the_stored_ones(
    golden: dict[str, Any], bounds: Bounds, name: str, method: BoundMethod
) -> None:
    stored = torch.tensor(golden["models"][name]["margins"][method.value])
    got = bounds.margins(name, method)
    assert got.shape == stored.shape, f"{name} {method.value}: {got.shape} vs {stored.shape}"
    allowed = ATOL + RTOL * stored.abs()
    change = got - stored
    where = f"{name}, {method.value}"
    # The worst of the margins past their own tolerance (each stored value has its own).
    looser = (change < -allowed).flatten()
    worst = int(torch.where(looser, change.flatten(), torch.inf).argmin())
    image, margin = divmod(worst, stored.shape[1])
    if looser.any():
        pytest.fail(
            f"{where}: bound looser than stored, image {image} margin {margin}: "
            f"{got[image, margin].item():.9g} < {stored[image, margin].item():.9g} "
            f"(by {-change.min().item():.3g}; {int((change < -allowed).sum())} margins looser)"
        )
    tighter = (change > allowed).flatten()
    worst = int(torch.where(tighter, change.flatten(), -torch.inf).argmax())
    image, margin = divmod(worst, stored.shape[1])
    if tighter.any():
        pytest.fail(
            f"{where}: tighter than stored, image {image} margin {margin}: "
            f"{got[image, margin].item():.9g} > {stored[image, margin].item():.9g} "
            f"(by {change.max().item():.3g}): regenerate with {REGENERATE}"
        )


@pytest.mark.parametrize("name", list(CASES))
def test_stored_margins_hold_on_sampled_points(
    golden: dict[str, Any], bounds: Bounds, name: str
) -> None:
    """No point of the clipped eps-box, drawn uniformly or at random corners, has a margin
    below the tightest stored bound of any method."""
    p = bounds.problems[name]
    entry = golden["models"][name]
    tightest = torch.stack([torch.tensor(entry["margins"][m.value]) for m in METHODS]).amax(0)
    generator = torch.Generator().manual_seed(0)
    num_classes = tightest.shape[1] + 1
    for i, (image, label) in enumerate(zip(p.images, p.labels, strict=True)):
        shape = (SAMPLES, *image.shape)
        uniform = torch.rand(shape, generator=generator) * 2 - 1
        corners = torch.randint(0, 2, shape, generator=generator) * 2.0 - 1
        points = (image + p.eps * torch.cat([uniform, corners])).clamp(0.0, 1.0)
        spec = margin_matrix(label.expand(len(points)), num_classes)
        with torch.no_grad():
            margins = torch.einsum("nck,nk->nc", spec, p.model(points))
        lowest = margins.amin(0)
        below = lowest < tightest[i] - SAMPLE_SLACK * (1 + tightest[i].abs())
        assert not below.any(), (
            f"{name}, image {i}: a sampled point has margins {lowest.tolist()} below the "
            f"stored bounds {tightest[i].tolist()}"
        )
