"""Loading ONNX classifiers: both torch exporters, batching, layouts and every error.

Small models are built here, exported by torch's legacy (TorchScript) and dynamo
exporters into a temporary folder shared by the module, loaded with
:func:`model_zoo.onnx.loading.load_onnx` and compared with the torch model itself.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from certify.core.errors import CheckpointError, ModelError, UsageError
from model_zoo.normalization import NormalizedModel
from model_zoo.onnx.loading import LoadedOnnx, load_onnx
from model_zoo.onnx.onnx2torch_import import is_placeholder

REPO_ROOT = Path(__file__).resolve().parents[1]
BATCH = 8


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 8, 3, stride=2), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 13 * 13, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(x, 1))


class ResidualCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv1, self.bn1 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.pool = nn.AvgPool2d(4)
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn0(self.stem(x)))
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        x = self.pool(torch.relu(x + y))
        # view(x.size(0), -1): exported with a fixed batch, a Reshape to [1, -1].
        return self.fc(x.view(x.size(0), -1))


class MLP(nn.Module):
    """Takes flattened MNIST images, N x 784."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TwinBiasCNN(nn.Module):
    """Equal (zero) biases, which the legacy exporter shares through Identity nodes."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(c, 4, 3, padding=1) for c in (1, 4, 4))
        for conv in self.convs:
            nn.init.zeros_(conv.bias)
        self.fc = nn.Linear(4 * 28 * 28, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = torch.relu(conv(x))
        return self.fc(x.flatten(1))


class ChannelsLastCNN(nn.Module):
    """Takes N x H x W x C images, as models from TensorFlow do."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x.permute(0, 3, 1, 2)))
        return self.fc(x.flatten(1))


# name -> (class, the data set's (C, H, W), the example input the model is exported with)
MODELS: dict[str, tuple[type[nn.Module], tuple[int, int, int], tuple[int, ...]]] = {
    "cnn": (SmallCNN, (1, 28, 28), (1, 1, 28, 28)),
    "residual": (ResidualCNN, (3, 32, 32), (1, 3, 32, 32)),
    "mlp": (MLP, (1, 28, 28), (1, 784)),
    "twin": (TwinBiasCNN, (1, 28, 28), (1, 1, 28, 28)),
    "nhwc": (ChannelsLastCNN, (3, 8, 8), (1, 8, 8, 3)),
}
EXPORTERS = ["legacy", "dynamo"]


def _build(name: str) -> nn.Module:
    torch.manual_seed(sum(map(ord, name)))
    model = MODELS[name][0]()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            # Non-trivial statistics, so that folding BN into the convolutions matters.
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.5, 0.5)
    return model.eval()


def _export(model: nn.Module, example: torch.Tensor, path: Path, exporter: str, **kw) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            if importlib.util.find_spec("onnxscript") is None:
                pytest.skip("the dynamo exporter needs onnxscript (./install.sh --test)")
            torch.onnx.export(model, (example,), str(path), dynamo=True, verbose=False, **kw)
        else:
            torch.onnx.export(model, (example,), str(path), dynamo=False, **kw)


def _export_options(exporter: str, variant: str) -> tuple[int, dict]:
    """The example's batch size and the exporter's options for each variant."""
    if variant == "fixed":  # the exporters' defaults: batch fixed at the example's 1
        return 1, {}
    if variant == "unfolded":
        return 1, {"do_constant_folding": False}
    if variant == "opset22":
        return 1, {"opset_version": 22}
    if variant == "dynamic" and exporter == "dynamo":
        return 2, {"dynamic_shapes": ({0: torch.export.Dim("batch")},)}
    if variant == "dynamic":
        options = {"input_names": ["x"], "dynamic_axes": {"x": {0: "batch"}}}
        return 2, {"do_constant_folding": False, **options}
    raise ValueError(variant)


Exported = Callable[..., tuple[nn.Module, Path]]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """Export each (model, exporter, variant) once per module: the dynamo exporter is slow."""
    folder = tmp_path_factory.mktemp("onnx")
    cache: dict[tuple[str, str, str], tuple[nn.Module, Path]] = {}

    def get(name: str, exporter: str, variant: str = "fixed") -> tuple[nn.Module, Path]:
        key = (name, exporter, variant)
        if key not in cache:
            model = _build(name)
            batch, options = _export_options(exporter, variant)
            example = torch.rand(batch, *MODELS[name][2][1:])
            path = folder / f"{name}_{exporter}_{variant}.onnx"
            _export(model, example, path, exporter, **options)
            cache[key] = (model, path)
        return cache[key]

    return get


def _images(shape: tuple[int, int, int], n: int = BATCH) -> torch.Tensor:
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(1))


def _assert_matches(loaded: LoadedOnnx, reference: nn.Module, name: str) -> None:
    images = _images(loaded.input_shape)
    with torch.no_grad():
        if name == "mlp":
            expected = reference(images.reshape(BATCH, -1))
        elif name == "nhwc":
            expected = reference(images.permute(0, 2, 3, 1))
        else:
            expected = reference(images)
        got = loaded.model(images)
    assert got.shape == (BATCH, 10)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------
# Converted models compute what the torch models compute, in batches


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", ["cnn", "residual", "mlp"])
def test_batch_one_export_matches_torch_on_a_batch(
    exported: Exported, name: str, exporter: str
) -> None:
    reference, path = exported(name, exporter)
    loaded = load_onnx(path, input_shape=MODELS[name][1])
    assert loaded.onnx_input_shape[0] == 1  # fixed batch in the file, evaluated with 8
    assert loaded.input_shape == MODELS[name][1]
    assert loaded.num_classes == 10
    _assert_matches(loaded, reference, name)


def test_flattened_input_model_takes_images(exported: Exported) -> None:
    reference, path = exported("mlp", "legacy")
    loaded = load_onnx(path, input_shape=(1, 28, 28))
    assert loaded.onnx_input_shape == (1, 784)
    assert not loaded.channels_last
    # onnx2torch was imported without leaving a torchvision placeholder behind.
    stray = sys.modules.get("torchvision")
    assert stray is None or not is_placeholder(stray)
    _assert_matches(loaded, reference, "mlp")


def test_channels_last_model_gets_permuted_images(exported: Exported) -> None:
    reference, path = exported("nhwc", "legacy")
    loaded = load_onnx(path, input_shape=(3, 8, 8))
    assert loaded.onnx_input_shape == (1, 8, 8, 3)
    assert loaded.channels_last
    _assert_matches(loaded, reference, "nhwc")


def test_legacy_shared_initializers_through_identity(exported: Exported) -> None:
    reference, path = exported("twin", "legacy")
    assert "Identity" in {n.op_type for n in onnx.load(str(path)).graph.node}
    loaded = load_onnx(path, input_shape=(1, 28, 28))
    assert any("Identity" in line for line in loaded.rewrites)
    _assert_matches(loaded, reference, "twin")


def test_dynamo_export_is_lowered_to_an_opset_onnx2torch_knows(exported: Exported) -> None:
    # Opset 22 brings Conv-22 besides AveragePool-19 and Reshape-19 (with allowzero=1).
    reference, path = exported("residual", "dynamo", "opset22")
    loaded = load_onnx(path, input_shape=(3, 32, 32))
    assert loaded.opset == 22
    assert loaded.converted_opset < 19
    assert any("allowzero" in line for line in loaded.rewrites)
    _assert_matches(loaded, reference, "residual")


def test_legacy_export_with_dynamic_batch_and_no_constant_folding(exported: Exported) -> None:
    # Unfolded BatchNormalization and a Shape/Gather/Concat subgraph for view(N, -1).
    reference, path = exported("residual", "legacy", "dynamic")
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"BatchNormalization", "Shape", "Concat"} <= ops
    loaded = load_onnx(path, input_shape=(3, 32, 32))
    assert loaded.onnx_input_shape[0] == "batch"
    # The shape subgraph gave way to a constant target, which auto_LiRPA traces safely.
    assert any("removed 4 nodes" in line for line in loaded.rewrites)
    _assert_matches(loaded, reference, "residual")


def test_legacy_export_with_fixed_batch_and_no_constant_folding(exported: Exported) -> None:
    # view(1, -1)'s target is computed by Constant/Unsqueeze/Concat nodes: folded into
    # a constant, then freed from the batch of 1.
    reference, path = exported("residual", "legacy", "unfolded")
    loaded = load_onnx(path, input_shape=(3, 32, 32))
    assert any(line.startswith("folded") for line in loaded.rewrites)
    assert any("rewrote 1 Reshape" in line for line in loaded.rewrites)
    _assert_matches(loaded, reference, "residual")


def test_operators_on_constants_only_are_folded_away(tmp_path: Path) -> None:
    # onnx2torch has no Hardmax, but here it only computes a constant weight.
    weight = np.random.default_rng(0).normal(size=(784, 10)).astype(np.float32)
    nodes = [
        helper.make_node("Hardmax", ["w"], ["hw"], axis=1),
        helper.make_node("MatMul", ["x", "hw"], ["y"]),
    ]
    model = _tiny_model(nodes, [numpy_helper.from_array(weight, "w")], out_shape=[1, 10])
    path = tmp_path / "folded.onnx"
    onnx.save_model(model, str(path))
    loaded = load_onnx(path, input_shape=(1, 28, 28))
    images = _images((1, 28, 28))
    hardmax = torch.nn.functional.one_hot(torch.from_numpy(weight).argmax(1), 10).float()
    with torch.no_grad():
        expected = images.reshape(BATCH, -1) @ hardmax
        torch.testing.assert_close(loaded.model(images), expected, atol=1e-5, rtol=1e-5)


def test_dynamo_export_with_dynamic_batch(exported: Exported) -> None:
    reference, path = exported("cnn", "dynamo", "dynamic")
    loaded = load_onnx(path, input_shape=(1, 28, 28))
    assert isinstance(loaded.onnx_input_shape[0], str)
    _assert_matches(loaded, reference, "cnn")


def test_mean_and_std_wrap_the_model(exported: Exported) -> None:
    reference, path = exported("residual", "legacy")
    mean, std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    loaded = load_onnx(path, mean=mean, std=std, input_shape=(3, 32, 32))
    assert isinstance(loaded.model, NormalizedModel)
    images = _images((3, 32, 32))
    normalized = (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.model(images), reference(normalized), atol=1e-5, rtol=1e-5
        )


def test_image_shape_is_taken_from_a_4d_graph_input(exported: Exported) -> None:
    _, path = exported("cnn", "legacy")
    assert load_onnx(path).input_shape == (1, 28, 28)


def test_external_data_beside_the_model_loads(exported: Exported, tmp_path: Path) -> None:
    reference, path = exported("cnn", "legacy")
    target = tmp_path / "model.onnx"
    onnx.save_model(
        onnx.load(str(path)),
        str(target),
        save_as_external_data=True,
        location="weights.bin",
        size_threshold=0,
    )
    assert (tmp_path / "weights.bin").stat().st_size > target.stat().st_size
    _assert_matches(load_onnx(target, input_shape=(1, 28, 28)), reference, "cnn")


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize(
    ("name", "exporter", "variant"),
    [
        ("cnn", "dynamo", "fixed"),
        ("residual", "legacy", "fixed"),
        ("residual", "dynamo", "fixed"),
        ("residual", "legacy", "dynamic"),
        ("mlp", "legacy", "fixed"),
        ("nhwc", "legacy", "fixed"),
    ],
)
def test_auto_lirpa_bounds_a_batch_of_a_loaded_model(
    exported: Exported, name: str, exporter: str, variant: str
) -> None:
    # auto_LiRPA traces with one image; batch-dependent shapes would stay at 1.
    lirpa = pytest.importorskip("certify.bounds.lirpa_compat").load_auto_lirpa()
    _, path = exported(name, exporter, variant)
    loaded = load_onnx(path, mean=(0.5,), std=(0.25,), input_shape=MODELS[name][1])
    bounded = lirpa.BoundedModule(loaded.model, torch.zeros(1, *loaded.input_shape), device="cpu")
    images = _images(loaded.input_shape, n=4)
    ptb = lirpa.PerturbationLpNorm(norm=float("inf"), eps=0.01)
    with torch.no_grad():
        outputs = loaded.model(images)
        lower, upper = bounded.compute_bounds(x=(lirpa.BoundedTensor(images, ptb),), method="IBP")
    assert lower.shape == outputs.shape == (4, 10)
    assert bool((lower <= outputs + 1e-5).all() and (outputs <= upper + 1e-5).all())


# ---------------------------------------------------------------------------------
# Errors


def _tiny_model(nodes: list, initializers: list | None = None, **kw) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 784])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, kw.pop("out_shape", [1, 784]))],
        initializer=initializers or [],
    )
    opsets = [helper.make_opsetid("", kw.pop("opset", 17)), *kw.pop("extra_opsets", [])]
    return helper.make_model(graph, opset_imports=opsets, ir_version=8)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_onnx(tmp_path / "nope.onnx", input_shape=(1, 28, 28))


@pytest.mark.parametrize("content", [b"\x00\xffgarbage\x13\x37" * 64, b"hello world\n"])
def test_garbage_bytes(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "garbage.onnx"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not .*ONNX model"):
        load_onnx(path, input_shape=(1, 28, 28))


def test_model_failing_the_checker(tmp_path: Path) -> None:
    path = tmp_path / "bad.onnx"
    onnx.save_model(_tiny_model([helper.make_node("Relu", ["undefined"], ["y"])]), str(path))
    with pytest.raises(ModelError, match="ONNX checker"):
        load_onnx(path, input_shape=(1, 28, 28))


def test_every_unconvertible_operator_is_named_at_once(tmp_path: Path) -> None:
    # At opset 20, Identity-19 alone would only need the opset lowered: not named.
    nodes = [
        helper.make_node("Identity", ["x"], ["i"]),
        helper.make_node("Hardmax", ["i"], ["h"]),
        helper.make_node("Shrink", ["h"], ["s"]),
        helper.make_node("Relu", ["s"], ["r"]),
        helper.make_node("Mystery", ["r"], ["y"], domain="com.example"),
    ]
    extra = [helper.make_opsetid("com.example", 1)]
    model = _tiny_model(nodes, opset=20, extra_opsets=extra)
    path = tmp_path / "ops.onnx"
    onnx.save_model(model, str(path))
    with pytest.raises(ModelError) as info:
        load_onnx(path, input_shape=(1, 28, 28))
    message = str(info.value)
    assert "Hardmax" in message and "Shrink" in message and "com.example.Mystery" in message
    assert "Relu" not in message and "Identity" not in message and "\n" not in message


def test_external_data_outside_the_model_folder_is_refused(tmp_path: Path) -> None:
    weight = numpy_helper.from_array(np.ones((784, 784), np.float32), "w")
    model = _tiny_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [weight])
    (tmp_path / "secret.bin").write_bytes(weight.raw_data)
    tensor = model.graph.initializer[0]
    onnx.external_data_helper.set_external_data(tensor, location="../secret.bin")
    tensor.data_location = TensorProto.EXTERNAL
    tensor.ClearField("raw_data")
    (tmp_path / "model").mkdir()
    path = tmp_path / "model" / "model.onnx"
    onnx.save_model(model, str(path))
    with pytest.raises(CheckpointError, match="outside the model's folder"):
        load_onnx(path, input_shape=(1, 28, 28))


def test_batch_fixed_in_a_way_that_cannot_be_freed(tmp_path: Path) -> None:
    # Concatenating a [1, 4] constant only works for a batch of 1.
    extra = numpy_helper.from_array(np.zeros((1, 4), np.float32), "extra")
    node = helper.make_node("Concat", ["x", "extra"], ["y"], axis=1)
    path = tmp_path / "fixed.onnx"
    onnx.save_model(_tiny_model([node], [extra], out_shape=[1, 788]), str(path))
    with pytest.raises(ModelError, match="batch"):
        load_onnx(path, input_shape=(1, 28, 28))


def test_arguments_that_do_not_fit(exported: Exported) -> None:
    _, cnn = exported("cnn", "legacy")
    _, mlp = exported("mlp", "legacy")
    with pytest.raises(UsageError, match="both mean and std"):
        load_onnx(cnn, mean=(0.5,))
    with pytest.raises(UsageError, match="1 or 1 values"):
        load_onnx(cnn, mean=(0.5, 0.5, 0.5), std=(1.0, 1.0, 1.0))
    with pytest.raises(ModelError, match="give the data set's input shape"):
        load_onnx(mlp)
    with pytest.raises(ModelError, match="do not hold one 3x32x32 image"):
        load_onnx(mlp, input_shape=(3, 32, 32))


# ---------------------------------------------------------------------------------
# Importing onnx2torch with and without torchvision (fresh interpreters)


def _run_python(code: str, extra_path: Path | None = None) -> str:
    paths = [str(REPO_ROOT)] + ([str(extra_path)] if extra_path else [])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths))
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_onnx2torch_imports_with_a_placeholder_when_torchvision_is_missing() -> None:
    out = _run_python(
        """
        import sys
        import model_zoo.onnx.onnx2torch_import as compat
        # Importing the compat module patches nothing.
        assert "onnx2torch" not in sys.modules and "torchvision" not in sys.modules
        sys.modules["torchvision"] = None  # makes `import torchvision` fail
        onnx2torch = compat.load_onnx2torch()
        from onnx2torch.node_converters import nms, roialign
        from certify.core.errors import ModelError
        # The placeholder was only there while onnx2torch imported.
        assert sys.modules["torchvision"] is None and "torchvision.ops" not in sys.modules
        assert compat.is_placeholder(nms.torchvision)
        calls = (lambda: nms.torchvision.ops.nms(None, None, 0.5), lambda: roialign.roi_align(0))
        for call in calls:
            try:
                call()
            except ModelError as exc:
                assert "needs torchvision" in str(exc)
            else:
                raise AssertionError("the placeholder did not raise")
        assert compat.load_onnx2torch() is onnx2torch and callable(onnx2torch.convert)
        print("placeholder ok")
        """
    )
    assert "placeholder ok" in out


@pytest.mark.slow
def test_onnx2torch_uses_a_real_torchvision_when_there_is_one(tmp_path: Path) -> None:
    package = tmp_path / "torchvision"
    package.mkdir()
    (package / "__init__.py").write_text("from . import ops\n")
    (package / "ops.py").write_text(
        "def nms(*a):\n    return 'real nms'\n\n"
        "def box_convert(*a):\n    return 'real'\n\n"
        "def roi_align(*a):\n    return 'real'\n"
    )
    out = _run_python(
        f"""
        import model_zoo.onnx.onnx2torch_import as compat
        compat.load_onnx2torch()
        import torchvision
        from onnx2torch.node_converters import nms
        assert not compat.is_placeholder(torchvision)
        assert torchvision.__file__.startswith({str(package)!r})
        assert nms.torchvision is torchvision and torchvision.ops.nms() == "real nms"
        print("real ok")
        """,
        extra_path=tmp_path,
    )
    assert "real ok" in out


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize(
    ("name", "exporter"),
    [
        ("cnn", "legacy"),
        ("cnn", "dynamo"),
        ("residual", "legacy"),
        ("residual", "dynamo"),
        ("mlp", "legacy"),
        ("nhwc", "legacy"),
    ],
)
def test_hand_ibp_covers_converted_models(exported: Exported, name: str, exporter: str) -> None:
    """onnx2torch's arithmetic and reshape modules are understood by the hand-written
    interval pass, which then gives auto_LiRPA's IBP bounds on converted graphs too."""
    from certify.bounds.margins import BoundMethod, MarginBounder

    _, path = exported(name, exporter)
    loaded = load_onnx(path, mean=(0.5,), std=(0.25,), input_shape=MODELS[name][1])
    hand = MarginBounder(loaded.model, loaded.input_shape, torch.device("cpu"))
    lirpa = MarginBounder(loaded.model, loaded.input_shape, torch.device("cpu"), hand_ibp=False)
    assert hand.hand_ibp
    images, labels = _images(loaded.input_shape, n=6), torch.arange(6)
    for eps in (0.0, 0.02):
        ours = hand.lower_bounds(images, labels, eps, BoundMethod.IBP)
        theirs = lirpa.lower_bounds(images, labels, eps, BoundMethod.IBP)
        scale = 1.0 + theirs.abs().max().item()
        torch.testing.assert_close(ours, theirs, rtol=0.0, atol=2e-5 * scale)
