"""The linear relaxation of sigmoid and tanh (patch ``s_shaped_relaxation`` of
certify.bounds.lirpa_compat) and the CROWN bounds it gives.

auto-LiRPA 0.3 clamps the pre-activation bounds to +-500 before relaxing (unsound beyond)
and, on intervals that contain the inflection point, always takes the tangent through
the far end of the interval. The tests check the patched lines point by point on dense
grids (zero tolerance, in float64), their choice on hand-worked intervals, and CROWN on
a one-hidden-layer network against a CROWN written here whose lines are found by brute
force. ``test_0_3_is_looser_than_the_hand_written_crown`` runs that comparison without
the patch: 0.3's bound falls below the reference.
"""

from __future__ import annotations

import importlib
import math
import os
import subprocess
import sys
import types
import warnings
import zlib
from pathlib import Path

import pytest
import torch
from torch import nn

from certify.bounds import lirpa_compat as lirpa
from certify.bounds.lirpa import perturbed
from certify.bounds.margins import BoundMethod, MarginBounder, margin_matrix
from tests.conftest import REPO_ROOT


def _sigmoid_grad(x: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(x) * torch.sigmoid(-x)


def _tanh_grad(x: torch.Tensor) -> torch.Tensor:
    return 1.0 / torch.cosh(x) ** 2


FUNCTIONS = {"sigmoid": (torch.sigmoid, _sigmoid_grad), "tanh": (torch.tanh, _tanh_grad)}


@pytest.fixture(scope="module")
def ops() -> types.ModuleType:
    lirpa.load_auto_lirpa()
    return importlib.import_module("auto_LiRPA.bound_ops")


def _node_lines(ops: types.ModuleType, name: str, lower: torch.Tensor, upper: torch.Tensor):
    """The lines (lower k, b, upper k, b) that auto_LiRPA's node relaxes with, in float64."""
    node = {"sigmoid": ops.BoundSigmoid, "tanh": ops.BoundTanh}[name]({}, [], 0, {})
    x = types.SimpleNamespace(lower=lower, upper=upper)
    node.init_linear_relaxation(x)
    node.bound_relax(x)
    return [t.double() for t in (node.lw, node.lb, node.uw, node.ub)]


def _intervals(kind: str, n: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    # A seed fixed per kind (str hashes change between runs), so a failure reproduces.
    g = torch.Generator().manual_seed(zlib.crc32(kind.encode()))

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=g)

    if kind == "narrow":
        centre = 3 * torch.randn(n, generator=g)
        lower, upper = centre, centre + uniform(0, 1e-3)
    elif kind == "wide":
        lower, upper = -uniform(0.1, 30), uniform(0.1, 30)
    elif kind == "negative":
        upper = -uniform(0, 10)
        lower = upper - uniform(0, 20)
    elif kind == "positive":
        lower = uniform(0, 10)
        upper = lower + uniform(0, 20)
    elif kind == "crossing":  # far more on one side of 0 than on the other
        lower, upper = -uniform(1e-4, 40), uniform(1e-4, 3)
        swap = torch.rand(n, generator=g) < 0.5
        lower, upper = torch.where(swap, -upper, lower), torch.where(swap, -lower, upper)
    elif kind == "huge":  # beyond the +-500 that 0.3 clamps to
        a, b = uniform(-5000, 5000), uniform(-5000, 5000)
        lower, upper = torch.minimum(a, b), torch.maximum(a, b)
    elif kind == "degenerate":
        lower = torch.cat([torch.zeros(3), 5 * torch.randn(n - 3, generator=g)])
        upper = lower.clone()
    elif kind == "touching_zero":
        width = uniform(1e-3, 20)
        left = torch.rand(n, generator=g) < 0.5
        lower, upper = torch.where(left, -width, 0.0), torch.where(left, 0.0, width)
    else:
        raise AssertionError(kind)
    return lower.view(1, n), upper.view(1, n)


KINDS = [
    "narrow",
    "wide",
    "negative",
    "positive",
    "crossing",
    "huge",
    "degenerate",
    "touching_zero",
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
def test_lines_hold_on_a_dense_grid(ops: types.ModuleType, name: str, kind: str) -> None:
    f, _ = FUNCTIONS[name]
    lower, upper = _intervals(kind)
    lk, lb, uk, ub = _node_lines(ops, name, lower, upper)
    t = torch.linspace(0, 1, 4001, dtype=torch.float64).view(-1, 1)
    x = lower.double() + (upper.double() - lower.double()) * t  # both ends exactly
    y = f(x)
    assert (lk * x + lb <= y).all(), f"lower line above {name} by {(lk * x + lb - y).max():.3g}"
    assert (uk * x + ub >= y).all(), f"upper line below {name} by {(y - uk * x - ub).max():.3g}"
    if kind != "huge":  # not vacuous: each line touches the function (grid step <= 0.02)
        assert ((y - lk * x - lb).min(0).values <= 1e-4).all()
        assert ((uk * x + ub - y).min(0).values <= 1e-4).all()


@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
def test_infinite_bounds_get_the_function_range(ops: types.ModuleType, name: str) -> None:
    f, _ = FUNCTIONS[name]
    lower = torch.tensor([[-math.inf, -math.inf, 2.0]])
    upper = torch.tensor([[1.0, math.inf, math.inf]])
    lk, lb, uk, ub = _node_lines(ops, name, lower, upper)
    assert lk.tolist() == [[0.0] * 3] and uk.tolist() == [[0.0] * 3]
    # Constant lines at f(lower) and f(upper), rounded outwards to float32.
    assert (lb <= f(lower.double())).all() and (lb >= f(lower.double()) - 1e-6).all()
    assert (ub >= f(upper.double())).all() and (ub <= f(upper.double()) + 1e-6).all()


def _line_through(f, x0: float, x1: float) -> tuple[float, float]:
    k = (f(torch.tensor(x1, dtype=torch.float64)) - f(torch.tensor(x0, dtype=torch.float64))) / (
        x1 - x0
    )
    return k.item(), (f(torch.tensor(x0, dtype=torch.float64)) - k * x0).item()


def _tangent(f, df, d: float) -> tuple[float, float]:
    d64 = torch.tensor(d, dtype=torch.float64)
    return df(d64).item(), (f(d64) - df(d64) * d).item()


@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
def test_the_lines_chosen_on_hand_worked_intervals(ops: types.ModuleType, name: str) -> None:
    """Convex side (u <= 0): chord above, midpoint tangent below; concave side mirrored.
    Across 0: the chord where it stays on its side of f (slope at the near end above
    the chord's), else the midpoint tangent when valid ([-10, 1]: the tangent at -4.5
    passes below f(1), 0.3 took the tangent through (1, f(1))), else the tangent through
    the far end ([-3, 6] below: the midpoint 1.5 is on the wrong side of 0)."""
    f, df = FUNCTIONS[name]
    lower = torch.tensor([[-3.0, 1.0, -10.0, -1.0, -3.0]])
    upper = torch.tensor([[-1.0, 3.0, 1.0, 10.0, 6.0]])
    lk, lb, uk, ub = (t[0].tolist() for t in _node_lines(ops, name, lower, upper))
    expected_lower = [
        _tangent(f, df, -2.0),
        _line_through(f, 1.0, 3.0),
        _tangent(f, df, -4.5),
        None,  # [-1, 10] is the mirror of [-10, 1]: checked through the upper line
        None,  # [-3, 6]: checked below
    ]
    expected_upper = [
        _line_through(f, -3.0, -1.0),
        _tangent(f, df, 2.0),
        _line_through(f, -10.0, 1.0),
        _tangent(f, df, 4.5),
        None,
    ]
    for i, line in enumerate(expected_lower):
        if line is not None:
            assert lk[i] == pytest.approx(line[0], abs=1e-6) and lb[i] == pytest.approx(
                line[1], abs=1e-6
            ), f"lower line on [{lower[0, i]}, {upper[0, i]}]"
    for i, line in enumerate(expected_upper):
        if line is not None:
            assert uk[i] == pytest.approx(line[0], abs=1e-6) and ub[i] == pytest.approx(
                line[1], abs=1e-6
            ), f"upper line on [{lower[0, i]}, {upper[0, i]}]"
    # [-3, 6]: the lower line touches f at a point d of [-3, 0] with f's slope there,
    # and passes through (6, f(6)): the tangent closest to 0 that stays below f.
    x = torch.linspace(-3.0, 0.0, 30001, dtype=torch.float64)
    gap = f(x) - (lk[4] * x + lb[4])
    assert gap.min().item() == pytest.approx(0.0, abs=1e-7)
    assert df(x[gap.argmin()]).item() == pytest.approx(lk[4], rel=1e-3)
    f6 = f(torch.tensor(6.0, dtype=torch.float64)).item()
    assert f6 - 1e-5 <= lk[4] * 6.0 + lb[4] <= f6


# --- CROWN against a CROWN written here --------------------------------------------------


def _best_line(f, df, lower: float, upper: float, below: bool) -> tuple[float, float]:
    """Brute force: of the chord and the tangents at 401 points of [lower, upper], the
    line that stays below (above) f on 2001 points with the largest (smallest) integral
    over the interval, i.e. the highest (lowest) mean value."""
    x = torch.linspace(lower, upper, 2001, dtype=torch.float64)
    p = torch.linspace(lower, upper, 401, dtype=torch.float64)
    ends = torch.tensor([lower, upper], dtype=torch.float64)
    chord = (f(ends[1]) - f(ends[0])) / max(upper - lower, 1e-300)
    k = torch.cat([df(p), chord.view(1)])
    b = torch.cat([f(p) - df(p) * p, (f(ends[0]) - chord * lower).view(1)])
    values = k[:, None] * x + b[:, None]
    valid = (values <= f(x) + 1e-12).all(1) if below else (values >= f(x) - 1e-12).all(1)
    mean = k * (lower + upper) / 2 + b
    score = torch.where(valid, mean if below else -mean, -math.inf)
    i = int(score.argmax())
    return k[i].item(), b[i].item()


def _hand_crown(model: nn.Sequential, x_l: torch.Tensor, x_u: torch.Tensor, spec, f, df):
    """CROWN for Linear -> activation -> Linear: exact pre-activation intervals, the
    brute-force lines, then the spec through the last layer, each hidden unit's line
    chosen by the sign of its coefficient, and the result minimized over the box."""
    w1, b1 = model[0].weight.double(), model[0].bias.double()
    w2, b2 = model[2].weight.double(), model[2].bias.double()
    bounds = []
    for xl, xu, c in zip(x_l.double(), x_u.double(), spec.double(), strict=True):
        zl = w1.clamp(min=0) @ xl + w1.clamp(max=0) @ xu + b1
        zu = w1.clamp(min=0) @ xu + w1.clamp(max=0) @ xl + b1
        lines = [
            (_best_line(f, df, lo, hi, True), _best_line(f, df, lo, hi, False))
            for lo, hi in zip(zl.tolist(), zu.tolist(), strict=True)
        ]
        a = c @ w2  # (specs, hidden)
        pick = [
            [lines[j][0 if a[r, j] >= 0 else 1] for j in range(a.shape[1])]
            for r in range(a.shape[0])
        ]
        k = torch.tensor([[line[0] for line in row] for row in pick], dtype=torch.float64)
        b = torch.tensor([[line[1] for line in row] for row in pick], dtype=torch.float64)
        coeff = (a * k) @ w1
        const = (a * k) @ b1 + (a * b).sum(1) + c @ b2
        bounds.append(const + coeff.clamp(min=0) @ xl + coeff.clamp(max=0) @ xu)
    return torch.stack(bounds)


def _one_hidden_layer(activation: type[nn.Module]) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 12), activation(), nn.Linear(12, 3))
    with torch.no_grad():  # wide pre-activation intervals, mostly off-centre
        model[0].weight.mul_(6.0)
        model[0].bias.normal_(0.0, 2.0)
    return model.eval()


@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
def test_crown_equals_the_hand_written_crown(name: str) -> None:
    f, df = FUNCTIONS[name]
    model = _one_hidden_layer({"sigmoid": nn.Sigmoid, "tanh": nn.Tanh}[name])
    x = torch.rand(4, 5)
    labels = model(x).argmax(1)
    eps = 0.25
    x_l, x_u = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    crown = MarginBounder(model, (5,), torch.device("cpu")).lower_bounds(
        x, labels, eps, BoundMethod.CROWN
    )
    spec = margin_matrix(labels, 3)
    reference = _hand_crown(model, x_l, x_u, spec, f, df).float()
    # The brute force places its tangents on a grid: the two agree to its resolution.
    gap = (reference - crown).max().item()
    assert gap <= 5e-3, f"CROWN is {gap:.3g} looser than the hand-written CROWN"
    assert (crown - reference).max().item() <= 5e-3
    with torch.no_grad():  # and it is sound
        points = x_l + (x_u - x_l) * torch.rand(2000, *x.shape)
        margins = torch.einsum("nck,snk->snc", spec, model(points))
    assert (margins >= crown - 1e-5).all()


@pytest.mark.slow
def test_0_3_is_looser_than_the_hand_written_crown(ops: types.ModuleType) -> None:
    """Without the patch, the comparison above fails: 0.3's CROWN bound is below the
    reference."""
    if "s_shaped_relaxation" not in lirpa.applied_patches():
        pytest.skip("this auto_LiRPA does not need s_shaped_relaxation")
    test = f"{Path(__file__).resolve()}::test_crown_equals_the_hand_written_crown"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test],
        cwd=REPO_ROOT, env={**os.environ, lirpa.SKIP_ENV: "s_shaped_relaxation"},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    report = result.stdout + result.stderr
    assert result.returncode == 1, report[-3000:]
    assert "looser than the hand-written CROWN" in report, report[-3000:]
    assert "2 failed" in report, report[-3000:]


@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
def test_alpha_crown_starts_from_crown_and_stays_sound(name: str) -> None:
    """alpha-CROWN optimizes the tangent points from CROWN's: its own bound (before
    certify takes the larger of the two) is no looser than CROWN's, tighter on some
    margins, and sound."""
    model = _one_hidden_layer({"sigmoid": nn.Sigmoid, "tanh": nn.Tanh}[name])
    x = torch.rand(4, 5)
    labels = model(x).argmax(1)
    eps = 0.25
    bounder = MarginBounder(model, (5,), torch.device("cpu"))
    crown = bounder.lower_bounds(x, labels, eps, BoundMethod.CROWN)
    spec = margin_matrix(labels, 3)
    bounder.module.set_bound_opts({"optimize_bound_args": {"iteration": 20, "keep_best": True}})
    with torch.enable_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # 0.3 steps its scheduler first
        raw, _ = bounder.module.compute_bounds(
            x=(perturbed(x, eps),), C=spec, method="CROWN-Optimized", bound_upper=False
        )
    raw = raw.detach()
    assert (raw >= crown - 1e-4).all()
    assert (raw > crown + 1e-3).any(), "the optimization moved no tangent point"
    x_l, x_u = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    with torch.no_grad():
        points = x_l + (x_u - x_l) * torch.rand(2000, *x.shape)
        margins = torch.einsum("nck,snk->snc", spec, model(points))
    assert (margins >= raw - 1e-5).all()
