"""Step 4 of loading an ONNX file: :func:`load_onnx` runs the steps and wraps the result.

This module decides the image layout and wraps the converted network so that batches of
images in the data set's layout reach it in the layout it declares; step 5
(:mod:`~model_zoo.onnx.check`) then compares the wrapped network with onnxruntime.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from certify.core.errors import ModelError, UsageError, first_line
from model_zoo.normalization import NormalizedModel
from model_zoo.onnx.check import check_conversion, load_onnxruntime
from model_zoo.onnx.convert import convert, lower_opset, raise_on_unsupported
from model_zoo.onnx.file import io_shapes, read_model
from model_zoo.onnx.graph import normalize_graph
from model_zoo.onnx.onnx2torch_import import load_onnx2torch
from model_zoo.onnx.proto import Shape, default_opset

__all__ = ["LoadedOnnx", "OnnxImageModel", "load_onnx"]


@dataclass
class LoadedOnnx:
    """A converted ONNX model and what was learnt about it while loading."""

    model: nn.Module
    """Takes N x C x H x W pixel images in [0, 1]; normalizes inside if mean/std given."""
    input_shape: tuple[int, int, int]
    """(C, H, W) of the images that :attr:`model` takes, as the data set has them."""
    onnx_input_shape: Shape
    """The input shape the ONNX graph declares, batch dimension included."""
    onnx_output_shape: Shape
    channels_last: bool
    """Whether the graph takes images as N x H x W x C (the wrapper permutes)."""
    opset: int
    """The opset of the file as written."""
    converted_opset: int
    """The opset the graph was lowered to before conversion (equal if untouched)."""
    producer: str
    path: Path
    conversion_difference: float
    """The largest difference of a logit from onnxruntime's on the probe images (see
    :func:`~model_zoo.onnx.check.check_conversion`)."""
    rewrites: list[str] = field(default_factory=list)
    """One line per graph rewrite that was applied, for logs."""

    @property
    def num_classes(self) -> int | None:
        last = self.onnx_output_shape[-1] if self.onnx_output_shape else None
        return last if isinstance(last, int) else None


class OnnxImageModel(nn.Module):
    """Feeds N x C x H x W images to a converted graph in its declared per-sample shape.

    Uses only permute and reshape, decided once here, so auto_LiRPA can trace it.
    """

    def __init__(
        self,
        model: nn.Module,
        input_shape: tuple[int, int, int],
        sample_shape: tuple[int, ...],
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.sample_shape = tuple(sample_shape)
        self.channels_last = channels_last
        c, h, w = input_shape
        arrived = (h, w, c) if channels_last else (c, h, w)
        self._reshape = self.sample_shape != arrived

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.permute(0, 2, 3, 1)
        if self._reshape:
            # -1, not x.shape[0]: auto_LiRPA traces with one image and would keep the 1.
            x = x.reshape(-1, *self.sample_shape)
        return self.model(x)

    def extra_repr(self) -> str:
        return f"sample_shape={self.sample_shape}, channels_last={self.channels_last}"


def load_onnx(
    path: str | Path,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    input_shape: tuple[int, int, int] | None = None,
    probes: torch.Tensor | None = None,
) -> LoadedOnnx:
    """Load, check, rewrite and convert the ONNX classifier at ``path``, and check the
    conversion against onnxruntime.

    ``input_shape`` is the data set's (C, H, W); without it the graph's own 4-d input
    shape is taken as N x C x H x W. ``mean``/``std`` are for models that were trained
    on normalized inputs but do not normalize themselves.

    onnxruntime runs the graph as read from the file (before the rewrites) on probe
    images, normalized with ``mean``/``std`` and in the graph's declared layout, and the
    wrapped torch module must give the same logits
    (:func:`~model_zoo.onnx.check.check_conversion`), on ``probes`` too when given
    (images of the data set at hand: a converter bug that shows only on real images must
    not go unseen); the largest difference is kept as
    :attr:`LoadedOnnx.conversion_difference`.

    Raises :class:`CheckpointError` for a missing, unreadable or unsafe file,
    :class:`ModelError` for a graph that is invalid, cannot be converted, or converts
    into a module that computes something else than onnxruntime (or when onnxruntime is
    missing), and :class:`UsageError` for mean/std that do not fit.
    """
    path = Path(path)
    load_onnxruntime()  # before the work it would check
    proto = read_model(path)
    opset = default_opset(proto)
    producer = f"{proto.producer_name} {proto.producer_version}".strip() or "unknown"
    declared_in, declared_out = io_shapes(proto)
    shape, channels_last = _resolve_layout(declared_in, input_shape)
    _check_normalization(mean, std, shape[0])
    # onnxruntime checks the conversion against the graph as read; the rewrites edit the
    # proto in place. Protobuf cannot serialize 2 GiB or more: then it reads the file.
    original: bytes | Path = path if proto.ByteSize() >= 2**31 else proto.SerializeToString()
    rewrites: list[str] = []
    proto = normalize_graph(proto, rewrites)
    onnx2torch = load_onnx2torch()
    try:
        proto = lower_opset(proto, onnx2torch, rewrites)
        raise_on_unsupported(proto, onnx2torch)
        network = convert(proto, onnx2torch)
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}") from None
    sample_shape = tuple(int(d) for d in declared_in[1:])
    model: nn.Module = OnnxImageModel(network, shape, sample_shape, channels_last)
    if mean is not None and std is not None:
        model = NormalizedModel(model, mean, std)
    model.eval()
    _check_batching(model, shape, path)
    try:
        difference = check_conversion(
            model, original, shape, mean=mean, std=std, channels_last=channels_last,
            images=probes,
        )  # fmt: skip
    except ModelError as exc:
        raise ModelError(f"{path}: {exc}") from None
    return LoadedOnnx(
        model=model,
        input_shape=shape,
        onnx_input_shape=declared_in,
        onnx_output_shape=declared_out,
        channels_last=channels_last,
        opset=opset,
        converted_opset=default_opset(proto),
        producer=producer,
        path=path,
        conversion_difference=difference,
        rewrites=rewrites,
    )


def _check_normalization(
    mean: Sequence[float] | None, std: Sequence[float] | None, channels: int
) -> None:
    if (mean is None) != (std is None):
        raise UsageError("give both mean and std for an ONNX model, or neither")
    if mean is None or std is None:
        return
    if len(mean) != len(std) or len(mean) not in (1, channels):
        raise UsageError(
            f"mean and std need 1 or {channels} values each, got {len(mean)} and {len(std)}"
        )
    if any(s <= 0 for s in std):
        raise UsageError(f"every std must be positive, got {list(std)}")


def _resolve_layout(
    declared: Shape, input_shape: tuple[int, int, int] | None
) -> tuple[tuple[int, int, int], bool]:
    """The (C, H, W) the wrapper takes, and whether the graph wants channels last."""
    sample = declared[1:]
    if len(declared) < 2:
        raise ModelError(
            f"the ONNX input shape {declared} has no batch dimension: export the model with one"
        )
    if not all(isinstance(d, int) and d > 0 for d in sample):
        raise ModelError(
            f"the ONNX input shape {declared} does not fix the shape of one sample: "
            "export the model with a static image size"
        )
    if input_shape is None:
        if len(sample) != 3:
            raise ModelError(
                f"the ONNX model takes inputs of shape {declared}, not images N x C x H x W: "
                "give the data set's input shape"
            )
        return (int(sample[0]), int(sample[1]), int(sample[2])), False
    c, h, w = (int(d) for d in input_shape)
    if tuple(sample) == (c, h, w):
        return (c, h, w), False
    if tuple(sample) == (h, w, c):
        return (c, h, w), True
    if math.prod(int(d) for d in sample) == c * h * w:
        return (c, h, w), False
    raise ModelError(
        f"the ONNX model takes inputs of shape {declared}, which do not hold one "
        f"{c}x{h}x{w} image of the data set"
    )


def _check_batching(model: nn.Module, shape: tuple[int, int, int], path: Path) -> None:
    """Run two images together and one alone: the outputs must agree per image.

    This catches batch sizes fixed inside the graph that the rewrites did not free.
    """
    images = torch.rand((2, *shape), generator=torch.Generator().manual_seed(0))
    hint = "its graph seems to fix the batch size; export it with a dynamic batch dimension"
    try:
        with torch.no_grad():
            first = model(images[:1])
    except Exception as exc:  # onnx2torch's modules also fail with IndexError, ValueError ...
        raise ModelError(
            f"{path}: the converted model fails on an image of the input shape it declares "
            f"({first_line(exc, limit=160)}): the graph is inconsistent; re-export the model"
        ) from None
    try:
        with torch.no_grad():
            both = model(images)
    except Exception as exc:
        raise ModelError(
            f"{path}: the converted model fails on a batch of 2 images "
            f"({first_line(exc, limit=160)}): " + hint
        ) from None
    agree = (
        isinstance(both, torch.Tensor)
        and isinstance(first, torch.Tensor)
        and both.ndim >= 1
        and both.shape[0] == 2
        and both.shape[1:] == first.shape[1:]
        # as floats: a graph can end in a comparison, and allclose takes no booleans
        and torch.allclose(both[:1].double(), first.double(), rtol=1e-4, atol=1e-5)
    )
    if not agree:
        raise ModelError(f"{path}: the converted model mixes up the images of a batch: " + hint)
