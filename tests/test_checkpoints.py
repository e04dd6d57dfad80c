"""Checkpoint reading and writing: every format, the inference of geometry, every error.

Foreign files are built here the way their tools write them: a real model's state dict
re-keyed as the seed, CTBench or CTRAIN would store it. Each load is checked against a
reference forward pass, so a silently wrong normalization or key mapping fails too.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from certify.core.datasets import get_spec
from certify.core.errors import CheckpointError, ModelError
from model_zoo import create_model, list_models
from model_zoo.checkpoint import (
    CTRAIN_NORMALIZATION,
    FORMAT_VERSION,
    LoadedModel,
    clean_state_dict,
    detect_format,
    load_checkpoint,
    save_checkpoint,
)
from model_zoo.normalization import NormalizedModel
from tests.networks import SMALL_OPTIONS

SIZES = {"mnist": (1, 28, 10), "cifar": (3, 32, 10), "tinyimagenet": (3, 64, 200)}


def trained(name: str, size: str, **options) -> nn.Module:
    """A model with non-default BatchNorm statistics, so a lost buffer shows in outputs."""
    model = create_model(name, *SIZES[size], **options)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.num_batches_tracked.fill_(7)
    return model.eval()


def same_outputs(loaded: nn.Module, reference: nn.Module, size: str) -> bool:
    c, d, _ = SIZES[size]
    x = torch.rand(2, c, d, d)
    with torch.no_grad():
        return torch.allclose(loaded(x), reference.eval()(x), atol=1e-6)


def error_text(excinfo: pytest.ExceptionInfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text, "error messages are one line"
    return text


# --------------------------------------------------------------- certify's format


@pytest.mark.parametrize("name", list_models())
def test_own_format_round_trip(tmp_path, name):
    options = SMALL_OPTIONS.get(name, {})
    model = trained(name, "cifar", **options)
    meta = {"arch": name, "dataset": "cifar", "eps": 2 / 255, "arch_options": options}
    path = save_checkpoint(tmp_path / "model.pt", model, meta)
    loaded = load_checkpoint(path)
    spec = get_spec("cifar")
    assert (loaded.arch, loaded.dataset, loaded.num_classes) == (name, "cifar", 10)
    assert (loaded.input_shape, loaded.mean, loaded.std) == ((3, 32, 32), spec.mean, spec.std)
    assert (loaded.eps, loaded.source_format) == (2 / 255, "certify")
    assert not loaded.model.training
    assert same_outputs(loaded.model, NormalizedModel(model, spec.mean, spec.std), "cifar")


def test_own_format_stores_every_field_and_the_bare_state_dict(tmp_path):
    model = NormalizedModel(trained("cnn_4layer", "mnist"), (0.5,), (0.25,))
    meta = {
        "arch": "cnn_4layer",
        "dataset": "mnist",
        "eps": 0.3,
        "method": "ibp",
        "train_args": {"lr": 1e-3, "out": Path("/tmp/x"), "milestones": (10, 20)},
        "epoch": 12,
    }
    path = save_checkpoint(tmp_path / "sub" / "m.pt", model, meta)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["format"] == "certify" and raw["version"] == FORMAT_VERSION
    assert (raw["in_ch"], raw["in_dim"], raw["num_classes"]) == (1, 28, 10)
    assert (raw["mean"], raw["std"]) == ([0.5], [0.25])  # the model's own normalization
    assert raw["train_args"] == {"lr": 1e-3, "out": "/tmp/x", "milestones": [10, 20]}
    assert (raw["method"], raw["epoch"], raw["arch_options"]) == ("ibp", 12, {})
    assert set(raw["state_dict"]) == set(model.model.state_dict())
    loaded = load_checkpoint(path)
    assert loaded.mean == (0.5,) and same_outputs(loaded.model, model, "mnist")


def test_identity_normalization_gives_the_bare_network(tmp_path):
    model = trained("cnn_4layer", "mnist")
    path = save_checkpoint(tmp_path / "m.pt", model, {"arch": "cnn_4layer", "dataset": "mnist"})
    loaded = load_checkpoint(path)
    assert not isinstance(loaded.model, NormalizedModel)
    assert loaded.eps is None and same_outputs(loaded.model, model, "mnist")


def test_save_without_dataset_takes_explicit_geometry(tmp_path):
    model = trained("cnn_4layer", "cifar")
    meta = {"arch": "cnn_4layer", "in_ch": 3, "in_dim": 32, "num_classes": 10}
    loaded = load_checkpoint(save_checkpoint(tmp_path / "m.pt", model, meta))
    assert loaded.dataset is None and loaded.mean == (0.0, 0.0, 0.0)


def test_save_replaces_atomically_and_leaves_no_temporary_files(tmp_path, monkeypatch):
    path = tmp_path / "m.pt"
    meta = {"arch": "cnn_4layer", "dataset": "mnist"}
    save_checkpoint(path, trained("cnn_4layer", "mnist"), meta)
    before = path.read_bytes()

    def broken_save(obj, handle, *args, **kwargs):
        handle.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(CheckpointError, match="cannot write the checkpoint.*No space left"):
        save_checkpoint(path, trained("cnn_4layer", "mnist"), meta)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.pt"]


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"dataset": "mnist"}, "needs 'arch'"),
        ({"arch": "cnn_4layer"}, "needs 'dataset' or 'in_ch'"),
        ({"arch": "cnn_4layer", "dataset": "mnist", "lr": 1}, "unknown checkpoint fields lr"),
        ({"arch": "cnn_4layer", "dataset": "mnist", "train_args": {"f": object()}}, "object"),
        ({"arch": "cnn", "dataset": "mnist"}, "the model does not fit architecture 'cnn'"),
        ({"arch": "cnn_4layer", "dataset": "cifar"}, "'0.weight' has shape \\[16, 1, 4, 4\\]"),
    ],
)
def test_save_refuses_bad_metadata(tmp_path, meta, message):
    with pytest.raises(CheckpointError, match=message) as excinfo:
        save_checkpoint(tmp_path / "m.pt", trained("cnn_4layer", "mnist"), meta)
    error_text(excinfo)
    assert not (tmp_path / "m.pt").exists()


def test_save_to_an_unwritable_place_fails_clearly(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CheckpointError, match="cannot write the checkpoint"):
        save_checkpoint(blocker / "m.pt", trained("cnn_4layer", "mnist"), {
            "arch": "cnn_4layer", "dataset": "mnist"
        })  # fmt: skip


# ------------------------------------------------------------------ seed's format


def seed_file(path: Path, model: nn.Module) -> Path:
    """The seed's train.py layout: state dict, optimizer state, epoch and best errors."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    torch.save(
        {"state_dict": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 160,
         "best": (0.3, 0.65, 150)},
        path,
    )  # fmt: skip
    return path


def test_seed_cnn_for_cifar_loads_with_the_datasets_normalization(tmp_path):
    model = trained("cnn", "cifar")
    loaded = load_checkpoint(seed_file(tmp_path / "ckpt_best", model), arch="cnn")
    spec = get_spec("cifar")
    assert (loaded.dataset, loaded.num_classes, loaded.source_format) == ("cifar", 10, "seed")
    assert (loaded.mean, loaded.std) == (spec.mean, spec.std)
    assert same_outputs(loaded.model, NormalizedModel(model, spec.mean, spec.std), "cifar")


def test_seed_mnist_model_has_no_normalization(tmp_path):
    model = trained("wide_resnet_8", "mnist")
    loaded = load_checkpoint(seed_file(tmp_path / "ckpt", model), arch="wide_resnet_8")
    assert loaded.dataset == "mnist" and not isinstance(loaded.model, NormalizedModel)
    assert same_outputs(loaded.model, model, "mnist")


def test_seed_tinyimagenet_geometry_and_classes_are_inferred(tmp_path):
    model = trained("cnn_7layer_bn_imagenet", "tinyimagenet")
    loaded = load_checkpoint(seed_file(tmp_path / "ckpt", model), arch="cnn_7layer_bn_imagenet")
    assert (loaded.dataset, loaded.num_classes, loaded.input_shape) == (
        "tinyimagenet",
        200,
        (3, 64, 64),
    )


def test_seed_names_of_the_tinyimagenet_files_are_accepted(tmp_path):
    model = trained("ResNeXt_imagenet64", "cifar", **SMALL_OPTIONS["ResNeXt_imagenet64"])
    path = save_checkpoint(tmp_path / "m.pt", model, {
        "arch": "ResNeXt_bn_imagenet64", "dataset": "cifar",
        "arch_options": SMALL_OPTIONS["ResNeXt_imagenet64"],
    })  # fmt: skip
    assert load_checkpoint(path).arch == "ResNeXt_imagenet64"


# ------------------------------------------------------------ bare and wrapped dicts


def test_bare_state_dict_with_wrapper_prefixes_loads(tmp_path):
    model = trained("cnn_4layer", "cifar")
    state = {f"module._orig_mod.{k}": v for k, v in model.state_dict().items()}
    torch.save(state, tmp_path / "m.pth")
    loaded = load_checkpoint(tmp_path / "m.pth", arch="cnn_4layer", dataset="cifar10")
    assert loaded.source_format == "state_dict"
    spec = get_spec("cifar")
    assert same_outputs(loaded.model, NormalizedModel(model, spec.mean, spec.std), "cifar")


def test_state_dict_of_a_normalized_model_keeps_its_normalization(tmp_path):
    reference = NormalizedModel(trained("cnn_4layer", "cifar"), (0.1, 0.2, 0.3), (0.5, 0.5, 0.5))
    torch.save(reference.state_dict(), tmp_path / "m.pt")
    loaded = load_checkpoint(tmp_path / "m.pt", arch="cnn_4layer")
    assert loaded.source_format == "normalized_state_dict"
    assert loaded.mean == pytest.approx((0.1, 0.2, 0.3))
    assert same_outputs(loaded.model, reference, "cifar")


# ----------------------------------------------------------------------- CTBench


def ctbench_state(model: nn.Sequential, mean, std, abstract: bool) -> dict:
    """CTBench's layout: normalization at index 0, the network's layers one index later.

    The abstract network (what CTBench saves) prefixes ``layers.``, calls std ``sigma``
    and gives each ReLU a ``deepz_lambda`` parameter of the ReLU's input shape.
    """
    c = len(mean)
    state = {
        "0.mean": torch.tensor(mean).view(1, c, 1, 1),
        ("0.sigma" if abstract else "0.std"): torch.tensor(std).view(1, c, 1, 1),
    }
    for key, value in model.state_dict().items():
        index, rest = key.split(".", 1)
        state[f"{int(index) + 1}.{rest}"] = value
    if abstract:
        for index, layer in enumerate(model):
            if isinstance(layer, nn.ReLU):
                state[f"{index + 1}.deepz_lambda"] = -torch.ones(4, 7, 7)
        state = {f"layers.{k}": v for k, v in state.items()}
    return state


@pytest.mark.parametrize("abstract", [True, False])
def test_ctbench_checkpoint_loads_with_its_own_normalization(tmp_path, abstract):
    model = trained("cnn_4layer", "cifar")
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    torch.save(ctbench_state(model, mean, std, abstract), tmp_path / "model.ckpt")
    loaded = load_checkpoint(tmp_path / "model.ckpt", arch="cnn_4layer")
    assert (loaded.source_format, loaded.dataset) == ("ctbench", "cifar")
    assert loaded.std == pytest.approx(std)
    assert same_outputs(loaded.model, NormalizedModel(model, mean, std), "cifar")


def test_ctbench_seed_cnn_maps_onto_cnn(tmp_path):
    model = trained("cnn", "mnist")
    torch.save(ctbench_state(model, (0.1307,), (0.3081,), True), tmp_path / "model.ckpt")
    loaded = load_checkpoint(tmp_path / "model.ckpt", arch="cnn")
    assert same_outputs(loaded.model, NormalizedModel(model, (0.1307,), (0.3081,)), "mnist")


# ------------------------------------------------------------------------ CTRAIN


@pytest.mark.parametrize("wrapped", [True, False])
def test_ctrain_checkpoint_loads_with_ctrains_normalization(tmp_path, wrapped):
    model = trained("cnn_4layer", "mnist")
    # Exported through auto_LiRPA, the state dict lacks BatchNorm's batch counters.
    state = {
        f"layers.{k}": v
        for k, v in model.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    if wrapped:
        state = {"epoch": 70, "model_state_dict": state, "optimizer_state_dict": {}, "loss": 0.5}
    torch.save(state, tmp_path / "70_checkpoint.pt")
    loaded = load_checkpoint(tmp_path / "70_checkpoint.pt", arch="cnn_4layer")
    mean, std = CTRAIN_NORMALIZATION[get_spec("mnist").name]
    assert (loaded.source_format, loaded.mean, loaded.std) == ("ctrain", mean, std)
    assert same_outputs(loaded.model, NormalizedModel(model, mean, std), "mnist")


# ---------------------------------------------------------------- format detection


@pytest.mark.parametrize(
    ("raw", "fmt"),
    [
        ({"format": "certify"}, "certify"),
        ({"state_dict": {"0.weight": torch.ones(1)}, "epoch": 1}, "seed"),
        ({"model_state_dict": {"layers.0.weight": torch.ones(1)}}, "ctrain"),
        ({"layers.0.weight": torch.ones(1)}, "ctrain"),
        ({"layers.0.mean": torch.ones(1), "layers.0.sigma": torch.ones(1)}, "ctbench"),
        ({"0.mean": torch.ones(1), "0.std": torch.ones(1)}, "ctbench"),
        (
            {"normalize.mean": torch.ones(1), "normalize.std": torch.ones(1)},
            "normalized_state_dict",
        ),
        ({"module.0.weight": torch.ones(1)}, "state_dict"),
    ],
)
def test_detect_format(raw, fmt):
    assert detect_format(raw) == fmt


def test_clean_state_dict_strips_wrappers_and_rejects_collisions():
    t = torch.ones(1)
    assert list(clean_state_dict({"module.a.weight": t, "b._orig_mod.c": t})) == ["a.weight", "b.c"]
    with pytest.raises(CheckpointError, match="keys 'module.a' and 'a' both name 'a'"):
        clean_state_dict({"module.a": t, "a": t})
    with pytest.raises(CheckpointError, match="holds a int, not a tensor"):
        clean_state_dict({"a": 1})


# ------------------------------------------------------------------------ errors


@pytest.fixture
def seed_path(tmp_path) -> Path:
    return seed_file(tmp_path / "ckpt", trained("cnn_4layer", "cifar"))


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="nope.pt: no such file") as excinfo:
        load_checkpoint(tmp_path / "nope.pt", arch="cnn")
    error_text(excinfo)


def test_folder_instead_of_file(tmp_path):
    with pytest.raises(CheckpointError, match="is a folder"):
        load_checkpoint(tmp_path)


def test_empty_file(tmp_path):
    (tmp_path / "m.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty \\(0 bytes\\)"):
        load_checkpoint(tmp_path / "m.pt")


def test_truncated_file(tmp_path, seed_path):
    data = seed_path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.pt: the file is truncated") as excinfo:
        load_checkpoint(tmp_path / "cut.pt", arch="cnn_4layer")
    error_text(excinfo)


@pytest.mark.parametrize("content", [os.urandom(512), b"hello world\n" * 20])
def test_corrupt_file(tmp_path, content):
    (tmp_path / "junk.pt").write_bytes(content)
    with pytest.raises(CheckpointError, match="corrupt|truncated") as excinfo:
        load_checkpoint(tmp_path / "junk.pt")
    error_text(excinfo)


def test_file_needing_full_unpickling_is_refused_without_fallback(tmp_path, monkeypatch):
    torch.save(trained("cnn_4layer", "mnist"), tmp_path / "whole.pt")
    calls = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    with pytest.raises(CheckpointError, match="stores Python objects.*Sequential") as excinfo:
        load_checkpoint(tmp_path / "whole.pt", arch="cnn_4layer")
    assert calls == [True]
    assert "state_dict()" in error_text(excinfo)


@pytest.mark.parametrize(
    ("obj", "message"),
    [([1, 2, 3], "holds a list, not a checkpoint dict"), ({"acc": 0.9}, "not a checkpoint")],
)
def test_not_a_checkpoint_dict(tmp_path, obj, message):
    torch.save(obj, tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match=message) as excinfo:
        load_checkpoint(tmp_path / "m.pt", arch="cnn")
    error_text(excinfo)


def test_foreign_format_needs_the_architecture(seed_path):
    with pytest.raises(CheckpointError, match="pass `arch` NAME; known: cnn, ") as excinfo:
        load_checkpoint(seed_path)
    assert "wide_resnet_8" in error_text(excinfo)


def test_unknown_architecture_name(seed_path):
    with pytest.raises(ModelError, match="unknown architecture 'vgg16'"):
        load_checkpoint(seed_path, arch="vgg16")


def test_unknown_layout_names_missing_and_unexpected_keys(seed_path):
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint(seed_path, arch="wide_resnet_8")
    text = error_text(excinfo)
    assert "does not fit architecture 'wide_resnet_8'" in text
    assert "missing" in text and "conv1.weight" in text and "keys (" in text
    assert "23 keys (0.weight, 0.bias, 1.weight, 1.bias, ...) unexpected" in text


def test_another_class_count_names_the_key_and_both_shapes(seed_path):
    with pytest.raises(CheckpointError) as excinfo:
        load_checkpoint(seed_path, arch="cnn_4layer", num_classes=200)
    text = error_text(excinfo)
    assert "'10.weight' has shape [10, 100] in the file but [200, 100]" in text


def test_another_architecture_with_the_same_keys_names_the_shapes(tmp_path):
    path = seed_file(tmp_path / "ckpt", trained("cnn_4layer", "cifar", width=8))
    with pytest.raises(CheckpointError, match="'0.weight' has shape \\[8, 3, 4, 4\\] in the file"):
        load_checkpoint(path, arch="cnn_4layer", dataset="cifar")


def test_another_data_set_names_the_shapes(seed_path):
    with pytest.raises(CheckpointError, match="in 'cnn_4layer' for mnist input with 10 classes"):
        load_checkpoint(seed_path, arch="cnn_4layer", dataset="mnist")


def test_own_format_conflicts_and_newer_versions(tmp_path):
    meta = {"arch": "cnn_4layer", "dataset": "mnist"}
    path = save_checkpoint(tmp_path / "m.pt", trained("cnn_4layer", "mnist"), meta)
    with pytest.raises(CheckpointError, match="is for arch 'cnn_4layer', not 'cnn'"):
        load_checkpoint(path, arch="cnn")
    with pytest.raises(CheckpointError, match="is for dataset 'mnist', not 'cifar'"):
        load_checkpoint(path, dataset="cifar")
    assert isinstance(load_checkpoint(path, arch="cnn_4layer", dataset="mnist"), LoadedModel)
    raw = torch.load(path, weights_only=True)
    torch.save({**raw, "version": FORMAT_VERSION + 1}, path)
    with pytest.raises(CheckpointError, match="upgrade certify"):
        load_checkpoint(path)
    del raw["num_classes"]
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="lacks num_classes"):
        load_checkpoint(path)
