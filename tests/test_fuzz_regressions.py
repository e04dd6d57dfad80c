"""Inputs on which the fuzz targets (:mod:`tests.fuzz_targets`, run by
``benchmarks/fuzz.py``) crashed a loader, and what each gets now: a one-line project
error, or a model where the input was valid.

Byte-level finds are kept as files in ``tests/fuzz_cases/`` (or literals here); finds of
the structured targets, whose bytes mean something only to their decoder, are written
out as the checkpoint object or ONNX graph they built.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from certify.core.eps import format_eps, parse_eps
from certify.core.errors import CertifyError, CheckpointError, ModelError, UsageError
from model_zoo import create_model
from model_zoo.checkpoint import load_checkpoint, save_checkpoint
from model_zoo.normalization import NormalizedModel
from model_zoo.onnx.loading import load_onnx
from tests.fuzz_targets import TARGETS, crash_of

CASES = Path(__file__).parent / "fuzz_cases"


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    return message


# ------------------------------------------------------------------ eps


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("1e300/1e-300", "outside [0, 1]"),  # was OverflowError from float(Fraction)
        ("1e4000/255", "exponent is out of range"),
        ("1e99999999/255", "exponent is out of range"),  # was minutes building 10**99999999
        ("8\n/0", "division by zero"),  # the message would have spanned two lines
    ],
)
def test_eps_texts_that_crashed(text: str, fragment: str) -> None:
    with pytest.raises(UsageError) as error:
        parse_eps(text)
    assert fragment in _one_line(error)


def test_a_tiny_eps_is_not_shown_as_zero() -> None:
    # format_eps gave "0/255", which reads back as 0: another radius
    eps = struct.unpack("<d", b"\xc3\xdb\xdds\xfc72-")[0]
    assert 0 < eps < 1e-80
    shown = format_eps(eps)
    assert parse_eps(shown) == pytest.approx(eps, rel=1e-5)


# ------------------------------------------------------------------ mean and std


@pytest.mark.parametrize(
    ("mean", "std", "fragment"),
    [
        ([0.5, 0.5], [0.5], "same number of channels"),  # were ValueError
        ([0.1307], [0.0], "must be positive"),
        ([0.1307], [1e-50], "must be positive"),  # positive, but 0 in float32
        ([math.nan], [1.0], "finite"),
        ([0.5], None, "one number per channel"),  # was TypeError
        ([], [], "finite numbers"),
    ],
)
def test_normalization_that_crashed(mean, std, fragment: str) -> None:
    with pytest.raises(UsageError) as error:
        NormalizedModel(torch.nn.Identity(), mean, std)
    assert fragment in _one_line(error)


def test_the_lists_target_finds_no_crash_in_its_former_finds() -> None:
    for data in (b"f0.4914,0.4822,0.4405|0.247,0.", b"f0.1307|0.00"):
        assert crash_of(TARGETS["lists"], data) is None


# ------------------------------------------------------------------ checkpoints


@pytest.fixture(scope="module")
def certify_file(tmp_path_factory) -> dict:
    """A small checkpoint in certify's format, as torch.load returns it."""
    path = tmp_path_factory.mktemp("ck") / "small.pth"
    model = create_model("cnn_4layer", 1, 28, 10, width=2, linear_size=4)
    meta = {"arch": "cnn_4layer", "arch_options": {"width": 2, "linear_size": 4}}
    save_checkpoint(path, model, meta | {"dataset": "mnist"})
    return torch.load(path, weights_only=True)


def _load(tmp_path: Path, payload, **kwargs):
    path = tmp_path / "case.pth"
    torch.save(payload, path)
    return load_checkpoint(path, **kwargs)


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("dataset", 3, "data set is a int"),  # was AttributeError in parse_dataset
        ("format", torch.rand(2, 2, 2), "format a tensor of shape [2, 2, 2]"),  # RuntimeError
        ("version", torch.zeros(3, 2), "version a tensor of shape [3, 2]"),  # several lines
        ("in_dim", 10**10, "cannot be built"),  # was RuntimeError: storage size overflowed
        ("arch_options", torch.zeros(0), "arch_options is not a dict"),  # was RuntimeError
        ("arch", torch.zeros(2, 2), "arch is a Tensor"),  # several lines
        # The file's own values at fault, not an argument: was a usage error naming --arch
        # or --std (exit 2).
        ("arch", "no_such_model", "stored arch is unknown"),
        ("std", [1e-50], "not a positive float32 number"),  # 0 once in float32
        ("std", [1e300], "not a positive float32 number"),  # infinite in float32
    ],
)
def test_certify_checkpoint_fields_that_crashed(
    tmp_path: Path, certify_file: dict, field: str, value, fragment: str
) -> None:
    with pytest.raises(CheckpointError) as error:
        _load(tmp_path, certify_file | {field: value})
    assert fragment in _one_line(error)


def test_state_dict_key_that_is_not_a_name(tmp_path: Path, certify_file: dict) -> None:
    state = dict(certify_file["state_dict"]) | {("a",): torch.zeros(1)}
    with pytest.raises(CheckpointError) as error:  # was AttributeError: no startswith
        _load(tmp_path, certify_file | {"state_dict": state})
    assert "key of the state dict is a tuple" in _one_line(error)


def test_state_dict_key_with_a_line_break(tmp_path: Path) -> None:
    state = create_model("cnn_4layer", 1, 28, 10).state_dict()
    state["bad\nkey"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as error:
        _load(tmp_path, state, arch="cnn_4layer")
    assert "bad\\nkey" in _one_line(error)


def test_ctbench_file_with_the_prefix_on_some_keys(tmp_path: Path) -> None:
    # detect_format found the normalization under "layers.0.mean" while the adapter
    # looked for "0.mean" (KeyError); such a file loads like its uniform twin.
    network = create_model("cnn_4layer", 1, 28, 10).eval()
    state = {f"{int(k.split('.', 1)[0]) + 1}.{k.split('.', 1)[1]}": v
             for k, v in network.state_dict().items()}  # fmt: skip
    state["layers.0.mean"] = torch.tensor([[[0.1307]]])
    state["layers.0.sigma"] = torch.tensor([[[0.3081]]])
    loaded = _load(tmp_path, state, arch="cnn_4layer")
    images = torch.rand(3, 1, 28, 28)
    expected = network((images - 0.1307) / 0.3081)
    torch.testing.assert_close(loaded.model(images), expected, rtol=1e-5, atol=1e-5)


def test_refused_global_with_a_line_break_in_its_name() -> None:
    # A mangled zip-less pickle naming the global "cyllectimns.Or;eredDI0\n": the name
    # was printed as it is, on two lines.
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(CASES / "checkpoint-global-name-with-line-break.pth", arch="cnn_4layer")
    assert "stores Python objects (cyllectimns.Or;eredDI0\\n)" in _one_line(error)


def test_the_checkpoint_targets_find_no_crash_in_their_seeds() -> None:
    for name in ("checkpoint_file", "checkpoint_object"):
        for data in TARGETS[name].seeds():
            assert crash_of(TARGETS[name], data) is None


# ------------------------------------------------------------------ ONNX files

ONNX_CASES = {
    # non-UTF-8 bytes in an operator name of a custom domain: TypeError in onnx2torch
    "onnx-op-name-not-utf8.onnx": (CheckpointError, "not UTF-8 text"),
    # ... and in a dimension name: UnicodeDecodeError in onnxruntime's input shape
    "onnx-dim-name-not-utf8.onnx": (CheckpointError, "not UTF-8 text"),
    # an input element type ONNX does not define: ValueError naming it
    "onnx-unknown-input-type.onnx": (ModelError, "type-65 input"),
    # an initializer of an undefined data type: KeyError while folding constants
    "onnx-unknown-tensor-type.onnx": (ModelError, "data type 48"),
    # a Gather with float indices: ValueError from the converted module
    "onnx-gather-float-indices.onnx": (ModelError, "fails on an image"),
    # a Gemm of two vectors: IndexError from the converted module
    "onnx-gemm-vector-operands.onnx": (ModelError, "fails on an image"),
    # lowering the opset: InferenceError from onnx's version converter
    "onnx-lowering-shape-error.onnx": (ModelError, "cannot lower the ONNX model"),
}


@pytest.mark.parametrize("name", list(ONNX_CASES))
def test_onnx_files_that_crashed(name: str) -> None:
    kind, fragment = ONNX_CASES[name]
    with pytest.raises(kind) as error:
        load_onnx(CASES / name)
    assert fragment in _one_line(error)
    assert str(CASES / name) in str(error.value) or kind is ModelError


def test_onnx_local_function_is_inlined() -> None:
    # `onnx.inliner` is not loaded by `import onnx`: every model with local functions
    # failed with AttributeError. This one (channels last, BatchNorm, a local Relu)
    # now converts, and matches onnxruntime on the probe images.
    loaded = load_onnx(CASES / "onnx-local-function.onnx", input_shape=(2, 5, 5))
    assert "inlined the model's local functions" in loaded.rewrites
    assert loaded.channels_last
    assert loaded.conversion_difference < 1e-4


def test_gemm_with_a_vector_weight(tmp_path: Path) -> None:
    # onnx2torch's Gemm converter indexes the weight's second dimension (IndexError)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["f"]),
         helper.make_node("Gemm", ["f", "w", "b"], ["y"], transB=1)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(np.ones(3, np.float32), "w"),
         numpy_helper.from_array(np.zeros(3, np.float32), "b")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "g.onnx"))
    with pytest.raises(ModelError) as error:
        load_onnx(tmp_path / "g.onnx")
    assert "onnx2torch cannot convert" in _one_line(error)


# ------------------------------------------------------------------ results CSV
# Dates with and without a UTC offset ('12z00:00' reads as zone z) made pandas raise;
# counts that read as inf ('21e4002') failed the cast to integers.


def test_results_with_mixed_time_zones() -> None:
    data = (CASES / "results-mixed-timezones.csv").read_bytes()
    assert crash_of(TARGETS["results_csv"], data) is None


@pytest.mark.parametrize("name", ["results-infinite-count.csv", "results-infinite-given-count.csv"])
def test_results_with_an_infinite_count(name: str) -> None:
    data = (CASES / name).read_bytes()
    assert crash_of(TARGETS["results_csv"], data) is None


def test_results_target_sees_a_valid_file_as_valid() -> None:
    # the cases above pass because the crash is gone, not because the target rejects all
    seed = TARGETS["results_csv"].seeds()[0]
    TARGETS["results_csv"].run(seed)
    with pytest.raises(CertifyError):
        TARGETS["results_csv"].run(seed[: seed.index(b"\n") + 1])


def test_regression_inputs_are_small() -> None:
    assert all(p.stat().st_size < 4096 for p in CASES.iterdir())
