"""The registry and every architecture in it: names, layouts, forward shapes, boundability.

The expected layouts below were written by hand from the seed's model files
(shizhouxing/Fast-Certified-Robust-Training, models/*.py), so a drift in any key name or
shape that would stop the seed's checkpoints from loading fails here.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from certify.core.errors import ModelError
from model_zoo import create_model, list_models
from model_zoo.registry import canonical_name, register_model
from tests.networks import SMALL_OPTIONS

SIZES = {"mnist": (1, 28, 10), "cifar": (3, 32, 10), "tinyimagenet": (3, 64, 200)}
SEED_ARCHS = {
    "cnn",
    "wide_resnet_8",
    "resnext",
    "cnn_7layer_bn_imagenet",
    "wide_resnet_imagenet64",
    "ResNeXt_imagenet64",
}

Shapes = dict[str, tuple[int, ...]]


def conv(name: str, out: int, inp: int, k: int) -> Shapes:
    return {f"{name}.weight": (out, inp, k, k), f"{name}.bias": (out,)}


def linear(name: str, out: int, inp: int) -> Shapes:
    return {f"{name}.weight": (out, inp), f"{name}.bias": (out,)}


def bn(name: str, n: int) -> Shapes:
    stats = ("weight", "bias", "running_mean", "running_var")
    return {**{f"{name}.{s}": (n,) for s in stats}, f"{name}.num_batches_tracked": ()}


def expected_cnn7(c: int, d: int, k: int, final: int) -> Shapes:
    """The seed's cnn_7layer_bn2 (``final`` = spatial size reaching the Linear)."""
    return {
        **conv("0", 64, c, 3), **bn("1", 64),
        **conv("3", 64, 64, 3), **bn("4", 64),
        **conv("6", 128, 64, 3), **bn("7", 128),
        **conv("9", 128, 128, 3), **bn("10", 128),
        **conv("12", 128, 128, 3), **bn("13", 128),
        **linear("16", 512, 128 * final * final), **bn("17", 512),
        **linear("19", k, 512),
    }  # fmt: skip


def expected_wide_resnet(c: int, d: int, k: int, widen: int) -> Shapes:
    w = 16 * widen
    shapes = {**conv("conv1", 16, c, 3), **bn("bn1", 16)}
    for i, (inp, out) in enumerate([(16, w), (w, 2 * w), (2 * w, 4 * w)], start=1):
        p = f"layer{i}.0"
        shapes |= {**conv(f"{p}.conv1", out, inp, 3), **bn(f"{p}.bn1", out)}
        shapes |= {**conv(f"{p}.conv2", out, out, 3), **bn(f"{p}.bn2", out)}
        shapes |= {**conv(f"{p}.downsample.0", out, inp, 1), **bn(f"{p}.downsample.1", out)}
    shapes |= {**linear("dense", 512, 4 * w * (d // 4) ** 2), **bn("dense_bn", 512)}
    return shapes | linear("fc", k, 512)


def expected_resnext(c: int, d: int, k: int, stem: int, blocks: list[tuple]) -> Shapes:
    """``blocks``: (prefix, in, group width, out, has shortcut conv); cardinality 2."""
    shapes = {**conv("conv1", stem, c, 3), **bn("bn1", stem)}
    for p, inp, gw, out, shortcut in blocks:
        shapes |= {**conv(f"{p}.conv1", gw, inp, 1), **bn(f"{p}.bn1", gw)}
        shapes |= {**conv(f"{p}.conv2", gw, gw // 2, 3), **bn(f"{p}.bn2", gw)}
        shapes |= {**conv(f"{p}.conv3", out, gw, 1), **bn(f"{p}.bn3", out)}
        if shortcut:
            shapes |= {**conv(f"{p}.shortcut.0", out, inp, 1), **bn(f"{p}.shortcut.1", out)}
    final = blocks[-1][3]
    shapes |= {**linear("linear1", 512, final * (d // 4) ** 2), **bn("bn_dense", 512)}
    return shapes | linear("linear2", k, 512)


RESNEXT_CIFAR = [
    ("layer1.0", 64, 64, 128, True),
    ("layer2.0", 128, 128, 256, True),
    ("layer3.0", 256, 256, 512, True),
]
RESNEXT_TINY = [
    ("layer1.0", 16, 16, 32, True),
    ("layer1.1", 32, 16, 32, False),
    ("layer2.0", 32, 32, 64, True),
    ("layer2.1", 64, 32, 64, False),
    ("layer3.0", 64, 64, 128, True),
    ("layer3.1", 128, 64, 128, False),
]

EXPECTED = {
    "cnn": lambda c, d, k: expected_cnn7(c, d, k, d // 2),
    "cnn_7layer_bn_imagenet": lambda c, d, k: expected_cnn7(c, d, k, d // 4),
    "wide_resnet_8": lambda c, d, k: expected_wide_resnet(c, d, k, 8),
    "wide_resnet_imagenet64": lambda c, d, k: expected_wide_resnet(c, d, k, 10),
    "resnext": lambda c, d, k: expected_resnext(c, d, k, 64, RESNEXT_CIFAR),
    "ResNeXt_imagenet64": lambda c, d, k: expected_resnext(c, d, k, 16, RESNEXT_TINY),
    "cnn_4layer": lambda c, d, k: {
        **conv("0", 16, c, 4),
        **bn("1", 16),
        **conv("3", 32, 16, 4),
        **bn("4", 32),
        **linear("7", 100, 32 * (d // 4) ** 2),
        **bn("8", 100),
        **linear("10", k, 100),
    },  # fmt: skip
}


def meta_model(name: str, size: str) -> nn.Module:
    with torch.device("meta"):
        return create_model(name, *SIZES[size])


def shapes_of(model: nn.Module) -> Shapes:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------- registry


def test_every_seed_architecture_and_a_small_one_is_registered():
    assert SEED_ARCHS | {"cnn_4layer"} <= set(list_models())


def test_list_models_filters_case_insensitively():
    assert list_models("resnext*") == ["resnext", "ResNeXt_imagenet64"]
    assert list_models("*IMAGENET*") == [
        "cnn_7layer_bn_imagenet",
        "ResNeXt_imagenet64",
        "wide_resnet_imagenet64",
    ]
    assert list_models("nothing*") == []


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ModelError, match="unknown architecture 'vgg'.*cnn_4layer.*wide_resnet_8"):
        create_model("vgg", 3, 32, 10)


def test_seed_file_names_and_other_spellings_resolve():
    assert canonical_name("wide_resnet_bn_imagenet64") == "wide_resnet_imagenet64"
    assert canonical_name("ResNeXt_bn_imagenet64") == "ResNeXt_imagenet64"
    assert canonical_name("resnext_imagenet64") == "ResNeXt_imagenet64"
    assert "wide_resnet_bn_imagenet64" not in list_models()


def test_unknown_option_names_the_accepted_ones():
    with pytest.raises(ModelError, match="no option depth: its options are width, linear_size"):
        create_model("cnn", 3, 32, 10, depth=3)


@pytest.mark.parametrize("geometry", [(0, 32, 10), (3, 0, 10), (3, 32, 0), (3, 32.0, 10)])
def test_invalid_geometry_is_refused(geometry):
    with pytest.raises(ModelError, match="must be a positive integer"):
        create_model("cnn_4layer", *geometry)


def test_input_too_small_is_refused():
    with pytest.raises(ModelError, match="input size 2 is too small for architecture 'cnn_4layer'"):
        create_model("cnn_4layer", 1, 2, 10)


def test_registering_a_taken_name_fails():
    with pytest.raises(ModelError, match="registered twice"):

        @register_model(name="cnn")
        def other(in_ch: int, in_dim: int, num_classes: int) -> nn.Module:
            return nn.Identity()


def test_entry_functions_must_take_the_geometry():
    with pytest.raises(TypeError, match="lacks parameters"):

        @register_model(name="broken_entry")
        def broken(in_ch: int) -> nn.Module:
            return nn.Identity()


# ---------------------------------------------------------------------- layouts


def test_cnn_keys_are_exactly_the_seeds_in_order():
    keys = list(meta_model("cnn", "cifar").state_dict())
    bn_keys = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    expected = []
    for conv_index in (0, 3, 6, 9, 12):
        expected += [f"{conv_index}.weight", f"{conv_index}.bias"]
        expected += [f"{conv_index + 1}.{s}" for s in bn_keys]
    expected += ["16.weight", "16.bias", *[f"17.{s}" for s in bn_keys], "19.weight", "19.bias"]
    assert keys == expected
    assert keys[0] == "0.weight" and keys[-1] == "19.bias"


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("name", list_models())
def test_parameter_names_and_shapes(name, size):
    model = meta_model(name, size)
    shapes = shapes_of(model)
    c, d, k = SIZES[size]
    if name in EXPECTED:
        assert shapes == EXPECTED[name](c, d, k)
    # Whatever the architecture: inputs of in_ch channels, an output layer of k units.
    first = next(p for p in model.parameters() if p.dim() == 4)
    assert first.shape[1] == c
    assert [s for key, s in shapes.items() if len(s) == 2][-1][0] == k


def test_seed_tinyimagenet_heads_have_the_seeds_hardcoded_sizes():
    # The seed hard-coded these input sizes for 3x64x64 images.
    assert shapes_of(meta_model("cnn_7layer_bn_imagenet", "tinyimagenet"))["16.weight"] == (
        512,
        32768,
    )
    assert shapes_of(meta_model("ResNeXt_imagenet64", "tinyimagenet"))["linear1.weight"] == (
        512,
        2 * 8 * 2048,
    )


@pytest.mark.parametrize("name", list_models())
def test_architectures_have_no_inplace_activations(name):
    model = meta_model(name, "mnist")
    assert not any(getattr(m, "inplace", False) for m in model.modules())


# ---------------------------------------------------------------------- forward


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("name", list_models())
def test_forward_output_shape(name, size):
    c, d, k = SIZES[size]
    batch = 1 if size == "tinyimagenet" else 2
    model = create_model(name, c, d, k).eval()
    with torch.no_grad():
        out = model(torch.rand(batch, c, d, d))
    assert out.shape == (batch, k)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", list_models())
def test_strict_state_dict_round_trip(name):
    c, d, k = SIZES["mnist"]
    options = SMALL_OPTIONS.get(name, {})
    source = create_model(name, c, d, k, **options)
    for module in source.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    target = create_model(name, c, d, k, **options)
    target.load_state_dict(source.state_dict(), strict=True)
    x = torch.rand(2, c, d, d)
    with torch.no_grad():
        assert torch.equal(source.eval()(x), target.eval()(x))


@pytest.mark.parametrize("size", ["mnist", "cifar"])
@pytest.mark.parametrize("name", list_models())
def test_auto_lirpa_bounds_every_architecture(name, size):
    from certify.bounds.lirpa_compat import load_auto_lirpa

    lirpa = load_auto_lirpa()
    c, d, k = SIZES[size]
    model = create_model(name, c, d, k, **SMALL_OPTIONS.get(name, {})).eval()
    x = torch.rand(2, c, d, d)
    bounded = lirpa.BoundedModule(model, torch.zeros(1, c, d, d), device="cpu")
    ptb = lirpa.PerturbationLpNorm(norm=float("inf"), eps=0.01)
    with torch.no_grad():
        lower, upper = bounded.compute_bounds(x=(lirpa.BoundedTensor(x, ptb),), method="IBP")
        out = model(x)
    assert (lower <= out + 1e-5).all() and (out <= upper + 1e-5).all()
