"""Schedules of the training radius eps, evaluated per batch.

Both schedules are pure functions of (epoch, batch), so a resumed run needs no
scheduler state: epochs count from 1 and batches within an epoch from 0, as in
auto_LiRPA's ``eps_scheduler`` whose values these reproduce.

:class:`EpsSchedule` has two shapes (:class:`ScheduleKind`), those of auto_LiRPA's
``SmoothedScheduler`` and ``LinearScheduler`` (whose names :func:`parse_schedule_kind`
accepts too). ``smoothed`` stays at zero until epoch ``start``, grows as a polynomial of
degree ``beta`` (4) during the first ``mid`` (a quarter) of the ramp and then linearly,
with a continuous slope, reaching ``max_eps`` after epoch ``start + length - 1``.
``linear`` grows linearly over ``length`` epochs, one step per epoch spread over its
batches. :func:`parse_scheduler_opts` reads auto_LiRPA's option string
(``start=2,length=80``), as the seed's scheduler_opts flag and config files give it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from certify.core.errors import UsageError


class ScheduleKind(StrEnum):
    SMOOTHED = "smoothed"
    LINEAR = "linear"


@dataclass(frozen=True)
class EpsSchedule:
    """eps of every training batch; see the module docstring for the two shapes."""

    max_eps: float
    start: int
    length: int
    epoch_length: int
    kind: ScheduleKind = ScheduleKind.SMOOTHED
    mid: float = 0.25
    beta: float = 4.0

    def __post_init__(self) -> None:
        if self.start < 1:
            raise UsageError(f"schedule start {self.start}: epochs count from 1, give >= 1")
        if self.length < 0:
            raise UsageError(f"schedule length {self.length}: give a number of epochs >= 0")
        if self.epoch_length < 1:
            raise UsageError("an epoch needs at least one batch: use fewer images per batch")
        if not 0.0 <= self.mid <= 1.0 or self.beta < 2.0:
            raise UsageError("smoothed schedule needs 0 <= mid <= 1 and beta >= 2")

    @property
    def last_warmup_epoch(self) -> int:
        """The last epoch of the ramp: the warmup regularizers apply up to this one."""
        return self.start + self.length - 1

    def eps(self, epoch: int, batch: int) -> float:
        """eps of batch ``batch`` (from 0) of epoch ``epoch`` (from 1)."""
        if self.kind is ScheduleKind.LINEAR:
            return self._linear(epoch, batch)
        return self._smoothed((epoch - 1) * self.epoch_length + batch)

    def eps_after(self, epoch: int) -> float:
        """eps of the last batch of ``epoch``; equals ``max_eps`` once the ramp is done."""
        return self.eps(epoch, self.epoch_length - 1)

    def _smoothed(self, step: int) -> float:
        init_step = (self.start - 1) * self.epoch_length
        final_step = (self.start + self.length - 1) * self.epoch_length
        if self.length == 0:
            return self.max_eps if step >= init_step else 0.0
        if step <= init_step:
            return 0.0
        if step >= final_step:
            return self.max_eps
        mid_step = int((final_step - init_step) * self.mid) + init_step
        if mid_step == init_step:
            # A ramp too short for a polynomial part (auto_LiRPA would divide by zero).
            return self.max_eps * (step - init_step) / (final_step - init_step)
        t = (mid_step - init_step) ** (self.beta - 1.0)
        # alpha makes the polynomial's slope at mid_step equal that of the linear part.
        alpha = self.max_eps / (
            (final_step - mid_step) * self.beta * t + (mid_step - init_step) * t
        )
        mid_value = alpha * (mid_step - init_step) ** self.beta
        if step < mid_step:
            return alpha * float(step - init_step) ** self.beta
        linear = mid_value + (self.max_eps - mid_value) * (step - mid_step) / (
            final_step - mid_step
        )
        return min(linear, self.max_eps)

    def _linear(self, epoch: int, batch: int) -> float:
        if epoch < self.start:
            return 0.0
        if self.length == 0:
            return self.max_eps
        step = self.max_eps / self.length
        k = epoch - self.start
        first = min(k * step, self.max_eps)
        last = min((k + 1) * step, self.max_eps)
        return first + (last - first) / self.epoch_length * batch


def parse_schedule_kind(name: str) -> ScheduleKind:
    """``smoothed``/``linear``, also accepting auto_LiRPA's class names."""
    key = name.strip().lower().removesuffix("scheduler")
    try:
        return ScheduleKind(key)
    except ValueError:
        raise UsageError(
            f"unknown eps schedule {name!r}: use smoothed or linear", param="schedule"
        ) from None


def parse_scheduler_opts(text: str) -> tuple[int, int]:
    """``(start, length)`` from auto_LiRPA's scheduler options, e.g. ``start=2,length=80``.

    Both keys are needed. The smoothed shape's ``mid`` and ``beta`` are accepted at the
    values :class:`EpsSchedule` uses (0.25 and 4), and refused otherwise.
    """
    fixed = {"mid": EpsSchedule.mid, "beta": EpsSchedule.beta}
    values: dict[str, int] = {}
    for item in text.replace(" ", "").split(","):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep:
            raise _opts_error(f"{item!r} is not key=value; write e.g. start=2,length=80")
        if key in fixed:
            if _number(value) != fixed[key]:
                raise _opts_error(
                    f"{key}={value}: certify's smoothed schedule has {key} {fixed[key]:g} only"
                )
        elif key in ("start", "length"):
            try:
                values[key] = int(value)
            except ValueError:
                raise _opts_error(f"{key}={value}: give a whole number of epochs") from None
        else:
            raise _opts_error(f"unknown option {key!r}: use start, length (mid, beta)")
    missing = [k for k in ("start", "length") if k not in values]
    if missing:
        raise _opts_error(f"{text!r} lacks {' and '.join(missing)}; write e.g. start=2,length=80")
    return values["start"], values["length"]


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _opts_error(reason: str) -> UsageError:
    return UsageError(reason, param="scheduler_opts")
