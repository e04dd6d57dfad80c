"""Tests of certify.bounds.lirpa_compat, the fixes that make auto-LiRPA 0.3 work on current torch.

Each patch is proven by a real bound computation that crashed or went wrong without it,
checked against an independent reference: sampled outputs of the plain model (soundness),
interval arithmetic written here (IBP), CROWN (or alpha-CROWN) in conv_mode "matrix" (for
patches-mode bugs), or the same network written without the problematic layer (or with
parameters instead of buffers). To see a test fail without its patch, run it with
``CERTIFY_LIRPA_SKIP=<patch name>``. The sigmoid and tanh relaxation
(``s_shaped_relaxation``) is tested in tests/test_sigmoid_relaxation.py, its alpha-CROWN
before a convolution (``s_shaped_conv_alpha``) here.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import os
import subprocess
import sys
import types
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import numpy as np
import pytest
import torch
from torch import nn

from certify.bounds import lirpa_compat as lirpa
from certify.bounds.margins import AlphaCrownOptions, BoundMethod, MarginBounder, margin_matrix
from certify.core.errors import CertifyError
from model_zoo.normalization import NormalizedModel
from model_zoo.onnx.loading import load_onnx
from tests.conftest import REPO_ROOT

EPS = 0.03
TOL = 1e-5  # soundness: float32 rounding only
AGREE = 1e-4  # two bound computations that should be the same arithmetic


@pytest.fixture(scope="module")
def auto_lirpa() -> types.ModuleType:
    return lirpa.load_auto_lirpa()


# --- helpers ---------------------------------------------------------------------------


def _box(x: torch.Tensor, eps: float = EPS) -> tuple[torch.Tensor, torch.Tensor]:
    return (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)


def _bounds(
    model: nn.Module,
    x: torch.Tensor,
    method: str,
    mode: str = "patches",
    eps: float = EPS,
    C: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    al = lirpa.load_auto_lirpa()
    model.eval()
    bounded = al.BoundedModule(
        model, torch.zeros(1, *x.shape[1:]), bound_opts={"conv_mode": mode}, device="cpu"
    )
    x_l, x_u = _box(x, eps)
    ptb = al.PerturbationLpNorm(norm=float("inf"), eps=eps, x_L=x_l, x_U=x_u)
    lb, ub = bounded.compute_bounds(x=(al.BoundedTensor(x, ptb),), method=method, C=C)
    return lb.detach(), ub.detach()


def _assert_sound(
    model: nn.Module,
    x: torch.Tensor,
    lb: torch.Tensor,
    ub: torch.Tensor,
    eps: float = EPS,
    C: torch.Tensor | None = None,
    samples: int = 300,
) -> None:
    """Every output of the plain model at random points and corners of the box lies in
    [lb, ub]."""
    x_l, x_u = _box(x, eps)
    batch = x.shape[0]
    t = torch.rand(batch, samples, *x.shape[1:])
    t[:, :2] = torch.tensor([0.0, 1.0]).view(1, 2, *([1] * (x.ndim - 1)))
    t[:, 2:8] = torch.randint(0, 2, t[:, 2:8].shape).float()  # random corners
    points = x_l.unsqueeze(1) + (x_u - x_l).unsqueeze(1) * t
    with torch.no_grad():
        out = model.eval()(points.flatten(0, 1)).view(batch, samples, -1)
    if C is not None:
        out = torch.einsum("bsk,bok->bso", out, C)
    assert lb.shape == ub.shape == out[:, 0].shape
    below = (lb.unsqueeze(1) - out).max().item()
    above = (out - ub.unsqueeze(1)).max().item()
    assert below <= TOL and above <= TOL, f"unsound by {max(below, above):.3g}"


def _assert_margins_sound(
    model: nn.Module, x: torch.Tensor, labels: torch.Tensor, lower: torch.Tensor, eps: float
) -> None:
    """No margin z_y - z_j of the plain model at sampled points of the box is below its
    lower bound (lower is (N, K-1), as MarginBounder gives it)."""
    C = margin_matrix(labels, lower.shape[1] + 1)
    _assert_sound(model, x, lower, torch.full_like(lower, float("inf")), eps, C)


def _run_alone(test: str, skip: str = "") -> subprocess.CompletedProcess[str]:
    """Run ``test`` of this file by itself in a fresh interpreter, leaving out the
    patches named in ``skip``."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x"]
    return subprocess.run(
        [*command, f"{Path(__file__).resolve()}::{test}"],
        cwd=REPO_ROOT, env={**os.environ, lirpa.SKIP_ENV: skip},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def _fails_without(patch: str, test: str, expected: str) -> None:
    """``test`` fails when run with ``patch`` left out, and with ``expected`` (the
    breakage the patch is for) in its report."""
    if patch not in lirpa.applied_patches():
        pytest.skip(f"this auto_LiRPA does not need {patch}")
    result = _run_alone(test, skip=patch)
    report = result.stdout + result.stderr
    assert result.returncode == 1, f"{test} does not fail without {patch}:\n{report[-3000:]}"
    assert expected in report, f"{test} fails otherwise without {patch}:\n{report[-3000:]}"


def _assert_close(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...], tol: float = AGREE):
    diff = max((p - q).abs().max().item() for p, q in zip(a, b, strict=True))
    assert diff <= tol, f"bounds differ by {diff:.3g}"


def _interval(model: nn.Module, x_l: torch.Tensor, x_u: torch.Tensor):
    """Interval arithmetic through a Sequential, written independently of auto_LiRPA."""
    for layer in model:
        if isinstance(layer, nn.Conv2d | nn.Linear):
            center, radius = (x_u + x_l) / 2, (x_u - x_l) / 2
            if isinstance(layer, nn.Conv2d):
                mid = layer(center)
                rad = nn.functional.conv2d(
                    radius, layer.weight.abs(), None, layer.stride, layer.padding,
                    layer.dilation, layer.groups,
                )  # fmt: skip
            else:
                mid, rad = layer(center), radius @ layer.weight.abs().t()
            x_l, x_u = mid - rad, mid + rad
        elif isinstance(layer, nn.BatchNorm2d):
            scale = layer.weight / torch.sqrt(layer.running_var + layer.eps)
            shift = layer.bias - layer.running_mean * scale
            scale, shift = scale.view(1, -1, 1, 1), shift.view(1, -1, 1, 1)
            lo, hi = scale * x_l + shift, scale * x_u + shift
            x_l, x_u = torch.minimum(lo, hi), torch.maximum(lo, hi)
        else:  # monotone: ReLU, AvgPool2d, Flatten
            x_l, x_u = layer(x_l), layer(x_u)
    return x_l.detach(), x_u.detach()


def _random_bn(c: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(c)
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    return bn


def _dense_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """The same convolution with groups=1: a block-diagonal weight, zero across groups."""
    g, w = conv.groups, conv.weight.detach()
    out_per_group, in_per_group = w.shape[0] // g, w.shape[1]
    dense = nn.Conv2d(
        in_per_group * g, w.shape[0], conv.kernel_size, conv.stride, conv.padding,
        bias=conv.bias is not None,
    )  # fmt: skip
    with torch.no_grad():
        dense.weight.zero_()
        for i in range(g):
            rows = slice(i * out_per_group, (i + 1) * out_per_group)
            cols = slice(i * in_per_group, (i + 1) * in_per_group)
            dense.weight[rows, cols] = w[rows]
        if conv.bias is not None:
            dense.bias.copy_(conv.bias)
    return dense


# --- loading, import-time shims and the canary for private torch symbols ---------------


def test_importing_the_module_patches_nothing() -> None:
    code = (
        "import sys; import certify.bounds.lirpa_compat as m\n"
        "assert 'auto_LiRPA' not in sys.modules and m.applied_patches() == []\n"
        "assert 'torch' not in sys.modules or not hasattr(sys.modules['torch']._C.Node,"
        " '__getitem__')\n"
        "a = m.load_auto_lirpa(); first = m.applied_patches()\n"
        "assert m.load_auto_lirpa() is a and m.applied_patches() == first and first\n"
    )
    repo = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, cwd=repo)


@pytest.mark.parametrize("shim", sorted(lirpa.TORCH_PRIVATE_SYMBOLS))
def test_private_torch_symbols_still_exist(shim: str) -> None:
    """Fails, naming the shim, when a new torch moves a private symbol a shim relies on."""
    found = []
    for location in lirpa.TORCH_PRIVATE_SYMBOLS[shim]:
        with contextlib.suppress(ImportError, AttributeError):
            found.append(lirpa.resolve(location))
    assert found, (
        f"shim {shim} of certify.bounds.lirpa_compat broke: this torch has none of "
        f"{', '.join(lirpa.TORCH_PRIVATE_SYMBOLS[shim])}; find where it moved"
    )


def test_load_and_a_tiny_crown_bound_is_sound(auto_lirpa: types.ModuleType) -> None:
    """The end-to-end canary: if a new torch or numpy breaks a shim, this says so."""
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 5 * 5, 3)
    )
    x = torch.rand(2, 1, 5, 5)
    try:
        lb, ub = _bounds(model, x, "CROWN")
    except Exception as exc:  # pragma: no cover - only on a breaking upgrade
        pytest.fail(
            f"CROWN failed with patches {lirpa.applied_patches()}: {type(exc).__name__}: {exc}"
        )
    _assert_sound(model, x, lb, ub)


def test_every_applied_bug_fix_removes_the_bug(auto_lirpa: types.ModuleType) -> None:
    """After loading, each class patch's own check finds its bug gone (which also makes
    load_auto_lirpa idempotent), and each patch says why it exists."""
    for patch in lirpa.PATCHES:
        assert patch.apply.__doc__, f"patch {patch.name} needs a docstring saying why"
        if not patch.at_import and patch.name in lirpa.applied_patches():
            assert not patch.needed(), f"patch {patch.name} applied but its bug is still there"


def test_missing_auto_lirpa_says_to_run_install_sh(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: object) -> object:
        return None if name == "auto_LiRPA" else real_find_spec(name, *args)

    monkeypatch.setattr(lirpa.registry, "_MODULE", None)
    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(CertifyError, match=r"\./install\.sh") as info:
        lirpa.load_auto_lirpa()
    assert "\n" not in str(info.value)


def test_numpy_arraysetops_shim_is_gone_after_import(auto_lirpa: types.ModuleType) -> None:
    """auto_LiRPA imports isin from numpy.lib.arraysetops, which numpy 2 removed; the stub
    must give numpy's isin and must not outlive the import."""
    base = importlib.import_module("auto_LiRPA.operators.base")
    assert base.isin([1, 2, 3], [2]).tolist() == np.isin([1, 2, 3], [2]).tolist()
    if "numpy_arraysetops" in lirpa.applied_patches():
        assert "numpy.lib.arraysetops" not in sys.modules


def test_torch_onnx_shims_trace_the_graph(auto_lirpa: types.ModuleType) -> None:
    """parse_graph needs _optimize_graph, _set_opset_version and node[name] to turn a
    model into bound operators; the traced attributes must match the layers."""
    model = nn.Sequential(nn.Conv2d(2, 4, 3, stride=2, padding=1, groups=2), nn.ReLU())
    bounded = auto_lirpa.BoundedModule(model, torch.zeros(1, 2, 6, 6), device="cpu")
    convs = [n for n in bounded.modules() if type(n).__name__ == "BoundConv"]
    assert len(convs) == 1
    conv = convs[0]
    assert list(conv.stride) == [2, 2] and list(conv.padding) == [1, 1] and conv.groups == 2
    if "torch_onnx_private_api" in lirpa.applied_patches():
        # The names put into torch for auto_LiRPA's import were taken away again.
        helper = importlib.import_module("torch.onnx.symbolic_helper")
        assert not hasattr(helper, "_set_opset_version")


def test_node_getitem_reads_typed_attributes(auto_lirpa: types.ModuleType) -> None:
    graph = torch.jit.trace(lambda t: t.transpose(0, 1) * 2.5, torch.zeros(2, 3)).graph
    values = [n["value"] for n in graph.nodes() if n.kind() == "prim::Constant"]
    # Two int attributes (the transposed dims) and a tensor attribute (the factor).
    assert values[:2] == [0, 1]
    assert isinstance(values[2], torch.Tensor) and values[2].item() == 2.5


def test_named_parameters_keep_the_model_names(auto_lirpa: types.ModuleType) -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 3 * 3, 2))
    bounded = auto_lirpa.BoundedModule(model, torch.zeros(1, 1, 5, 5), device="cpu")
    ours = dict(bounded.named_parameters())
    assert set(ours) == set(dict(model.named_parameters()))
    for name, param in model.named_parameters():
        assert torch.equal(ours[name], param)
    assert len(list(bounded.parameters())) == 4
    assert len(list(bounded.named_parameters(remove_duplicate=False))) == 4
    bounded.extra = nn.Parameter(torch.zeros(2))  # register_parameter, torch._six gone
    assert "extra" in dict(bounded.named_parameters())


# --- operators in patches mode ----------------------------------------------------------


def test_ibp_matches_interval_arithmetic(auto_lirpa: types.ModuleType) -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), _random_bn(4), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1, groups=2), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3),
    ).eval()  # fmt: skip
    x = torch.rand(2, 3, 8, 8)
    _assert_close(_bounds(model, x, "IBP"), _interval(model, *_box(x)))


def test_avgpool_after_batchnorm(auto_lirpa: types.ModuleType) -> None:
    """AvgPool2d receives a non-contiguous A from BatchNorm; compare with the same pooling
    written as a strided convolution."""
    torch.manual_seed(1)
    conv, bn, head = nn.Conv2d(3, 4, 3, padding=1), _random_bn(4), nn.Linear(4 * 4 * 4, 3)
    as_conv = nn.Conv2d(4, 4, 2, stride=2, bias=False)
    with torch.no_grad():
        as_conv.weight.copy_(torch.eye(4).view(4, 4, 1, 1).expand(-1, -1, 2, 2) / 4)
    pooled = nn.Sequential(conv, bn, nn.AvgPool2d(2), nn.ReLU(), nn.Flatten(), head).eval()
    reference = nn.Sequential(conv, bn, as_conv, nn.ReLU(), nn.Flatten(), head).eval()
    x = torch.rand(2, 3, 8, 8)
    for mode in ("patches", "matrix"):
        got = _bounds(pooled, x, "CROWN", mode)
        _assert_sound(pooled, x, *got)
        _assert_close(got, _bounds(reference, x, "CROWN", "matrix"))


def test_normalization_per_channel_constants(auto_lirpa: types.ModuleType) -> None:
    """(x - mean) / std with (1, C, 1, 1) buffers, batch > 1: compare with the network
    whose first convolution absorbs the normalization (no padding, so it is exact)."""
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    conv = nn.Conv2d(3, 4, 3)
    body = [nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3)]
    model = NormalizedModel(nn.Sequential(conv, *body), mean, std).eval()
    folded = nn.Conv2d(3, 4, 3)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        folded.weight.copy_(conv.weight / s)
        folded.bias.copy_(conv.bias - (conv.weight * m / s).sum(dim=(1, 2, 3)))
    reference = nn.Sequential(folded, *body).eval()
    x = torch.rand(3, 3, 6, 6)
    expected = _bounds(reference, x, "CROWN", "matrix")
    for method in ("CROWN", "CROWN-IBP"):
        got = _bounds(model, x, method)
        _assert_sound(model, x, *got)
        if method == "CROWN":
            _assert_close(got, expected)


class _ChannelOps(nn.Module):
    """Multiplication, division, addition and subtraction by constants mid-network: per
    channel, per pixel and scalar, on either side of the operator. (auto_LiRPA's IBP of a
    division asserts a positive divisor.)"""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(3, 3, 3, padding=1)
        self.head = nn.Linear(3 * 5 * 5, 2)
        self.register_buffer("scale", torch.tensor([0.5, -2.0, 1.5]).view(1, 3, 1, 1))
        self.register_buffer("divisor", torch.tensor([0.5, 2.0, 1.5]).view(1, 3, 1, 1))
        self.register_buffer("shift", torch.tensor([0.3, -0.1, 0.2]).view(1, 3, 1, 1))
        self.register_buffer("offset", torch.linspace(-0.5, 0.5, 75).view(1, 3, 5, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv1(x)) * self.scale
        h = self.shift - (0.5 - h / self.divisor + self.offset)
        return self.head(torch.relu(self.conv2(h)).flatten(1))


def test_constant_operands_in_patches_mode(auto_lirpa: types.ModuleType) -> None:
    model = _ChannelOps().eval()
    x = torch.rand(2, 2, 5, 5)
    got = _bounds(model, x, "CROWN")
    _assert_sound(model, x, *got)
    _assert_close(got, _bounds(model, x, "CROWN", "matrix"))


def test_grouped_convolution(auto_lirpa: types.ModuleType) -> None:
    """Bounds through grouped convolutions equal those of the block-diagonal dense net."""
    torch.manual_seed(2)
    grouped = nn.Sequential(
        nn.Conv2d(4, 8, 3, padding=1, groups=2), nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=4), nn.ReLU(),
        nn.Conv2d(8, 4, 1, groups=4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 3 * 3, 3),
    ).eval()  # fmt: skip
    dense = nn.Sequential(
        *[_dense_conv(m) if isinstance(m, nn.Conv2d) else m for m in grouped]
    ).eval()
    x = torch.rand(2, 4, 6, 6)
    for method in ("CROWN", "CROWN-IBP"):
        expected = _bounds(dense, x, method, "matrix")
        for mode in ("patches", "matrix"):
            got = _bounds(grouped, x, method, mode)
            _assert_sound(grouped, x, *got)
            _assert_close(got, expected)


def test_patches_turning_dense_without_bias(auto_lirpa: types.ModuleType) -> None:
    """Patches outgrow a 4x4 image at the first convolution, which has no bias. eps is
    large enough for most neurons to be unstable, so the intermediate bounds take the dense
    path rather than the sparse one (whose biases are flat anyway)."""
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3),
    ).eval()  # fmt: skip
    x = torch.rand(2, 3, 4, 4)
    got = _bounds(model, x, "CROWN", eps=0.1)
    _assert_sound(model, x, *got, eps=0.1)
    _assert_close(got, _bounds(model, x, "CROWN", "matrix", eps=0.1))


class _Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = _random_bn(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = _random_bn(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


def test_small_resnet(auto_lirpa: types.ModuleType) -> None:
    """Residual chain, BatchNorm, AvgPool2d and Linear layers behind normalization, with a
    spec matrix C: patches agree with matrix mode and both are sound."""
    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False), _random_bn(4), nn.ReLU(),
        _Block(4), _Block(4), _Block(4), nn.AvgPool2d(2), nn.Flatten(),
        nn.Linear(4 * 2 * 2, 8), nn.ReLU(), nn.Linear(8, 3),
    )  # fmt: skip
    model = NormalizedModel(net, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]).eval()
    x = torch.rand(2, 3, 4, 4)
    C = torch.tensor([[1.0, -1.0, 0.0], [1.0, 0.0, -1.0]]).expand(2, -1, -1)
    for method in ("CROWN", "CROWN-IBP"):
        got = _bounds(model, x, method, eps=0.005, C=C)
        _assert_sound(model, x, *got, eps=0.005, C=C)
        _assert_close(got, _bounds(model, x, method, "matrix", eps=0.005, C=C))


def test_training_gradients_match_matrix_mode(auto_lirpa: types.ModuleType) -> None:
    """Certified training backpropagates through the bounds, so the patched operators
    (grouped convolution, per-channel constants, AvgPool2d, BatchNorm in train mode) must
    give the same parameter gradients in patches mode as in matrix mode."""
    x = torch.rand(3, 3, 8, 8)
    results = {}
    for mode in ("patches", "matrix"):
        torch.manual_seed(5)
        net = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), _random_bn(4), nn.ReLU(), _Block(4),
            nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=2), nn.ReLU(), nn.AvgPool2d(2),
            nn.Flatten(), nn.Linear(8 * 2 * 2, 3),
        )  # fmt: skip
        model = NormalizedModel(net, [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]).train()
        bounded = auto_lirpa.BoundedModule(
            model, torch.zeros(1, 3, 8, 8), bound_opts={"conv_mode": mode}, device="cpu"
        )
        bounded.train()
        ptb = auto_lirpa.PerturbationLpNorm(norm=float("inf"), eps=0.01)
        lb, ub = bounded.compute_bounds(x=(auto_lirpa.BoundedTensor(x, ptb),), method="CROWN-IBP")
        (ub - lb).sum().backward()
        grads = {name: p.grad for name, p in bounded.named_parameters() if p.grad is not None}
        results[mode] = (lb.detach(), ub.detach(), grads)
    (lb_p, ub_p, grads_p), (lb_m, ub_m, grads_m) = results["patches"], results["matrix"]
    _assert_close((lb_p, ub_p), (lb_m, ub_m))
    assert set(grads_p) == set(grads_m) and len(grads_p) > 10
    for name in grads_p:
        assert torch.allclose(grads_p[name], grads_m[name], atol=1e-4, rtol=1e-4), name


# --- onnx2torch models -------------------------------------------------------------------


@contextlib.contextmanager
def _torchvision_if_missing() -> Iterator[None]:
    """onnx2torch imports torchvision (for NMS and RoiAlign only); stand in for it when it
    is not installed, and put sys.modules back afterwards."""
    names = ("torchvision", "torchvision.ops")
    saved = {name: sys.modules.get(name) for name in names}
    try:
        importlib.import_module("torchvision")
    except (ImportError, RuntimeError, OSError):  # a torchvision for another torch: OSError
        pass
    else:
        yield
        return
    torchvision, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")

    def unavailable(*args: object, **kwargs: object) -> NoReturn:
        raise RuntimeError("torchvision stand-in of tests/test_lirpa_compat.py")

    ops.roi_align = ops.nms = ops.batched_nms = unavailable
    torchvision.ops = ops
    sys.modules.update(dict(zip(names, (torchvision, ops), strict=True)))
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def test_onnx2torch_batchnorm(auto_lirpa: types.ModuleType) -> None:
    """onnx2torch turns a BatchNormalization whose inputs are not all initializers into a
    module fed by buffers, so its weights become BoundBuffers. The exporter produces that
    when it deduplicates equal initializers (here running_var == weight, running_mean ==
    bias) into Identity nodes."""
    import onnx

    with _torchvision_if_missing():
        onnx2torch = importlib.import_module("onnx2torch")
    torch.manual_seed(4)
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.uniform_(-0.5, 0.5)
        bn.running_var.copy_(bn.weight)
        bn.running_mean.copy_(bn.bias)
    net = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), bn, nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 2)
    ).eval()
    buffer = io.BytesIO()
    torch.onnx.export(
        net, (torch.zeros(1, 1, 4, 4),), buffer, dynamo=False, opset_version=17,
        do_constant_folding=False,
    )  # fmt: skip
    converted = onnx2torch.convert(onnx.load_from_string(buffer.getvalue())).eval()
    assert not any("Batch" in name for name, _ in converted.named_parameters()), (
        "the export no longer feeds BatchNorm from buffers; this test proves nothing"
    )
    x = torch.rand(2, 1, 4, 4)
    assert torch.allclose(converted(x), net(x), atol=1e-6)
    for method in ("CROWN", "CROWN-IBP"):
        for mode in ("patches", "matrix"):
            got = _bounds(converted, x, method, mode)
            _assert_sound(converted, x, *got)
            _assert_close(got, _bounds(net, x, method, mode))


# --- dense layers as MatMul + Add, Pad ---------------------------------------------------


class _DenseAsMatMulAdd(nn.Module):
    """A Keras-style network, as tf2onnx writes it: N x H x W x C input, a Transpose to
    NCHW for the convolution and back before flattening, dense layers as MatMul + Add
    (onnx2torch makes their weights and biases buffers)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.w1, self.b1 = nn.Parameter(torch.randn(64, 5) / 8), nn.Parameter(torch.randn(5))
        self.w2, self.b2 = nn.Parameter(torch.randn(5, 3) / 2), nn.Parameter(torch.randn(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x.permute(0, 3, 1, 2))).permute(0, 2, 3, 1)
        h = torch.relu(h.reshape(x.shape[0], -1) @ self.w1 + self.b1)
        return h @ self.w2 + self.b2

    def reference(self) -> nn.Sequential:
        """The same function of N x C x H x W images with nn.Linear layers: the first
        one reads the features in (C, H, W) order."""
        first, second = nn.Linear(64, 5), nn.Linear(5, 3)
        with torch.no_grad():
            first.weight.copy_(self.w1.view(4, 4, 4, 5).permute(3, 2, 0, 1).reshape(5, 64))
            first.bias.copy_(self.b1)
            second.weight.copy_(self.w2.t())
            second.bias.copy_(self.b2)
        return nn.Sequential(self.conv, nn.ReLU(), nn.Flatten(), first, nn.ReLU(), second)


def test_dense_layers_as_matmul_and_add(auto_lirpa: types.ModuleType, tmp_path: Path) -> None:
    """An NHWC ONNX model whose dense layers are MatMul + Add: every method bounds it
    (CROWN-IBP failed in concretize, CROWN in get_sparse_C), soundly, and as tightly as
    the same network with nn.Linear layers (and, for IBP, interval arithmetic)."""
    import onnx

    torch.manual_seed(6)
    model = _DenseAsMatMulAdd().eval()
    path = tmp_path / "dense_as_matmul_add.onnx"
    torch.onnx.export(model, (torch.rand(1, 6, 6, 3),), path, dynamo=False, opset_version=13)
    assert {"Transpose", "MatMul", "Add"} <= {n.op_type for n in onnx.load(path).graph.node}
    loaded = load_onnx(path, input_shape=(3, 6, 6))
    reference = model.reference().eval()
    x, labels = torch.rand(3, 3, 6, 6), torch.tensor([0, 1, 2])
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), reference(x), atol=1e-5)
    cpu = torch.device("cpu")
    ours, theirs = (
        MarginBounder(loaded.model, (3, 6, 6), cpu),
        MarginBounder(reference, (3, 6, 6), cpu),
    )
    assert theirs.hand_ibp
    # IBP bounds the logits of MatMul + Add, then their differences (nn.Linear's IBP
    # folds the margins into the last layer, which is tighter).
    logits = _interval(reference, *_box(x))
    C = margin_matrix(labels, 3)
    expected = {
        BoundMethod.IBP: C.clamp(min=0) @ logits[0].unsqueeze(-1)
        + C.clamp(max=0) @ logits[1].unsqueeze(-1)
    }
    for method in (BoundMethod.IBP, BoundMethod.CROWN_IBP, BoundMethod.CROWN):
        lower = ours.lower_bounds(x, labels, EPS, method)
        assert torch.isfinite(lower).all(), method
        _assert_margins_sound(loaded.model, x, labels, lower, EPS)
        reference_lower = expected.get(method)
        if reference_lower is None:
            reference_lower = theirs.lower_bounds(x, labels, EPS, method)
        _assert_close((lower,), (reference_lower.view_as(lower),))


def _pooling_as_convolution(channels: int, padding: int) -> nn.Conv2d:
    conv = nn.Conv2d(channels, channels, 2, stride=2, padding=padding, bias=False)
    with torch.no_grad():
        conv.weight.copy_(
            torch.eye(channels).view(channels, channels, 1, 1).expand(-1, -1, 2, 2) / 4
        )
    return conv


def test_pad_before_average_pooling(auto_lirpa: types.ModuleType) -> None:
    """F.pad (nn.ZeroPad2d, onnx2torch's Pad) traces to a Pad whose pads are attributes.
    Compare with the padding done by the pooling written as a convolution, and check an
    uneven padding against interval arithmetic and sampling."""
    torch.manual_seed(7)
    conv, head = nn.Conv2d(2, 3, 3), nn.Linear(3 * 3 * 3, 3)
    padded = nn.Sequential(conv, nn.ReLU(), nn.ZeroPad2d(1), nn.AvgPool2d(2), nn.Flatten(), head)
    reference = nn.Sequential(conv, nn.ReLU(), _pooling_as_convolution(3, 1), nn.Flatten(), head)
    uneven = nn.Sequential(
        conv, nn.ReLU(), nn.ZeroPad2d((2, 0, 0, 2)), nn.AvgPool2d(2), nn.Flatten(), head
    )  # fmt: skip
    x = torch.rand(2, 2, 6, 6)
    for model in (padded, uneven):
        model.eval()
        _assert_close(_bounds(model, x, "IBP"), _interval(model, *_box(x)))
    for method in ("CROWN", "CROWN-IBP"):
        expected = _bounds(reference.eval(), x, method, "matrix")
        for mode in ("patches", "matrix"):
            got = _bounds(padded, x, method, mode)
            _assert_sound(padded, x, *got)
            _assert_close(got, expected)
            got = _bounds(uneven, x, method, mode)
            _assert_sound(uneven, x, *got)
            _assert_close(got, _bounds(uneven, x, method, "matrix"))


@pytest.mark.slow
def test_pad_traced_as_certify_eval_traces_it() -> None:
    """Once torch.onnx.export has run in a process (as in this file's tests), torch
    traces F.pad to the Pad whose pads are inputs; before, as in ``certify eval``, to the
    one whose pads are attributes. A fresh interpreter sees the latter (the test below
    shows it: it fails there without the patch)."""
    result = _run_alone("test_pad_before_average_pooling")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]


@pytest.mark.parametrize("pad", [nn.ConstantPad2d(1, 0.5), nn.ReflectionPad2d(1)])
def test_pad_that_auto_lirpa_would_bound_wrongly_is_refused(
    auto_lirpa: types.ModuleType, pad: nn.Module
) -> None:
    """BoundPad's backward bound drops the padded values and ignores the mode."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), pad, nn.Flatten()).eval()
    with pytest.raises(NotImplementedError, match="only padding with zeros"):
        auto_lirpa.BoundedModule(model, torch.zeros(1, 1, 5, 5), device="cpu")


def test_verivital_avgpool_model(auto_lirpa: types.ModuleType, shared_models: Path) -> None:
    """VNN-COMP's MNIST Convnet_avgpool has a Pad (of zeros) before its pooling: every
    method bounds it soundly, as tightly as the same network without the Pad."""
    loaded = load_onnx(shared_models / "verivital_convnet_avgpool.onnx", input_shape=(1, 28, 28))
    layers = list(loaded.model.model.children())
    pads = [m for m in layers if type(m).__name__ == "OnnxPadStatic"]
    assert len(pads) == 1 and not any(pads[0].pads), "the file is not the one this test knows"
    reference = nn.Sequential(*[m for m in layers if m is not pads[0]]).eval()
    x, labels, eps = torch.rand(2, 1, 28, 28), torch.tensor([3, 7]), 0.02
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), reference(x), atol=1e-5)
    cpu = torch.device("cpu")
    ours, theirs = (
        MarginBounder(loaded.model, (1, 28, 28), cpu),
        MarginBounder(reference, (1, 28, 28), cpu),
    )
    assert theirs.hand_ibp
    for method in (BoundMethod.IBP, BoundMethod.CROWN_IBP, BoundMethod.CROWN):
        lower = ours.lower_bounds(x, labels, eps, method)
        assert torch.isfinite(lower).all(), method
        _assert_margins_sound(loaded.model, x, labels, lower, eps)
        _assert_close((lower,), (theirs.lower_bounds(x, labels, eps, method),))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("patch", "test", "expected"),
    [
        ("buffer_batch_dim", "test_dense_layers_as_matmul_and_add", "is invalid for input of size"),
        ("flat_add_matrix_mode", "test_dense_layers_as_matmul_and_add", "IndexError"),
        ("pad_attributes", "test_pad_before_average_pooling", "argument: 'pad'"),
        ("parameterless_model", "test_models_without_parameters", "IndexError"),
        ("parameterless_model", "test_evaluate_a_model_without_parameters", "IndexError"),
        (
            "s_shaped_conv_alpha",
            "test_alpha_crown_on_s_shaped_activations_before_a_convolution",
            "argument 'size'",
        ),
    ],
)  # fmt: skip
def test_fails_without_its_patch(
    auto_lirpa: types.ModuleType, patch: str, test: str, expected: str
) -> None:
    _fails_without(patch, test, expected)


def test_alpha_slopes_get_a_gradient_at_the_ends_of_their_range(auto_lirpa) -> None:
    """alpha-CROWN's slopes start at 0 or 1; with the patch (applied where this torch's
    clamp has no gradient there) or without (where it has), the gradient passes and the
    values are those of the clamp."""
    alpha = torch.tensor([[0.0, 1.0, 0.25]], requires_grad=True)
    lower, upper = torch.tensor([[-1.0, -1.0, 0.5]]), torch.tensor([[1.0, 1.0, 2.0]])
    slope, _, _ = auto_lirpa.operators.BoundRelu._relu_mask_alpha(lower, upper, alpha, None)
    # Unstable neurons take the clamped slope; the stable active one takes 1.
    assert slope.tolist() == [[0.0, 1.0, 1.0]]
    slope[0, :2].sum().backward()
    assert alpha.grad.tolist() == [[1.0, 1.0, 0.0]]
    x = torch.tensor([-0.5, 0.0, 0.3, 1.0, 1.5], requires_grad=True)
    assert torch.equal(lirpa.clamp_unit_passing_gradient(x), x.clamp(0.0, 1.0))
    probe = torch.tensor([0.0, 1.0], requires_grad=True)
    torch.clamp(probe, 0.0, 1.0).sum().backward()
    needed = bool((probe.grad == 0).any())
    assert ("alpha_clamp_gradient" in lirpa.applied_patches()) == needed


# --- models without parameters -----------------------------------------------------------


class _BuffersOnly(nn.Module):
    """``net`` (a Sequential of Conv2d, Linear, ReLU and Flatten) with every weight a
    buffer, as onnx2torch leaves those of MatMul and Add, and nothing a parameter:
    convolutions by F.conv2d, each bias by its own Add, dense layers by MatMul + Add,
    the last one by F.linear."""

    def __init__(self, net: nn.Sequential) -> None:
        super().__init__()
        self.steps: list[tuple[str, int, dict[str, object]]] = []
        last = max(i for i, layer in enumerate(net) if isinstance(layer, nn.Linear))
        for i, layer in enumerate(net):
            if isinstance(layer, nn.Conv2d):
                self.register_buffer(f"w{i}", layer.weight.detach().clone())
                self.register_buffer(f"b{i}", layer.bias.detach().view(1, -1, 1, 1).clone())
                args = {"stride": layer.stride, "padding": layer.padding}
                self.steps.append(("conv", i, args))
            elif isinstance(layer, nn.Linear) and i != last:
                self.register_buffer(f"w{i}", layer.weight.detach().t().contiguous())
                self.register_buffer(f"b{i}", layer.bias.detach().clone())
                self.steps.append(("matmul", i, {}))
            elif isinstance(layer, nn.Linear):
                self.register_buffer(f"w{i}", layer.weight.detach().clone())
                self.register_buffer(f"b{i}", layer.bias.detach().clone())
                self.steps.append(("linear", i, {}))
            else:
                self.steps.append((type(layer).__name__, i, {}))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for kind, i, args in self.steps:
            w, b = getattr(self, f"w{i}", None), getattr(self, f"b{i}", None)
            if kind == "conv":
                x = nn.functional.conv2d(x, w, None, **args) + b
            elif kind == "matmul":
                x = x @ w + b
            elif kind == "linear":
                x = nn.functional.linear(x, w, b)
            elif kind == "ReLU":
                x = torch.relu(x)
            else:
                x = x.flatten(1)
        return x


def _buffer_only_pair(net: nn.Sequential) -> tuple[nn.Module, nn.Module]:
    model = _BuffersOnly(net).eval()
    assert not list(model.parameters()) and list(model.buffers())
    return model, net.eval()


def _parameterless_mlp() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(8)
    return _buffer_only_pair(
        nn.Sequential(
            nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(),
            nn.Linear(16, 3),
        )
    )  # fmt: skip


def _parameterless_cnn(
    channels: int = 2, size: int = 6, classes: int = 3
) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(9)
    side = (size + 1) // 2
    return _buffer_only_pair(
        nn.Sequential(
            nn.Conv2d(channels, 4, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
            nn.Linear(4 * side * side, 8), nn.ReLU(), nn.Linear(8, classes),
        )
    )  # fmt: skip


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_models_without_parameters(auto_lirpa: types.ModuleType, kind: str) -> None:
    """A model whose weights are all buffers (onnx2torch's MatMul + Add, F.conv2d with
    buffers) has CROWN bounds (auto_LiRPA's options and certify's, alpha-CROWN too):
    sound, and those of the same network with parameters."""
    if kind == "mlp":
        (model, reference), x = _parameterless_mlp(), torch.rand(3, 1, 3, 4)
    else:
        (model, reference), x = _parameterless_cnn(), torch.rand(3, 2, 6, 6)
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), atol=1e-6)
    eps = 0.1
    for mode in ("patches", "matrix"):
        got = _bounds(model, x, "CROWN", mode, eps=eps)
        _assert_sound(model, x, *got, eps=eps)
        _assert_close(got, _bounds(reference, x, "CROWN", mode, eps=eps))
    labels = reference(x).argmax(1)
    cpu, alpha = torch.device("cpu"), AlphaCrownOptions(iterations=5)
    ours = MarginBounder(model, tuple(x.shape[1:]), cpu, alpha=alpha)
    theirs = MarginBounder(reference, tuple(x.shape[1:]), cpu, alpha=alpha)
    for method in (BoundMethod.CROWN, BoundMethod.ALPHA_CROWN):
        lower = ours.lower_bounds(x, labels, eps, method)
        _assert_margins_sound(model, x, labels, lower, eps)
        _assert_close((lower,), (theirs.lower_bounds(x, labels, eps, method),))


def test_evaluate_a_model_without_parameters(shared_data: Path) -> None:
    """certify.evaluate bounds a buffer-only module by CROWN on every image, with the
    margins of the same network with parameters."""
    import certify
    from certify.evaluation.attack import PGDConfig

    model, reference = _parameterless_cnn(channels=1, size=28, classes=10)
    config = certify.EvalConfig(
        methods="crown", mode="every-method", num_samples=8, attack=PGDConfig(steps=2)
    )
    ours, theirs = (
        certify.evaluate(network, "mnist", 0.01, config, data_dir=shared_data)
        for network in (model, reference)
    )
    lower = ours.outcomes.margin_lower[BoundMethod.CROWN]
    assert lower.shape == (8,) and torch.isfinite(lower).all()
    _assert_close((lower,), (theirs.outcomes.margin_lower[BoundMethod.CROWN],))


# --- alpha-CROWN on sigmoid and tanh before a convolution --------------------------------


def _s_shaped_cnn(activation: type[nn.Module]) -> nn.Sequential:
    torch.manual_seed(10)
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=2, padding=1), activation(),
        nn.Conv2d(4, 4, 3, padding=1), activation(), nn.Flatten(), nn.Linear(4 * 3 * 3, 3),
    )  # fmt: skip
    with torch.no_grad():  # wide pre-activation intervals, on both sides of 0
        for parameter in net.parameters():
            parameter.mul_(3.0)
    return net.eval()


def _raw_alpha_crown(model: nn.Module, x: torch.Tensor, mode: str, C: torch.Tensor, eps: float):
    """alpha-CROWN's own lower bound (certify takes the larger of it and CROWN's), with
    certify's evaluation options in conv_mode ``mode`` and one slope or tangent point per
    neuron of a convolution whose bounds pass back through them, as matrix mode keeps
    (certify's evaluation shares them per channel in patches mode)."""
    from certify.bounds.lirpa import EVALUATION_OPTIONS

    options = {
        **EVALUATION_OPTIONS, "conv_mode": mode, "use_full_conv_alpha": True,
        "optimize_bound_args": {"iteration": 10, "early_stop_patience": 11, "keep_best": True},
    }  # fmt: skip
    al = lirpa.load_auto_lirpa()
    dummy = torch.zeros(1, *x.shape[1:])
    bounded = al.BoundedModule(model, dummy, bound_opts=options, device="cpu")
    x_l, x_u = _box(x, eps)
    ptb = al.PerturbationLpNorm(norm=float("inf"), eps=eps, x_L=x_l, x_U=x_u)
    tensor = al.BoundedTensor(x, ptb)
    with torch.enable_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # 0.3 steps its scheduler first
        lower, _ = bounded.compute_bounds(
            x=(tensor,), C=C, method="CROWN-Optimized", bound_upper=False
        )
    return lower.detach()


@pytest.mark.parametrize("activation", [nn.Sigmoid, nn.Tanh])
def test_alpha_crown_on_s_shaped_activations_before_a_convolution(
    auto_lirpa: types.ModuleType, activation: type[nn.Module]
) -> None:
    """In patches mode each neuron of a convolution keeps its own tangent points in a
    sigmoid or tanh before it: the bound is that of matrix mode (where 0.3 sizes them
    itself), no looser than CROWN on any margin, tighter on some, and sound."""
    model = _s_shaped_cnn(activation)
    x, eps = torch.rand(2, 2, 6, 6), 0.05
    labels = model(x).argmax(1)
    C = margin_matrix(labels, 3)
    crown = _bounds(model, x, "CROWN", eps=eps, C=C)[0]
    got = _raw_alpha_crown(model, x, "patches", C, eps)
    _assert_close((got,), (_raw_alpha_crown(model, x, "matrix", C, eps),))
    assert (got >= crown - 1e-5).all()
    assert (got > crown + 1e-4).any(), "the optimization moved no tangent point"
    _assert_margins_sound(model, x, labels, got, eps)


# --- the gradient of the sign-split product ----------------------------------------------


def _sign_split_reference(
    a: torch.Tensor, d_pos, d_neg, b_pos, b_neg, patches_mode: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``A+ * d_pos + A- * d_neg`` and its offset, written out for autograd."""
    positive, negative = a.clamp(min=0), a.clamp(max=0)
    product = d_pos * positive + d_neg * negative
    summed = (-3, -2, -1) if patches_mode else tuple(range(2, a.ndim))
    offset = torch.zeros(a.shape[: a.ndim - len(summed)], dtype=a.dtype)
    if b_pos is not None:
        offset = offset + (positive * b_pos).sum(summed)
    if b_neg is not None:
        offset = offset + (negative * b_neg).sum(summed)
    return product, offset


@pytest.mark.parametrize("patches_mode", [False, True])
@pytest.mark.parametrize("offsets", ["both", "negative only", "none"])
@pytest.mark.parametrize("a_needs_grad", [True, False])
def test_sign_split_product_gradients_match_autograd(
    auto_lirpa: types.ModuleType, patches_mode: bool, offsets: str, a_needs_grad: bool
) -> None:
    """The backward of auto_LiRPA's product (patched where it computes every gradient
    whatever autograd asks for) gives autograd's gradients of the written-out formula,
    for every input that needs one; the slopes may be broadcast over the margins."""
    product_class = importlib.import_module("auto_LiRPA.operators.clampmult")
    generator = torch.Generator().manual_seed(0)
    shape = (3, 2, 4, 5, 5) if patches_mode else (3, 2, 7)

    def leaf(*size: int) -> torch.Tensor:
        t = torch.randn(*size, generator=generator, dtype=torch.float64)
        return t.requires_grad_()

    a = leaf(*shape).detach().requires_grad_(a_needs_grad)
    d_pos, d_neg = leaf(1, *shape[1:]), leaf(*shape)
    b_pos = leaf(*shape) if offsets == "both" else None
    b_neg = leaf(*shape) if offsets != "none" else None
    inputs = [t for t in (a, d_pos, d_neg, b_pos, b_neg) if t is not None and t.requires_grad]
    weights = torch.randn(shape, generator=generator, dtype=torch.float64)

    def gradients(product: torch.Tensor, offset: torch.Tensor) -> tuple[torch.Tensor, ...]:
        loss = (product * weights).sum() + (
            offset * torch.arange(offset.numel()).view_as(offset)
        ).sum()
        return torch.autograd.grad(loss, inputs)

    got = gradients(
        *product_class.ClampedMultiplication.apply(a, d_pos, d_neg, b_pos, b_neg, patches_mode)
    )
    expected = gradients(*_sign_split_reference(a, d_pos, d_neg, b_pos, b_neg, patches_mode))
    for g, e in zip(got, expected, strict=True):
        assert g.shape == e.shape
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)
