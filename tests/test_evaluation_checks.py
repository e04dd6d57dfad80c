"""The consistency checks that stop a report when bounds or attacks disagree."""

import pytest
import torch

from certify.bounds.margins import BoundMethod
from certify.core.errors import SoundnessError
from certify.evaluation.outcomes import SampleOutcomes, check_consistency, summarize


def _outcomes(correct, robust, ibp_margin, crown_margin) -> SampleOutcomes:
    labels = torch.zeros(len(correct), dtype=torch.long)
    return SampleOutcomes(
        indices=torch.arange(100, 100 + len(correct)),
        labels=labels,
        clean_pred=torch.where(torch.tensor(correct), 0, 1),
        pgd_robust=torch.tensor(robust),
        margin_lower={
            BoundMethod.IBP: torch.tensor(ibp_margin),
            BoundMethod.CROWN: torch.tensor(crown_margin),
        },
    )


def test_consistent_outcomes_pass_and_errors_are_ordered() -> None:
    out = _outcomes(
        [True, True, True, False],
        [True, True, False, False],
        [0.5, -0.1, -1.0, -2.0],
        [0.6, 0.2, -0.5, -1.0],
    )
    check_consistency(out)
    s = summarize(out, {})
    assert (s.clean_error, s.pgd_error) == (0.25, 0.5)
    assert s.verified_error == {BoundMethod.IBP: 0.75, BoundMethod.CROWN: 0.5}
    assert s.best_verified_error == 0.5
    assert s.clean_error <= s.pgd_error <= min(s.verified_error.values())


def test_verified_but_attacked_sample_is_named() -> None:
    out = _outcomes([True, True], [True, False], [0.1, 0.3], [0.1, -0.3])
    with pytest.raises(SoundnessError, match="sample 101 is verified by ibp but PGD attacked it"):
        check_consistency(out)


def test_verified_but_misclassified_sample_is_named() -> None:
    out = _outcomes([True, False], [True, False], [0.1, -0.3], [0.1, 0.2])
    with pytest.raises(SoundnessError, match="sample 101 is verified by crown but misclassified"):
        check_consistency(out)


def test_best_counts_a_sample_verified_by_any_method() -> None:
    out = _outcomes([True, True], [True, True], [0.1, -0.3], [-0.1, 0.2])
    assert summarize(out, {}).best_verified_error == 0.0
