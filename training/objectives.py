"""Each training method with an attack, as one entry: the options it takes, its
published objective (the paper's settings, by data set and eps), and how to build the
objective from the options' values.

:class:`~training.config.TrainConfig` fills the options a run leaves unset from
:func:`published_objective` and builds the objective with :func:`objective_from`; the
epoch loop only sees an :class:`~training.objective.AttackObjective`. A new method is a
module with its objective and one entry here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from certify.core.choices import parse_choice
from certify.core.datasets import Dataset
from training import expressive, sabr, taps
from training.attack import AttackStart, TrainingAttack
from training.methods import Method
from training.objective import AttackObjective

_ATTACK = ("attack_steps", "attack_step_size", "attack_restarts", "attack_start")
_TAPS = ("taps_grad_scale", "taps_head_layers", "taps_steps")


@dataclass(frozen=True)
class Entry:
    """A method's options (TrainConfig's field names), its published objective, and how
    to build the objective from the options' values and the published one."""

    options: tuple[str, ...]
    published: Callable[[Dataset, float], AttackObjective]
    build: Callable[[Mapping[str, Any], Any], AttackObjective]


def _attack(values: Mapping[str, Any], published: TrainingAttack) -> TrainingAttack:
    """The input attack with the given steps, step size, restarts and start; the
    published attack's other settings (its step decay)."""
    start = parse_choice(AttackStart, values["attack_start"], param="attack_start",
                         what="start")  # fmt: skip
    return TrainingAttack(
        steps=int(values["attack_steps"]),
        step_size=float(values["attack_step_size"]),
        restarts=int(values["attack_restarts"]),
        random_start=start is AttackStart.RANDOM,
        decay_at=published.decay_at,
        decay_factor=published.decay_factor,
    )


def _expressive(method: Method) -> Entry:
    return Entry(
        options=("ibp_coef", *_ATTACK, "attack_eps_factor"),
        published=lambda dataset, eps: expressive.published_settings(method, dataset, eps),
        build=lambda values, paper: expressive.ExpressiveLoss(
            method,
            float(values["ibp_coef"]),
            _attack(values, paper.attack),
            float(values["attack_eps_factor"]),
        ),
    )


def _taps(values: Mapping[str, Any], paper: taps.TapsLoss) -> taps.TapsLoss:
    small_box = None
    if paper.small_box is not None:
        small_box = (float(values["sabr_ratio"]), _attack(values, paper.small_box[1]))
    return taps.TapsLoss(
        float(values["taps_grad_scale"]),
        int(values["taps_head_layers"]),
        int(values["taps_steps"]),
        small_box,
    )


ENTRIES: dict[Method, Entry] = {
    Method.MTL_IBP: _expressive(Method.MTL_IBP),
    Method.CC_IBP: _expressive(Method.CC_IBP),
    Method.EXP_IBP: _expressive(Method.EXP_IBP),
    Method.SABR: Entry(
        options=("sabr_ratio", *_ATTACK),
        published=sabr.published_settings,
        build=lambda values, paper: sabr.SabrLoss(
            float(values["sabr_ratio"]), _attack(values, paper.attack)
        ),
    ),
    Method.TAPS: Entry(options=_TAPS, published=taps.published_taps, build=_taps),
    Method.STAPS: Entry(
        options=(*_TAPS, "sabr_ratio", *_ATTACK), published=taps.published_staps, build=_taps
    ),
}

# Every option some method takes.
OPTIONS: tuple[str, ...] = tuple(dict.fromkeys(o for e in ENTRIES.values() for o in e.options))


def published_objective(method: Method, dataset: Dataset, eps: float) -> AttackObjective | None:
    """The paper's objective for ``method`` on ``dataset`` near ``eps``; None for a
    method without an attack."""
    entry = ENTRIES.get(method)
    return None if entry is None else entry.published(dataset, eps)


def objective_from(
    method: Method, values: Mapping[str, Any], dataset: Dataset, eps: float
) -> AttackObjective | None:
    """``method``'s objective with the given option ``values`` (all of its options
    set); None for a method without an attack."""
    entry = ENTRIES.get(method)
    if entry is None:
        return None
    return entry.build(values, entry.published(dataset, eps))
