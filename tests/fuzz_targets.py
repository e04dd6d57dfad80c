"""The fuzz targets: certify's loaders and parsers, fed bytes.

Test support, beside :mod:`tests.networks`: ``tests/test_fuzz.py`` runs a short
deterministic pass of each target and ``tests/test_fuzz_regressions.py`` replays the
inputs that once crashed one; ``benchmarks/fuzz.py`` runs them for hours.

Each :class:`Target` turns one input (bytes) into a call of a loader or parser; the rule
it checks is that the only exceptions leaving the loader are the project's own
(:class:`~certify.core.errors.CertifyError` subclasses, which the CLI turns into one line
and exit code 1 or 2; for the CLI's comma-list callbacks also click's ``BadParameter``,
its exit 2). Anything else is a crash: :func:`crash_of` returns it.

Two kinds of target: those that write the bytes to a file and load it (checkpoints,
ONNX files, results CSVs) or parse them as text (eps, lists), and structured ones that
read the bytes as choices (:class:`Choices`) to build a checkpoint object or to edit a
small ONNX graph, which reach deeper than random bytes would. ``benchmarks/fuzz.py``
drives them with atheris (coverage-guided) or, without it, with :func:`mutate`.
"""

from __future__ import annotations

import atexit
import copy
import hashlib
import io
import json
import math
import os
import pickle
import random
import shutil
import struct
import tempfile
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import click
import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from certify.bounds.margins import parse_methods
from certify.commands import eval_command, report_command, train_command
from certify.core.csv_files import write_rows
from certify.core.eps import format_eps, parse_eps
from certify.core.errors import CertifyError, ModelError
from model_zoo.checkpoint import load_checkpoint
from model_zoo.checkpoint.loading import model_from_checkpoint
from model_zoo.normalization import NormalizedModel
from model_zoo.onnx.loading import load_onnx
from reports.eval_csv import EVAL_COLUMNS
from reports.results_reading import read_results
from training.config import TrainConfig
from training.seed_config import read_seed_config

REPO = Path(__file__).resolve().parents[1]
EMBEDDED = REPO / "certify" / "embedded" / "mnist_cnn_4layer.pth"
# A folder of ONNX models to seed the ONNX targets with (fuzz.py's --models-dir).
MODELS_ENV = "CERTIFY_FUZZ_MODELS"


def _seed_models() -> Path | None:
    folder = os.environ.get(MODELS_ENV)
    return Path(folder) if folder and Path(folder).is_dir() else None


PROJECT_ERRORS: tuple[type[BaseException], ...] = (CertifyError,)
CLI_ERRORS: tuple[type[BaseException], ...] = (CertifyError, click.BadParameter)


@dataclass(frozen=True)
class Target:
    """One loader under test: ``run`` feeds it an input, ``seeds`` are real inputs."""

    name: str
    run: Callable[[bytes], None]
    seeds: Callable[[], list[bytes]]
    allowed: tuple[type[BaseException], ...] = PROJECT_ERRORS
    tokens: tuple[bytes, ...] = ()
    """Byte strings :func:`mutate` splices in (the format's punctuation and keywords)."""
    max_len: int = 4096


@dataclass
class Crash:
    """An exception that left a target, with where it came from."""

    error: BaseException
    signature: str
    """Exception type and the innermost project frame: one per bug, not per input."""
    trace: str = field(repr=False, default="")


def crash_of(target: Target, data: bytes) -> Crash | None:
    """Run ``target`` on ``data``; the exception it let out, unless an allowed one with a
    one-line message."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            target.run(data)
    except target.allowed as error:
        if "\n" not in str(error).strip():
            return None
        # a project error, but the CLI would print it on several lines
        trace = traceback.format_exc()
        return Crash(error, f"multi-line message: {_signature(error)}", trace)
    except Exception as error:
        return Crash(error, _signature(error), traceback.format_exc())
    return None


def _signature(error: BaseException) -> str:
    frames = traceback.extract_tb(error.__traceback__)
    ours = [f for f in frames if any(f"/{p}/" in f.filename for p in _PACKAGES)]
    frame = (ours or frames)[-1]
    where = (
        os.path.relpath(frame.filename, REPO)
        if frame.filename.startswith(str(REPO))
        else frame.filename
    )
    return f"{type(error).__name__} at {where}:{frame.lineno} ({frame.name})"


_PACKAGES = ("certify", "model_zoo", "reports", "training")


def input_id(data: bytes) -> str:
    """A short stable name for an input (its hash), for crash files."""
    return hashlib.sha1(data).hexdigest()[:12]


# ---------------------------------------------------------------------- helpers


class Choices:
    """Reads an input as a sequence of small choices; an exhausted input reads zeros."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def below(self, n: int) -> int:
        """An integer in [0, n)."""
        if n <= 1:
            return 0
        value = self.byte() if n <= 256 else (self.byte() << 8) | self.byte()
        return value % n

    def pick(self, options: Sequence[Any]) -> Any:
        return options[self.below(len(options))]

    def flag(self) -> bool:
        return self.byte() & 1 == 1

    def text(self, longest: int = 16) -> str:
        n = self.below(longest + 1)
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk.decode("utf-8", "replace")

    def number(self) -> float:
        specials = (0.0, 1.0, -1.0, 0.5, 2.0, 1e-30, 1e30, math.nan, math.inf, -math.inf, 255.0)
        if self.flag():
            return self.pick(specials)
        raw = bytes(self.byte() for _ in range(8))
        return struct.unpack("<d", raw)[0]


@cache
def _scratch() -> Path:
    """A private folder for the files the targets write, one per process."""
    folder = Path(tempfile.mkdtemp(prefix="certify-fuzz-"))
    atexit.register(cleanup)
    return folder


def cleanup() -> None:
    """Remove the files the targets wrote (also run at exit)."""
    if _scratch.cache_info().currsize:
        shutil.rmtree(_scratch(), ignore_errors=True)


def _as_file(data: bytes, name: str) -> Path:
    path = _scratch() / name
    path.write_bytes(data)
    return path


# ------------------------------------------------------------- text parsers


def _run_eps(data: bytes) -> None:
    if data[:1] == b"\x00" and len(data) == 9:
        value = parse_eps(struct.unpack("<d", data[1:])[0])
    else:
        value = parse_eps(data.decode("utf-8", "replace"))
    shown = format_eps(value)
    again = parse_eps(shown)  # what certify prints must read back
    if abs(again - value) > 1e-5 * value:  # format_eps keeps 6 significant digits
        raise AssertionError(f"format_eps({value!r}) = {shown!r} reads back as {again!r}")


def _seeds_eps() -> list[bytes]:
    texts = ["8/255", "0.3", "2e-3", "1/255", " 0.0314 ", "0", "1", "2/255", "0.1"]
    return [t.encode() for t in texts] + [b"\x00" + struct.pack("<d", 8 / 255)]


def _run_methods(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    parse_methods(text.split("\x00") if "\x00" in text else text)


def _seeds_methods() -> list[bytes]:
    return [b"ibp,crown", b"crown-ibp", b"alpha-crown", b"IBP, crown ,crown", b"ibp\x00crown"]


def _run_lists(data: bytes) -> None:
    """The CLI's comma lists (eval's --mean/--std, train's epochs and methods, report's
    columns) and the normalization layer built from a parsed mean and std."""
    which, text = data[:1], data[1:].decode("utf-8", "replace")
    if which == b"i":
        train_command._int_list(None, None, text)
    elif which == b"m":
        train_command._methods(None, None, text)
    elif which == b"s":
        report_command._split(text)
    else:
        mean_text, _, std_text = text.partition("|")
        mean = eval_command._floats(None, None, mean_text)
        std = eval_command._floats(None, None, std_text)
        model = NormalizedModel(torch.nn.Identity(), mean, std)
        model(torch.zeros(1, len(mean), 2, 2))


def _seeds_lists() -> list[bytes]:
    return [
        b"f0.4914,0.4822,0.4465|0.247,0.243,0.261",
        b"f0.1307|0.3081",
        b"f0.5, 0.5|0.5,0.5",
        b"i50,60",
        b"i 10, 20 ,30",
        b"mfast,vanilla",
        b"sdataset,eps",
        b"s-verified_error,model",
    ]


# ------------------------------------------------------------- results CSV


def _run_seed_config(data: bytes) -> None:
    settings = read_seed_config(_as_file(data, "config.json"))
    # What the file sets must make a valid run.
    TrainConfig.from_values({"dataset": "mnist", "data_dir": "data", "out_dir": "r"} | settings)


def _seeds_seed_config() -> list[bytes]:
    # The seed's config/mnist.json, cifar.json and tinyimagenet.ibp.json, as their JSON says.
    files = [
        {"data": "MNIST", "batch_size": 256, "bound_params": {
            "eps": 0.4, "bound_type": "IBP",
            "bound_opts": {"relu": "adaptive", "exp": "clamp_constant"}}},
        {"data": "CIFAR", "batch_size": 128, "bound_params": {"eps": 0.03137}},
        {"data": "tinyimagenet", "training_params": {
            "num_epochs": 80, "scheduler_name": "SmoothedScheduler",
            "scheduler_opts": "start=11,length=20", "batch_size": 128,
            "lr_decay_factor": 0.2, "lr_decay_milestones": ""},
         "bound_params": {"eps": 0.00392, "bound_type": "IBP"}},
        {"data": "CIFAR", "seed": 100, "training_params": {"method": "robust"}},
    ]  # fmt: skip
    return [json.dumps(f).encode() for f in files]


def _run_results_csv(data: bytes) -> None:
    read_results([_as_file(data, "results.csv")])


def _seeds_results_csv() -> list[bytes]:
    base = dict.fromkeys(EVAL_COLUMNS, "")
    rows = [
        base | {"model": "mnist_cnn_4layer.pth", "arch": "cnn_4layer", "dataset": "mnist",
                "eps": "0.4", "eps_value": "0.4", "method": "ibp", "mode": "cascade",
                "num_samples": 100, "start": 0, "clean_wrong": 2, "pgd_attacked": 10,
                "verified": 70, "clean_error": "0.02", "pgd_error": "0.12",
                "verified_error": "0.3", "pgd_steps": 20, "pgd_restarts": 1, "seconds": 1.5,
                "device": "cpu", "torch": "2.13.0", "certify": "0.1",
                "date": "2024-05-01 12:00:00"},
        base | {"model": "best.pth", "run": "runs/a", "arch": "cnn", "dataset": "cifar",
                "eps": "8/255", "eps_value": repr(8 / 255), "method": "crown-ibp",
                "num_samples": 10, "clean_error": "0.5", "pgd_error": "0.6",
                "verified_error": "0.7", "date": "2024-05-02 08:30:00"},
        base | {"model": "x.onnx", "dataset": "mnist", "eps": "2e-3", "method": "crown",
                "num_samples": 3, "clean_error": "0", "pgd_error": "0",
                "verified_error": "1", "date": ""},
    ]  # fmt: skip
    seeds = []
    for chosen in (rows, rows[:1], rows[1:]):
        path = _scratch() / "seed.csv"
        write_rows(path, chosen, EVAL_COLUMNS)
        seeds.append(path.read_bytes())
    seeds.append((",".join(EVAL_COLUMNS) + "\n").encode())
    return seeds


# ------------------------------------------------------------- checkpoints


class _RunsCommand:
    """A pickle payload that would run a command; the loaders must never unpickle it."""

    def __reduce__(self):
        return (os.system, ("echo certify-fuzz-payload-ran >&2",))


def _run_checkpoint_file(data: bytes) -> None:
    load_checkpoint(_as_file(data, "model.pth"), arch="cnn_4layer")


def _seeds_checkpoint_file() -> list[bytes]:
    """The bundled checkpoint, a small one in certify's format, the bundled network's
    weights in the other layouts and containers, and hostile pickles."""
    from model_zoo import create_model
    from model_zoo.checkpoint import save_checkpoint

    seeds = [EMBEDDED.read_bytes()]
    torch.manual_seed(0)
    options = {"width": 2, "linear_size": 4}
    small = create_model("cnn_4layer", 1, 28, 10, **options).eval()
    path = _scratch() / "small.pth"
    meta = {"arch": "cnn_4layer", "arch_options": options, "dataset": "mnist", "eps": 0.1}
    save_checkpoint(path, small, meta)
    seeds.append(path.read_bytes())
    state = _base_state()
    for payload in (state, {"state_dict": state, "epoch": 3}):
        for zipped in (True, False):
            buffer = io.BytesIO()
            torch.save(payload, buffer, _use_new_zipfile_serialization=zipped)
            seeds.append(buffer.getvalue())
    hostile = {"state_dict": small.state_dict(), "x": _RunsCommand()}
    buffer = io.BytesIO()
    torch.save(hostile, buffer)
    seeds.append(buffer.getvalue())
    seeds += [pickle.dumps(hostile, protocol=p) for p in (0, 2, 4)]
    return seeds


@cache
def _base_state() -> dict[str, torch.Tensor]:
    raw = torch.load(EMBEDDED, map_location="cpu", weights_only=True)
    return dict(raw["state_dict"])


_KEY_PREFIXES = ("module.", "_orig_mod.", "layers.", "model.", "normalize.", "")
_ODD_KEYS = (
    "0.mean", "0.sigma", "0.std", "normalize.mean", "normalize.std", "layers.0.mean",
    "x._orig_mod.y", "module.module.0.weight", "1.deepz_lambda", "a.0", "", "0",
    "layers.x.weight", "-1.weight",
)  # fmt: skip
_DTYPES = (torch.float32, torch.float64, torch.float16, torch.int64, torch.bool, torch.uint8)
_NON_TENSORS: tuple[Any, ...] = (None, 1, 1.5, "x", [1, 2], b"raw", (1,), True, {}, {"a": 1})


def _odd_tensor(c: Choices) -> torch.Tensor:
    shape = [c.pick((0, 1, 2, 3, 4, 10, 16)) for _ in range(c.below(5))]
    values = torch.full(shape, c.number(), dtype=torch.float64) if c.flag() else torch.rand(shape)
    return values.to(c.pick(_DTYPES))


def _odd_value(c: Choices) -> Any:
    kind = c.below(4)
    if kind == 0:
        return _odd_tensor(c)
    if kind == 1:
        return c.pick(_NON_TENSORS)
    if kind == 2:
        return [c.number() for _ in range(c.below(5))]
    return c.text(8)


def _edited_state(c: Choices, prefix: str = "") -> dict[Any, Any]:
    state: dict[Any, Any] = {prefix + k: v for k, v in _base_state().items()}
    for _ in range(c.below(6)):
        keys = list(state)
        op = c.below(6)
        if op == 0 and keys:  # rename
            key = c.pick(keys)
            prefixed = c.flag() and isinstance(key, str)
            new = c.pick(_KEY_PREFIXES) + key if prefixed else c.pick(_ODD_KEYS)
            state[new] = state.pop(key)
        elif op == 1 and keys:
            del state[c.pick(keys)]
        elif op == 2 and keys:
            state[c.pick(keys)] = _odd_tensor(c)
        elif op == 3 and keys:
            state[c.pick(keys)] = _odd_value(c)
        elif op == 4:
            state[c.pick(_ODD_KEYS) if c.flag() else c.text(12)] = _odd_tensor(c)
        elif op == 5:
            state[c.pick((1, None, ("a",), 2.5))] = _odd_tensor(c)
    return state


def _meta_value(c: Choices, options: Sequence[Any]) -> Any:
    return c.pick(options) if c.below(4) else _odd_value(c)


def _raw_checkpoint(c: Choices) -> Any:
    """A checkpoint object as ``torch.load(weights_only=True)`` could return it."""
    kind = c.below(8)
    if kind == 0:
        # each field: the first option is the value a real file holds
        raw = {
            "format": _meta_value(c, ("certify", "other", None)),
            "version": _meta_value(c, (1, 2, "1", 1.0, True)),
            "arch": _meta_value(c, ("cnn_4layer", "CNN_4layer", "cnn", "x")),
            "arch_options": _meta_value(
                c, ({}, None, {"width": 16}, {"width": 2.5}, {"width": "a"},
                    {"bogus": 1}, [1], {"width": -1}, {"width": 0}, {"linear_size": True})
            ),
            "dataset": _meta_value(c, ("mnist", "MNIST", "cifar", "imagenet", "", 3)),
            "in_ch": _meta_value(c, (1, 3, 0, -1, True, 1.0, "1", 10**12)),
            "in_dim": _meta_value(c, (28, 32, 0, -4, 4, 2.0, 10**9)),
            "num_classes": _meta_value(c, (10, 7, 1, 0, -1, False)),
            "mean": _meta_value(c, ([0.0], [0.5, 0.5, 0.5], [], [math.nan], [0.0, "x"], 0.5)),
            "std": _meta_value(c, ([1.0], [0.5, 0.5, 0.5], [0.0], [-1.0], [math.inf], "1")),
            "eps": _meta_value(c, (0.4, None, math.nan, "x", True)),
            "method": _meta_value(c, ("fast", None, 3)),
            "train_args": _meta_value(c, ({}, None, {"epochs": 3})),
            "epoch": _meta_value(c, (97, None, -1, "x")),
            "state_dict": _edited_state(c) if c.below(6) else _odd_value(c),
        }  # fmt: skip
        for _ in range(c.below(3)):
            raw.pop(c.pick(list(raw)), None)
        return raw
    if kind == 1:
        return {"state_dict": _edited_state(c, c.pick(("", "module."))), "epoch": c.pick((3, "x"))}
    if kind == 2:
        return {"model_state_dict": _edited_state(c, "layers."), "loss": c.number()}
    if kind == 3:
        state = {f"layers.{_shift(k)}": v for k, v in _edited_state(c).items()}
        state["layers.0.mean"] = torch.tensor([[[0.1307]]])
        state[c.pick(("layers.0.sigma", "layers.0.std", "0.sigma"))] = torch.tensor([[[0.3081]]])
        return state
    if kind == 4:
        state = _edited_state(c, "model.")
        state["normalize.mean"] = _odd_tensor(c) if c.flag() else torch.zeros(1, 1, 1, 1)
        state["normalize.std"] = _odd_tensor(c) if c.flag() else torch.ones(1, 1, 1, 1)
        return state
    if kind in (5, 6):
        return _edited_state(c, c.pick(_KEY_PREFIXES))
    return c.pick(([], (1, 2), torch.zeros(3), "x", None, 3, {}, {"state_dict": None}))


def _shift(key: Any) -> Any:
    if not isinstance(key, str):
        return key
    index, _, rest = key.partition(".")
    return f"{int(index) + 1}.{rest}" if index.isdigit() else key


def _run_checkpoint_object(data: bytes) -> None:
    c = Choices(data)
    raw = _raw_checkpoint(c)
    arch = c.pick((None, "cnn_4layer", "cnn_4layer", "cnn", "resnext", "nope"))
    dataset = c.pick((None, None, "mnist", "cifar", "tinyimagenet", "bogus"))
    num_classes = c.pick((None, None, 10, 7, 0, -3))
    model_from_checkpoint(raw, arch, dataset, num_classes)


def _seeds_checkpoint_object() -> list[bytes]:
    """Choices that build each format from the bundled network's weights, unedited (arch
    given where the format does not record it), and two arbitrary ones."""
    arch = [1, 0, 0]  # "cnn_4layer", no dataset, no class count
    unedited = [
        [0] + [1, 0] * 14 + [1, 0, 0] + [0, 0, 0],  # certify's format
        [1, 0, 0, 0] + arch,  # the seed's
        [2, 0, 1, 0] + arch,  # CTRAIN's
        [3, 0, 0] + arch,  # CTBench's
        [4, 0, 0, 0] + arch,  # a NormalizedModel's state dict
        [5, 5, 0] + arch,  # a bare state dict
        [6, 0, 0] + arch,  # the same saved from DataParallel ("module.")
    ]
    return [bytes(s) for s in unedited] + [bytes(range(k, 64 + k)) for k in (0, 9)]


# ------------------------------------------------------------- ONNX


def _graph_seeds() -> list[onnx.ModelProto]:
    """Small graphs written the way exporters write them (Constant shapes, Identity of
    initializers, allowzero Reshapes, AveragePool dilations, a local function)."""
    rng = np.random.default_rng(0)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    def model(graph, opset: int, functions=(), ir: int = 9) -> onnx.ModelProto:
        imports = [helper.make_opsetid("", opset)]
        if functions:
            imports.append(helper.make_opsetid("local", 1))
        proto = helper.make_model(graph, opset_imports=imports, functions=list(functions))
        proto.ir_version = ir
        return proto

    flat = helper.make_graph(
        [
            helper.make_node("Constant", [], ["shape"],
                             value=numpy_helper.from_array(np.array([-1, 16], np.int64))),
            helper.make_node("Reshape", ["x", "shape"], ["flat"], allowzero=1),
            helper.make_node("Identity", ["w1"], ["w1_alias"]),
            helper.make_node("Gemm", ["flat", "w1_alias", "b1"], ["h"], transB=1),
            helper.make_node("Relu", ["h"], ["a"]),
            helper.make_node("Gemm", ["a", "w2", "b2"], ["y"], transB=1),
        ],
        "flat",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [init("w1", 8, 16), init("b1", 8), init("w2", 3, 8), init("b2", 3)],
    )  # fmt: skip
    conv = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "k", "kb"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"]),
            helper.make_node("AveragePool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2],
                             dilations=[1, 1]),
            helper.make_node("Flatten", ["p"], ["f"]),
            helper.make_node("MatMul", ["f", "w"], ["m"]),
            helper.make_node("Add", ["m", "b"], ["y"]),
        ],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [init("k", 2, 1, 3, 3), init("kb", 2), init("w", 18, 4), init("b", 4)],
    )  # fmt: skip
    relu_function = helper.make_function(
        "local", "MyRelu", ["i"], ["o"], [helper.make_node("Relu", ["i"], ["o"])],
        [helper.make_opsetid("", 13)],
    )  # fmt: skip
    channels_last = helper.make_graph(
        [
            helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
            helper.make_node("Conv", ["t", "k"], ["c"], kernel_shape=[3, 3]),
            helper.make_node("BatchNormalization", ["c", "s", "bb", "mu", "var"], ["n"]),
            helper.make_node("MyRelu", ["n"], ["r"], domain="local"),
            helper.make_node("GlobalAveragePool", ["r"], ["g"]),
            helper.make_node("Flatten", ["g"], ["f"]),
            helper.make_node("Gemm", ["f", "w", "b"], ["y"]),
        ],
        "channels_last",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5, 5, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [init("k", 4, 2, 3, 3), init("s", 4), init("bb", 4), init("mu", 4),
         numpy_helper.from_array(np.ones(4, np.float32), "var"), init("w", 4, 3), init("b", 3)],
    )  # fmt: skip
    return [
        model(flat, 20),
        model(conv, 19),
        model(channels_last, 13, functions=[relu_function]),
    ]


@cache
def _graphs() -> tuple[onnx.ModelProto, ...]:
    graphs = _graph_seeds()
    folder = _seed_models()
    for name in ("verivital_convnet_avgpool.onnx", "oval21_cifar_deep_kw.onnx"):
        if folder is not None and (folder / name).is_file():
            graphs.append(onnx.load(str(folder / name)))
    return tuple(graphs)


def _seeds_onnx_file() -> list[bytes]:
    seeds = [g.SerializeToString() for g in _graph_seeds()]
    folder = _seed_models()
    if folder is not None:
        seeds += [p.read_bytes() for p in sorted(folder.glob("*.onnx"))]
    return seeds


def _run_onnx_file(data: bytes) -> None:
    path = _as_file(data, "model.onnx")
    try:
        load_onnx(path)
    except ModelError as error:
        # a flattened input (the public MNIST networks): load it as a user would, with
        # the data set's image shape
        if "give the data set's input shape" not in str(error):
            raise
        load_onnx(path, input_shape=(1, 28, 28))


_OPS = (
    "Relu", "Conv", "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Reshape", "Flatten",
    "AveragePool", "MaxPool", "GlobalAveragePool", "Identity", "Constant", "Transpose",
    "Softmax", "Sigmoid", "Floor", "Cast", "Shape", "Gather", "Concat", "Unsqueeze",
    "Squeeze", "BatchNormalization", "Pad", "Dropout", "Clip", "LeakyRelu", "Tanh",
    "Slice", "ReduceMean", "Sqrt", "Exp", "If", "Loop", "NoSuchOp", "Split", "Expand",
    "ConvTranspose", "Sum", "Neg", "Abs", "Where", "Equal", "Greater", "Not", "Tile",
)  # fmt: skip
_ATTRS = (
    "allowzero", "dilations", "kernel_shape", "strides", "pads", "axis", "axes", "perm",
    "group", "alpha", "beta", "transA", "transB", "to", "value", "value_float",
    "value_ints", "epsilon", "keepdims", "mode", "auto_pad", "ceil_mode", "count_include_pad",
)  # fmt: skip
_DIMS = (1, 2, 0, -1, 3, 4, 5, 6, 16, 28, "N", "", None)


def _edit_graph(proto: onnx.ModelProto, c: Choices) -> None:
    """Apply a few edits chosen by ``c`` to ``proto`` (in place)."""
    graph = proto.graph
    names = [n for node in graph.node for n in (*node.input, *node.output)]
    names += [i.name for i in graph.initializer] + ["", "missing"]
    for _ in range(c.below(5)):
        op = c.below(14)
        nodes = graph.node
        node = nodes[c.below(len(nodes))] if len(nodes) else None
        if op == 0 and node is not None:
            node.op_type = c.pick(_OPS)
        elif op == 1 and node is not None:
            nodes.remove(node)
        elif op == 2 and node is not None:
            nodes.append(copy.deepcopy(node))
        elif op == 3 and node is not None and node.input:
            node.input[c.below(len(node.input))] = c.pick(names)
        elif op == 4 and node is not None:
            _edit_attribute(node, c)
        elif op == 5:
            values = [*graph.input, *graph.output]
            shape = c.pick(values).type.tensor_type.shape
            if len(shape.dim):
                _set_dim(shape.dim[c.below(len(shape.dim))], c.pick(_DIMS))
            elif c.flag():
                shape.dim.add().dim_value = 1
        elif op == 6 and graph.input:
            graph.input[0].type.tensor_type.elem_type = c.pick(
                (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.INT64, TensorProto.FLOAT16)
            )
        elif op == 7 and graph.initializer:
            tensor = graph.initializer[c.below(len(graph.initializer))]
            shape = [c.pick((1, 2, 3, 4, 0)) for _ in range(c.below(4))]
            array = np.full(shape, c.pick((0, 1, -1, 2, 7)), dtype=c.pick((np.float32, np.int64)))
            tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
        elif op == 8:
            opset = next((o for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
            if opset is not None:
                opset.version = c.pick((1, 7, 9, 11, 13, 17, 18, 19, 20, 21, 22, 23, 30))
        elif op == 9:
            proto.ir_version = c.pick((3, 4, 7, 8, 9, 10, 11, 0, 100))
        elif op == 10:
            value = c.pick((
                helper.make_attribute("value_float", 2.0),
                helper.make_attribute("value_ints", [1, -1]),
                helper.make_attribute("value", numpy_helper.from_array(np.zeros((2, 2), "f4"))),
                helper.make_attribute("value_string", "x"),
            ))  # fmt: skip
            constant = helper.make_node("Constant", [], [c.pick(names) or "k0"])
            constant.attribute.append(value)
            nodes.insert(c.below(len(nodes) + 1), constant)
        elif op == 11 and len(nodes) > 1:
            i, j = c.below(len(nodes)), c.below(len(nodes))
            a, b = copy.deepcopy(nodes[i]), copy.deepcopy(nodes[j])
            nodes[i].CopyFrom(b)
            nodes[j].CopyFrom(a)
        elif op == 12 and node is not None and node.output:
            node.output[c.below(len(node.output))] = c.pick(names) or "y"
        elif op == 13:
            value = copy.deepcopy(c.pick([*graph.input, *graph.output]))
            value.name = c.pick(names) or "extra"
            (graph.input if c.flag() else graph.output).append(value)


def _set_dim(dim: onnx.TensorShapeProto.Dimension, value: int | str | None) -> None:
    if value is None:
        dim.Clear()
    elif isinstance(value, str):
        dim.dim_param = value
    else:
        dim.dim_value = value


def _edit_attribute(node: onnx.NodeProto, c: Choices) -> None:
    if node.attribute and c.flag():
        if c.flag():
            node.attribute.remove(node.attribute[c.below(len(node.attribute))])
            return
        attr = node.attribute[c.below(len(node.attribute))]
        name = attr.name
    else:
        name = c.pick(_ATTRS)
    value = c.pick((0, 1, 2, 3, -1, 7, [1, 1], [2, 2], [0, 0, 0, 0], [1, 1, 1, 1], [0, 2, 3, 1],
                    0.5, -0.1, "NOTSET", "SAME_UPPER", b"x"))  # fmt: skip
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend([*kept, helper.make_attribute(name, value)])


def _run_onnx_graph(data: bytes) -> None:
    c = Choices(data)
    proto = copy.deepcopy(c.pick(_graphs()))
    _edit_graph(proto, c)
    input_shape = c.pick((None, None, (1, 4, 4), (1, 6, 6), (2, 5, 5), (1, 28, 28), (3, 32, 32)))
    mean, std = c.pick(((None, None), (None, None), ([0.5], [0.5]), ([0.1, 0.2], [1.0, 1.0]),
                        ([0.0], [0.0]), ([math.nan], [1.0]), ([0.5], None)))  # fmt: skip
    path = _as_file(proto.SerializeToString(), "graph.onnx")
    load_onnx(path, mean=mean, std=std, input_shape=input_shape)


def _seeds_onnx_graph() -> list[bytes]:
    # Each seed graph unedited (and the public ones, when there), then a few edit scripts.
    plain = [bytes([g, 0]) for g in range(len(_graphs()))]
    return plain + [bytes(range(s, s + 40)) for s in (0, 17, 101)]


# ------------------------------------------------------------- the list

TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("eps", _run_eps, _seeds_eps, tokens=(b"/", b"e", b"e-", b".", b"nan", b"inf",
                                                      b"_", b"1e400", b" ", b"-")),
        Target("methods", _run_methods, _seeds_methods, tokens=(b",", b"ibp", b"crown", b"-")),
        Target("lists", _run_lists, _seeds_lists, CLI_ERRORS,
               tokens=(b",", b"|", b"nan", b"inf", b"-", b"e", b"0", b" ")),
        Target("results_csv", _run_results_csv, _seeds_results_csv,
               tokens=(b",", b"\n", b'"', b"\r", b"8/255", b"best.pth", b"2024-", b"nan",
                       b"+01:00", b"Z", b"T", b"12:00:00", b"1e400", b"-0", b"\xef\xbb\xbf"),
               max_len=16384),
        Target("seed_config", _run_seed_config, _seeds_seed_config,
               tokens=(b'"eps"', b'"data"', b'"seed"', b"{", b"}", b":", b",", b"1e400",
                       b"NaN", b"0.0313725490196078431372549019607843", b'"model"'),
               max_len=4096),
        Target("checkpoint_file", _run_checkpoint_file, _seeds_checkpoint_file, max_len=1 << 20),
        Target("checkpoint_object", _run_checkpoint_object, _seeds_checkpoint_object,
               max_len=256),
        Target("onnx_file", _run_onnx_file, _seeds_onnx_file, max_len=3 << 20),
        Target("onnx_graph", _run_onnx_graph, _seeds_onnx_graph, max_len=256),
    )
}  # fmt: skip


# ------------------------------------------------------------- a mutator without atheris

_INTERESTING = (0, 1, 0x7F, 0x80, 0xFF, ord("0"), ord("9"), ord("-"), ord("."), ord(" "))


def mutate(data: bytes, rng: random.Random, tokens: Sequence[bytes] = (),
           others: Sequence[bytes] = ()) -> bytes:  # fmt: skip
    """One to four random byte-level edits of ``data`` (deterministic given ``rng``)."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(8)
        at = rng.randrange(len(out) + 1)
        if op == 0 and out:
            out[min(at, len(out) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1 and out:
            out[min(at, len(out) - 1)] = rng.choice(_INTERESTING)
        elif op == 2:
            out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
        elif op == 3 and out:
            del out[at : at + rng.randint(1, max(1, len(out) // 8))]
        elif op == 4 and out:
            start = rng.randrange(len(out))
            out[at:at] = out[start : start + rng.randint(1, 16)]
        elif op == 5 and tokens:
            out[at:at] = rng.choice(tokens)
        elif op == 6 and others:
            other = rng.choice(others)
            cut = rng.randrange(len(other) + 1)
            out = out[:at] + bytearray(other[cut:])
        elif op == 7:
            del out[at:]
    return bytes(out)


def random_inputs(
    target: Target, count: int, seed: int, pool: Sequence[bytes] | None = None
) -> Iterator[bytes]:
    """The seeds (or ``pool``), then ``count`` random mutations of them, from ``seed``."""
    rng = random.Random(seed)
    pool = list(target.seeds() if pool is None else pool)
    yield from pool
    for _ in range(count):
        yield mutate(rng.choice(pool), rng, target.tokens, pool)[: target.max_len]
