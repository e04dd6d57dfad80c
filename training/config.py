"""All settings of a training run, validated before any data or model is loaded.

:class:`TrainConfig` is what the CLI builds from a preset and flags, what
:func:`training.run.train` takes, and what every checkpoint stores (as plain values),
so that a resumed run can check it continues the same experiment.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from enum import Enum
from pathlib import Path
from typing import Any

from certify.bounds.methods import BoundMethod, parse_methods
from certify.core.choices import parse_choice
from certify.core.datasets import SPECS, Dataset, parse_dataset
from certify.core.errors import UsageError
from model_zoo.registry import canonical_name
from training.attack import AttackStart
from training.l1 import published_l1
from training.methods import Method
from training.objective import AttackObjective
from training.objectives import ENTRIES, OPTIONS, objective_from, published_objective
from training.schedulers import ScheduleKind, parse_schedule_kind

# Settings a resumed run may change without changing the experiment.
RESUMABLE_CHANGES = frozenset(
    {"resume", "device", "threads", "out_dir", "data_dir", "epochs", "eval_batch_size",
     "final_eval", "eval_methods", "pgd_steps", "test_samples", "results_csv"}
)  # fmt: skip


@dataclass(frozen=True)
class TrainConfig:
    dataset: Dataset
    data_dir: Path
    out_dir: Path
    arch: str = "cnn_4layer"
    method: Method = Method.FAST
    eps: float = 0.1
    # The eps the run is validated, selected and finally evaluated at (None: ``eps``):
    # papers often train at a larger eps than they test (the seed's MNIST at 0.4 for 0.3).
    eval_eps: float | None = None
    num_classes: int | None = None
    epochs: int = 20
    batch_size: int = 256
    lr: float = 5e-4
    lr_decay_factor: float = 0.2
    lr_milestones: tuple[int, ...] = ()
    grad_clip: float = 10.0
    grad_acc_steps: int = 1
    schedule: ScheduleKind = ScheduleKind.SMOOTHED
    schedule_start: int = 1
    schedule_length: int = 10
    tol: float = 0.5
    reg_lambda: float = 0.5
    min_reg_eps: float = 1e-6
    crop_padding: int = 0
    flip: bool = False
    num_train: int | None = None
    val_size: int = 500
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    resume: bool = False
    eval_batch_size: int = 256
    final_eval: bool = True
    eval_methods: tuple[BoundMethod, ...] = (BoundMethod.IBP,)
    pgd_steps: int = 20
    test_samples: int | None = None
    results_csv: Path | None = None
    model_options: dict[str, Any] = field(default_factory=dict)
    # Options of the methods with an attack (training.objectives): None takes the
    # paper's value for the data set and eps when the configuration is built.
    ibp_coef: float | None = None
    sabr_ratio: float | None = None
    taps_grad_scale: float | None = None
    taps_head_layers: int | None = None
    taps_steps: int | None = None
    attack_steps: int | None = None
    attack_step_size: float | None = None
    attack_restarts: int | None = None
    attack_start: AttackStart | None = None
    attack_eps_factor: float | None = None
    # The L1 penalty's coefficient (training.l1): None takes the method's paper's for the
    # data set and eps (0 for fast, vanilla and crown-ibp).
    l1: float | None = None

    def __post_init__(self) -> None:
        self._convert_types()
        canonical_name(self.arch)  # an unknown architecture fails before any data is read
        checks = [
            ("epochs", self.epochs >= 1, "give at least 1"),
            ("batch_size", self.batch_size >= 2, "give at least 2 (BatchNorm needs two)"),
            ("lr", self.lr > 0, "must be positive"),
            ("lr_decay_factor", 0 < self.lr_decay_factor <= 1, "must be in (0, 1]"),
            ("lr_milestones", all(m >= 1 for m in self.lr_milestones), "epochs count from 1"),
            ("grad_clip", self.grad_clip > 0, "must be positive"),
            ("grad_acc_steps", 1 <= self.grad_acc_steps <= self.batch_size // 2,
             "must be from 1 to half the batch size"),
            ("schedule_start", self.schedule_start >= 1, "epochs count from 1"),
            ("schedule_length", self.schedule_length >= 0, "must be >= 0"),
            ("tol", self.tol > 0, "must be positive"),
            ("reg_lambda", self.reg_lambda >= 0, "must be >= 0"),
            ("crop_padding", self.crop_padding >= 0, "must be >= 0"),
            ("val_size", self.val_size >= 0, "must be >= 0"),
            ("num_train", self.num_train is None or self.num_train >= 2, "give at least 2"),
            ("threads", self.threads is None or self.threads >= 1, "give at least 1"),
            ("eval_batch_size", self.eval_batch_size >= 1, "give at least 1"),
            ("pgd_steps", self.pgd_steps >= 0, "must be >= 0"),
            ("test_samples", self.test_samples is None or self.test_samples >= 1,
             "give at least 1"),
            ("eps", 0 < self.eps <= 1, "must be in (0, 1], e.g. 0.1 or 8/255"),
            ("eval_eps", self.eval_eps is None or 0 < self.eval_eps <= 1,
             "must be in (0, 1], e.g. 0.3 or 8/255"),
            ("min_reg_eps", self.min_reg_eps > 0, "must be positive"),
            ("seed", 0 <= self.seed < 2**63, "give a seed from 0 to 2**63 - 1"),
            ("l1", self.l1 is None or self.l1 >= 0, "must be >= 0"),
        ]  # fmt: skip
        for name, ok, reason in checks:
            if not ok:
                raise UsageError(f"{getattr(self, name)!r}: {reason}", param=name)
        self._resolve_attack()
        if self.l1 is None:
            object.__setattr__(self, "l1", published_l1(self.method, self.dataset, self.eps))

    def _resolve_attack(self) -> None:
        """A method with an attack takes the paper's options for the data set and eps
        where none is given, so that the run stores what it trains with; an option
        the method does not take is refused."""
        entry = ENTRIES.get(self.method)
        takes = entry.options if entry is not None else ()
        for name in OPTIONS:
            value = getattr(self, name)
            if value is not None and name not in takes:
                users = ", ".join(m.value for m, e in ENTRIES.items() if name in e.options)
                raise UsageError(
                    f"{value!r}: only {users} take it, not {self.method.value}", param=name
                )
        paper = published_objective(self.method, self.dataset, self.eps)
        if paper is None:
            return
        for name, value in paper.settings().items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)  # the dataclass is frozen
        self.objective()  # checks the values

    def objective(self) -> AttackObjective | None:
        """The loss of a method with an attack, with this run's options; None for the
        other methods."""
        values = {name: getattr(self, name) for name in OPTIONS}
        return objective_from(self.method, values, self.dataset, self.eps)

    def _convert_types(self) -> None:
        """Plain values (strings for paths and enums, lists for tuples) as the fields' types,
        so that Python callers and stored checkpoints may give either: parsed here once,
        the values travel typed."""
        converted: dict[str, Any] = {
            "dataset": parse_dataset(self.dataset),
            "data_dir": Path(self.data_dir).expanduser(),
            "out_dir": Path(self.out_dir).expanduser(),
            "method": _parse_method(self.method),
            "schedule": parse_schedule_kind(str(self.schedule)),
            "lr_milestones": tuple(self.lr_milestones),
            "eval_methods": _eval_methods(self.eval_methods),
        }
        if self.results_csv is not None:
            converted["results_csv"] = Path(self.results_csv).expanduser()
        if self.attack_start is not None:
            converted["attack_start"] = parse_choice(
                AttackStart, self.attack_start, param="attack_start", what="attack start"
            )
        for name, value in converted.items():
            object.__setattr__(self, name, value)  # the dataclass is frozen

    @property
    def test_eps(self) -> float:
        """The eps of validation, model selection and the final evaluation."""
        return self.eps if self.eval_eps is None else self.eval_eps

    @property
    def classes(self) -> int:
        return self.num_classes or SPECS[self.dataset].num_classes

    def with_changes(self, **changes: Any) -> TrainConfig:
        return replace(self, **changes)

    def to_plain(self) -> dict[str, Any]:
        """Every setting as plain values (for checkpoints and reports)."""
        plain = {}
        for key, value in asdict(self).items():
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = [v.value if isinstance(v, Enum) else v for v in value]
            elif isinstance(value, Enum):
                value = value.value
            plain[key] = value
        return plain

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from plain values (a checkpoint's, or CLI options), converting types."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UsageError(f"unknown training settings: {', '.join(unknown)}")
        v = dict(values)
        missing = [k for k in ("dataset", "data_dir", "out_dir") if v.get(k) is None]
        if missing:
            names = ", ".join(f"`{k}`" for k in missing)
            raise UsageError(f"give {names} (or a `preset` that sets the data set)")
        return cls(**v)

    def differences(self, stored: dict[str, Any]) -> list[str]:
        """Settings that differ from a stored run's, ignoring those a resume may change."""
        mine = self.to_plain()
        # A run stored before the L1 penalty existed trained without one.
        stored = {"l1": 0.0, **stored}
        names = [f.name for f in fields(self) if f.name not in RESUMABLE_CHANGES]
        return [n for n in names if n in stored and stored[n] != mine[n]]


def _parse_method(value: Any) -> Method:
    return parse_choice(Method, value, param="method", what="training method")


def _eval_methods(value: Any) -> tuple[BoundMethod, ...]:
    """The final evaluation's methods, in the order given (text or a sequence)."""
    try:
        names = value if isinstance(value, str) else [str(m) for m in value]
        return tuple(parse_methods(names))
    except UsageError as exc:
        raise UsageError(exc.reason, param="eval_methods") from None
