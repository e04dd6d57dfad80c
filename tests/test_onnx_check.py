"""Checking ONNX conversions against onnxruntime (:mod:`model_zoo.onnx.check`).

Small models are exported here with torch's legacy exporter; the references are
onnxruntime sessions that the tests open themselves on the exported files, fed in the
layout each file declares. Conversions are altered on purpose by patching the converter
step of :func:`~model_zoo.onnx.loading.load_onnx`, and the public models of
``../shared/models`` must all pass.
"""

from __future__ import annotations

import hashlib
import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from torch import nn

import model_zoo.onnx.loading as onnx_loading
from certify.core.datasets import Dataset
from certify.core.errors import ModelError, UsageError
from model_zoo import LoadedModel, load_model
from model_zoo.onnx.check import RELATIVE_TOLERANCE, check_conversion, probe_images
from model_zoo.onnx.loading import load_onnx

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)


def _cnn(channels: int = 1, size: int = 28) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(channels, 4, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * (size - 2) ** 2, 10),
    )


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))


class _ChannelsLast(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = _cnn(3, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.permute(0, 3, 1, 2))


# name -> (model, the data set's (C, H, W), the example the model is exported with,
# mean/std given to load_onnx)
MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, int, int], tuple[int, ...], bool]] = {
    "cnn": (_cnn, (1, 28, 28), (1, 1, 28, 28), False),
    "mlp": (_mlp, (1, 28, 28), (1, 784), False),  # takes flattened images
    "nhwc": (_ChannelsLast, (3, 8, 8), (1, 8, 8, 3), True),
    "batch2": (_cnn, (1, 28, 28), (2, 1, 28, 28), False),
}


def _export(model: nn.Module, example: tuple[int, ...], path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.rand(example),), str(path), dynamo=False)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    folder = tmp_path_factory.mktemp("onnx_check")
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            torch.manual_seed(sum(map(ord, name)))
            build, _, example, _ = MODELS[name]
            cache[name] = _export(build(), example, folder / f"{name}.onnx")
        return cache[name]

    return get


def _onnxruntime_logits(path: Path, images: torch.Tensor, name: str) -> np.ndarray:
    """The file's logits for pixel images, fed as it declares, one batch at a time."""
    x = images
    if MODELS[name][3]:
        x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    if name == "nhwc":
        x = x.permute(0, 2, 3, 1)
    x = x.reshape(len(x), *MODELS[name][2][1:]).numpy()
    options = onnxruntime.SessionOptions()
    # As the check does: the same arithmetic, so that the differences are the same too.
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = onnxruntime.InferenceSession(
        str(path), sess_options=options, providers=["CPUExecutionProvider"]
    )
    batch = MODELS[name][2][0]
    feed = session.get_inputs()[0].name
    return np.concatenate(
        [session.run(None, {feed: x[i : i + batch]})[0] for i in range(0, len(x), batch)]
    )


def _largest_difference(module: nn.Module, path: Path, images: torch.Tensor, name: str) -> float:
    with torch.no_grad():
        got = module(images).numpy().astype(np.float64)
    return float(np.abs(got - _onnxruntime_logits(path, images, name)).max())


def _load(path: Path, name: str):
    normalized = MODELS[name][3]
    return load_onnx(
        path,
        mean=MEAN if normalized else None,
        std=STD if normalized else None,
        input_shape=MODELS[name][1],
    )


# ---------------------------------------------------------------------------------
# Faithful conversions pass, with the difference onnxruntime gives


@pytest.mark.parametrize("name", list(MODELS))
def test_recorded_difference_is_what_onnxruntime_gives(
    exported: Callable[[str], Path], name: str
) -> None:
    path = exported(name)
    loaded = _load(path, name)
    probes, labels = probe_images(loaded.input_shape)
    assert len(probes) == len(labels) >= 8
    assert {0.0, 1.0} == set(probes[2].unique().tolist())  # a corner of the pixel box
    mine = _largest_difference(loaded.model, path, probes, name)
    with torch.no_grad():
        scale = 1.0 + loaded.model(probes).abs().max().item()
    assert loaded.conversion_difference < 1e-5 * scale
    assert loaded.conversion_difference == pytest.approx(mine, rel=1e-6, abs=1e-12)


def test_load_model_records_the_difference(exported: Callable[[str], Path]) -> None:
    path = exported("cnn")
    loaded = load_model(path, dataset=Dataset.MNIST)
    direct = load_onnx(path, input_shape=(1, 28, 28))
    assert loaded.conversion_difference == direct.conversion_difference
    assert LoadedModel.__dataclass_fields__["conversion_difference"].default is None


def test_a_fixed_batch_of_two_is_fed_in_pairs(exported: Callable[[str], Path]) -> None:
    # 8 probes and 3 given images: the last pair is filled with a copy.
    path = exported("batch2")
    loaded = _load(path, "batch2")
    extra = torch.rand(3, 1, 28, 28)
    difference = check_conversion(loaded.model, path, (1, 28, 28), images=extra)
    probes, _ = probe_images((1, 28, 28), extra)
    padded = torch.cat([probes, probes[-1:]])
    assert difference == pytest.approx(
        _largest_difference(loaded.model, path, padded, "batch2"), rel=1e-6, abs=1e-12
    )


# ---------------------------------------------------------------------------------
# Altered conversions are refused


def _first(module: nn.Module, kind: type[nn.Module]) -> tuple[str, nn.Module]:
    return next((n, m) for n, m in module.named_modules() if isinstance(m, kind))


def _change_a_weight(module: nn.Module) -> None:
    with torch.no_grad():
        _first(module, nn.Conv2d)[1].weight[0, 0, 1, 1] += 0.5


def _drop_the_relu(module: nn.Module) -> None:
    name, _ = _first(module, nn.ReLU)
    module._modules[name] = nn.Identity()


def _patch_converter(monkeypatch: pytest.MonkeyPatch, alter: Callable[[nn.Module], None]) -> list:
    """Make load_onnx's converter step alter what onnx2torch gives; the modules it made."""
    made: list[nn.Module] = []
    convert = onnx_loading.convert

    def altered(proto, onnx2torch):
        module = convert(proto, onnx2torch)
        alter(module)
        made.append(module)
        return module

    monkeypatch.setattr(onnx_loading, "convert", altered)
    return made


@pytest.mark.parametrize("alter", [_change_a_weight, _drop_the_relu])
def test_an_altered_conversion_is_refused(
    exported: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
    alter: Callable[[nn.Module], None],
) -> None:
    path = exported("cnn")
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    made = _patch_converter(monkeypatch, alter)
    with pytest.raises(ModelError) as info:
        load_onnx(path, input_shape=(1, 28, 28))
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path))
    found = re.search(r"differs from onnxruntime by (\S+) \(logit \d of (.+?)\)", message)
    assert found, message
    # The number is the largest difference onnxruntime shows on the same probes.
    probes, labels = probe_images((1, 28, 28))
    altered = onnx_loading.OnnxImageModel(made[0], (1, 28, 28), (1, 28, 28)).eval()
    mine = _largest_difference(altered, path, probes, "cnn")
    assert found.group(1) == f"{mine:.1e}" and mine > 1e-2
    assert found.group(2) in labels
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def _template_model(template: torch.Tensor) -> nn.Module:
    """Unit 0 of the hidden layer fires (0.5) only on images close to ``template``."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 8), nn.ReLU(), nn.Linear(8, 10))
    with torch.no_grad():
        model[1].weight[0] = 2 * template.flatten() - 1
        model[1].bias[0] = -(template.sum() - 0.5)
        model[3].weight[:, 0] = 1.0
    return model


def test_given_images_catch_a_difference_the_fixed_probes_miss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    template = (torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(7)) < 0.5).float()
    path = _export(_template_model(template), (1, 1, 28, 28), tmp_path / "template.onnx")

    def lower_the_threshold(module: nn.Module) -> None:
        with torch.no_grad():
            _first(module, nn.Linear)[1].bias[0] -= 0.25  # fires 0.25 on the template

    _patch_converter(monkeypatch, lower_the_threshold)
    loaded = load_onnx(path, input_shape=(1, 28, 28))
    assert loaded.conversion_difference < 1e-5  # box corners and random images: unit 0 is off
    others = torch.rand(2, 1, 28, 28)
    assert check_conversion(loaded.model, path, (1, 28, 28), images=others) < 1e-5
    with pytest.raises(ModelError, match=r"by 2\.5e-01 \(logit \d of given image 2\)"):
        check_conversion(loaded.model, path, (1, 28, 28), images=torch.cat([others, template]))


# ---------------------------------------------------------------------------------
# Errors


def test_missing_onnxruntime_is_one_clear_line(
    exported: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = exported("cnn")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` fails
    with pytest.raises(ModelError) as info:
        load_onnx(path, input_shape=(1, 28, 28))
    assert str(info.value) == "onnxruntime is not installed; run ./install.sh"


def test_given_images_of_another_shape(exported: Callable[[str], Path]) -> None:
    path = exported("cnn")
    loaded = load_onnx(path, input_shape=(1, 28, 28))
    with pytest.raises(UsageError, match="N x 1 x 28 x 28"):
        check_conversion(loaded.model, path, (1, 28, 28), images=torch.rand(2, 3, 28, 28))


# ---------------------------------------------------------------------------------
# The public models


CIFAR_NORMALIZATION = {
    "cifar10_resnet_4b": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    "oval21_cifar_wide_kw": ((0.485, 0.456, 0.406), (0.225, 0.225, 0.225)),
    "oval21_cifar_deep_kw": ((0.485, 0.456, 0.406), (0.225, 0.225, 0.225)),
}
PUBLIC = ["mnistfc_256x4", "mnistfc_256x6", "verivital_convnet_avgpool", *CIFAR_NORMALIZATION]


@pytest.mark.parametrize("name", PUBLIC)
def test_public_models_pass_the_check(shared_models: Path, name: str) -> None:
    mean, std = CIFAR_NORMALIZATION.get(name, (None, None))
    dataset = Dataset.CIFAR if mean else Dataset.MNIST
    loaded = load_model(shared_models / f"{name}.onnx", dataset=dataset, mean=mean, std=std)
    probes, _ = probe_images(loaded.input_shape)
    with torch.no_grad():
        scale = 1.0 + loaded.model(probes).abs().max().item()
    assert loaded.conversion_difference is not None
    assert loaded.conversion_difference < 1e-5 * scale < RELATIVE_TOLERANCE * scale
