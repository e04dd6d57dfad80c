"""Typed errors raised by the library.

Every error here describes a problem the user can act on; its message says what is
wrong and how to fix it, in one line. An error about one argument carries that
argument's Python name in ``param``, so that a caller can point at it: the CLI maps it
to the flag and exits as click does for its own usage errors. Only the CLI turns
errors into messages and exit codes, so library code stays usable from Python.
"""

from __future__ import annotations

from pathlib import Path


class CertifyError(Exception):
    """Base class: a problem with the user's input or environment.

    ``param``, when given, is the name of the argument at fault (``"batch_size"``); the
    message then says what is wrong with its value and is shown after the name.
    """

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.reason = message
        self.param = param

    def __str__(self) -> str:
        return f"{self.param}: {self.reason}" if self.param else self.reason


class DataError(CertifyError):
    """A data set is missing, unknown or unreadable.

    ``download``, for a data set that is missing, is ``(data set, data folder)``: what
    :func:`certify.data.download_dataset` would fetch, for a caller to offer it."""

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        download: tuple[str, Path] | None = None,
    ) -> None:
        super().__init__(message, param=param)
        self.download = download


class ModelError(CertifyError):
    """A model or architecture is unknown, or cannot be built or converted."""


class CheckpointError(CertifyError):
    """A checkpoint file is missing, corrupt or does not fit the architecture."""


class UsageError(CertifyError):
    """Arguments that are invalid or contradict each other (eps, devices, paths)."""


class SoundnessError(CertifyError):
    """A consistency check of the results failed: a verified sample was attacked, or
    error rates are out of order. This is a bug, never a result to report.

    ``result``, set by the evaluation that found it, is what that evaluation measured
    (a :class:`certify.pipeline.result.EvalResult`), so that its per-image file can go
    with the bug report."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.result: object | None = None


class TrainingDivergedError(CertifyError):
    """The loss or the gradients became NaN or infinite during training."""


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The first line of a low-level exception's message (its type name when empty), for
    the one-line messages of the errors above; cut to ``limit`` characters if given."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    return text[:limit] if limit is not None else text
