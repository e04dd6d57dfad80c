"""Step 5 of loading an ONNX file: checking the conversion against onnxruntime.

Steps 2-4 rewrite the graph, convert it with onnx2torch and wrap it; a bug in any of
them would silently give verified numbers for a different network. So onnxruntime runs
the graph as it was read from the file (before the rewrites, on the CPU) on probe images
and :func:`check_conversion` compares its logits with those of the torch module that
certify evaluates. The probes are corners of the pixel box [0, 1] (all zeros, all ones,
random 0/1 images), where ReLU networks reach their extreme activations, and random
interior images; callers can add their own, such as the first images of the data.

onnxruntime stays independent of the wrapper: it gets the images normalized with the
given mean/std in numpy and laid out as the file declares (flattened, channels last, in
groups of a fixed batch size), while the torch module gets N x C x H x W pixel images.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import torch
from torch import nn

from certify.core.errors import ModelError, UsageError, first_line

__all__ = ["RELATIVE_TOLERANCE", "check_conversion", "load_onnxruntime", "probe_images"]

RELATIVE_TOLERANCE = 1e-4
"""A conversion is refused when some logit differs from onnxruntime's by more than
``RELATIVE_TOLERANCE * (1 + max |logit|)``, the maximum taken over onnxruntime's logits
of all probes. Both sides compute in float32 (relative rounding 6e-8) but sum in other
orders with other kernels, which costs up to about 1e-6 of the logits' scale after a few
dozen layers; 1e-4 leaves a hundredfold margin for deeper networks. A converter bug
(a wrong weight, padding, layout or activation) moves logits by a percent of their
scale or more. The 1 keeps the bound absolute for networks with tiny logits."""

_TORCH_BATCH = 256  # images per forward pass of the torch module


@dataclass(frozen=True)
class _Probe:
    images: torch.Tensor
    labels: list[str]
    """What each image is, for the error message ("a box corner")."""


def probe_images(
    input_shape: Sequence[int], images: torch.Tensor | None = None, seed: int = 0
) -> tuple[torch.Tensor, list[str]]:
    """The N x C x H x W probes :func:`check_conversion` uses, and a label for each.

    Eight fixed images (all zeros, all ones, two random box corners, four uniform random
    images, from ``seed``), then ``images`` if given (labelled "given image 0", ...).
    """
    probe = _probes(tuple(int(d) for d in input_shape), images, seed)
    return probe.images, probe.labels


def check_conversion(
    model: nn.Module,
    original: onnx.ModelProto | bytes | str | Path,
    input_shape: Sequence[int],
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    channels_last: bool | None = None,
    images: torch.Tensor | None = None,
    tolerance: float = RELATIVE_TOLERANCE,
) -> float:
    """Compare ``model`` with onnxruntime running ``original``; the largest difference.

    ``model`` takes N x C x H x W pixel images in [0, 1] of ``input_shape`` (C, H, W),
    normalizing them with ``mean``/``std`` inside if those are given, as the model of
    :func:`~model_zoo.onnx.loading.load_onnx` does; ``original`` is the ONNX graph as
    read from the file (a proto, its serialized bytes or the file's path). The graph gets
    the images normalized and in the layout it declares: channels last when
    ``channels_last`` (``None``: when its per-sample shape is H x W x C and not
    C x H x W), otherwise flattened into its shape. ``images`` are probed besides the
    fixed probes of :func:`probe_images`.

    Returns the largest absolute difference of a logit. Raises :class:`ModelError`
    when it exceeds ``tolerance * (1 + max |logit|)`` (see :data:`RELATIVE_TOLERANCE`),
    when onnxruntime is missing or cannot run the graph, or when the outputs do not
    match in shape; :class:`UsageError` for ``images`` of another shape.
    """
    shape = tuple(int(d) for d in input_shape)
    probe = _probes(shape, images, seed=0)
    session = _session(original)
    expected = _run_onnxruntime(session, probe.images, shape, mean, std, channels_last)
    got = _run_torch(model, probe.images)
    if got.shape[0] != expected.shape[0] or got[0].size != expected[0].size:
        raise ModelError(
            f"the converted model gives outputs of shape {tuple(got.shape)} where "
            f"onnxruntime gives {tuple(expected.shape)} for the same images"
        )
    got, expected = got.reshape(len(got), -1), expected.reshape(len(expected), -1)
    difference = _differences(got, expected)
    worst = np.unravel_index(int(np.argmax(difference)), difference.shape)
    largest = float(difference[worst])
    finite = np.abs(expected[np.isfinite(expected)])
    scale = 1.0 + (float(finite.max()) if finite.size else 0.0)
    if not largest <= tolerance * scale:
        image, logit = int(worst[0]), int(worst[1])
        raise ModelError(
            f"the converted model differs from onnxruntime by {largest:.1e} (logit {logit} "
            f"of {probe.labels[image]}), more than the {tolerance * scale:.1e} allowed for "
            f"logits up to {scale - 1:.3g}: the conversion computes another network; "
            "re-export the model (another opset or exporter) or report the file"
        )
    return largest


def _probes(shape: tuple[int, ...], images: torch.Tensor | None, seed: int) -> _Probe:
    generator = torch.Generator().manual_seed(seed)
    corners = (torch.rand((2, *shape), generator=generator) < 0.5).float()
    interior = torch.rand((4, *shape), generator=generator)
    fixed = torch.cat([torch.zeros((1, *shape)), torch.ones((1, *shape)), corners, interior])
    labels = ["the all-zeros image", "the all-ones image"]
    labels += ["a box corner"] * len(corners) + ["a random image"] * len(interior)
    if images is None:
        return _Probe(fixed, labels)
    if not isinstance(images, torch.Tensor) or tuple(images.shape[1:]) != shape:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise UsageError(f"probe images must be N x {' x '.join(map(str, shape))}, got {got}")
    extra = images.detach().to("cpu", torch.float32)
    labels += [f"given image {i}" for i in range(len(extra))]
    return _Probe(torch.cat([fixed, extra]), labels)


def load_onnxruntime() -> ModuleType:
    """The onnxruntime module, imported on first use; :class:`ModelError` without it."""
    try:
        import onnxruntime
    except ImportError:
        raise ModelError("onnxruntime is not installed; run ./install.sh") from None
    return onnxruntime


def _session(original: onnx.ModelProto | bytes | str | Path) -> object:
    """One onnxruntime session on the CPU for the graph, optimizations off."""
    onnxruntime = load_onnxruntime()
    options = onnxruntime.SessionOptions()
    # The graph as written: no fusions or layout changes between it and the reference.
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3  # errors only: no notes on unused initializers
    if isinstance(original, onnx.ModelProto):
        original = original.SerializeToString()
    elif isinstance(original, Path):
        original = str(original)
    try:
        return onnxruntime.InferenceSession(
            original, sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime's errors derive from Exception only
        raise ModelError(
            f"onnxruntime cannot load the ONNX model to check its conversion: {first_line(exc)}"
        ) from None


def _run_onnxruntime(
    session: object,
    pixels: torch.Tensor,
    shape: tuple[int, ...],
    mean: Sequence[float] | None,
    std: Sequence[float] | None,
    channels_last: bool | None,
) -> np.ndarray:
    """The graph's outputs for the pixel images, fed in its declared layout."""
    inputs = session.get_inputs()  # type: ignore[attr-defined]
    if len(inputs) != 1:
        raise ModelError(f"onnxruntime sees {len(inputs)} inputs of the ONNX graph, not one")
    declared = list(inputs[0].shape)
    x = pixels.numpy().astype(np.float32)
    if mean is not None and std is not None:
        # One value or one per channel, as Normalize takes them.
        m = np.asarray(mean, np.float32).reshape(1, -1, 1, 1)
        x = (x - m) / np.asarray(std, np.float32).reshape(1, -1, 1, 1)
    sample = declared[1:]
    if channels_last is None:
        c, h, w = shape
        channels_last = sample == [h, w, c] and sample != [c, h, w]
    if channels_last:
        x = x.transpose(0, 2, 3, 1)
    x = np.ascontiguousarray(x.reshape(len(x), *sample))
    batch = declared[0] if isinstance(declared[0], int) and declared[0] > 0 else len(x)
    outputs = []
    for start in range(0, len(x), batch):
        group = x[start : start + batch]
        padding = batch - len(group)
        if padding:  # a batch size fixed above 1: fill it with copies of the last image
            group = np.concatenate([group, np.repeat(group[-1:], padding, axis=0)])
        try:
            out = session.run(None, {inputs[0].name: group})[0]  # type: ignore[attr-defined]
        except Exception as exc:  # onnxruntime's errors derive from Exception only
            raise ModelError(
                f"onnxruntime cannot run the ONNX model to check its conversion: {first_line(exc)}"
            ) from None
        out = np.asarray(out, np.float32)
        outputs.append(out[: len(out) - padding] if padding else out)
    return np.concatenate(outputs)


def _run_torch(model: nn.Module, images: torch.Tensor) -> np.ndarray:
    parameter = next(iter(model.parameters()), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    outputs = []
    try:
        with torch.no_grad():
            for start in range(0, len(images), _TORCH_BATCH):
                batch = images[start : start + _TORCH_BATCH].to(device)
                outputs.append(model(batch).detach().to("cpu", torch.float32))
    except Exception as exc:  # onnx2torch's modules also fail with IndexError, ValueError ...
        raise ModelError(
            f"the converted model fails on the probe images: {first_line(exc)}"
        ) from None
    return torch.cat(outputs).numpy()


def _differences(got: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """|got - expected| per logit; 0 where both are the same non-finite value."""
    with np.errstate(invalid="ignore"):
        difference = np.abs(got.astype(np.float64) - expected.astype(np.float64))
    same = (got == expected) | (np.isnan(got) & np.isnan(expected))
    difference[same] = 0.0
    difference[np.isnan(difference)] = np.inf
    return difference
