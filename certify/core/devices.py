"""Choosing the device and the floating-point settings under which bounds are taken."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from enum import StrEnum

import torch

from certify.core.errors import UsageError


class DeviceChoice(StrEnum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


def resolve_device(choice: str | DeviceChoice) -> torch.device:
    """Turn ``auto``/``cpu``/``cuda`` (or ``cuda:N``) into a usable device."""
    text = choice.value if isinstance(choice, DeviceChoice) else str(choice).strip().lower()
    if text == DeviceChoice.AUTO.value:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == DeviceChoice.CPU.value:
        return torch.device("cpu")
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"{text}: no CUDA GPU is visible; use cpu or auto", param="device")
        device = torch.device(text)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(
                f"{text}: only {torch.cuda.device_count()} GPU(s) visible; use cuda:0 or auto",
                param="device",
            )
        return device
    raise UsageError(f"unknown device {choice!r}: use auto, cpu or cuda", param="device")


def describe_device(device: torch.device) -> str:
    """A short human-readable name of the device, for reports."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


@contextlib.contextmanager
def exact_float32() -> Iterator[None]:
    """Turn TF32 off for matrix products and convolutions while bounds are computed.

    TF32 rounds inputs to 10 mantissa bits, which can move a bound by far more than
    float32 rounding; a certified bound must not depend on that.
    """
    matmul = torch.backends.cuda.matmul
    cudnn = torch.backends.cudnn
    saved = (matmul.allow_tf32, cudnn.allow_tf32, torch.get_float32_matmul_precision())
    matmul.allow_tf32 = False
    cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = saved[0], saved[1]
        torch.set_float32_matmul_precision(saved[2])
