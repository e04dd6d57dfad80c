"""An exception raised inside auto_LiRPA while bounding reaches the user as one line that
names the method and the operator, never as a traceback."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from certify.bounds.lirpa_compat import load_auto_lirpa
from certify.bounds.margins import BoundMethod, MarginBounder
from certify.cli import cli
from certify.core.errors import ModelError
from model_zoo import create_model


@pytest.fixture
def broken_relu(monkeypatch):
    lirpa = load_auto_lirpa()
    relu = lirpa.operators.BoundRelu

    def fail(self, *args, **kwargs):
        raise IndexError("tuple index out of range")

    monkeypatch.setattr(relu, "bound_backward", fail)


@pytest.mark.parametrize("method", [BoundMethod.CROWN, BoundMethod.ALPHA_CROWN])
def test_a_failure_inside_auto_lirpa_names_the_method_and_operator(method, broken_relu) -> None:
    model = create_model("cnn_4layer", 1, 28, 10, width=4, linear_size=16).eval()
    bounder = MarginBounder(model, (1, 28, 28), torch.device("cpu"))
    images, labels = torch.rand(2, 1, 28, 28), torch.tensor([0, 1])
    with pytest.raises(ModelError) as info:
        bounder.lower_bounds(images, labels, 0.01, method)
    message = str(info.value)
    assert message.startswith(f"{method.value} failed inside auto_LiRPA at BoundRelu (")
    assert "IndexError: tuple index out of range" in message and "\n" not in message
    # IBP by the hand-written pass does not go through the broken operator.
    assert bounder.lower_bounds(images, labels, 0.01, BoundMethod.IBP).shape == (2, 9)


def test_the_cli_shows_one_line(broken_relu) -> None:
    result = CliRunner().invoke(
        cli, ["eval", "--num-samples", "40", "--methods", "crown", "--every-method",
              "--pgd-steps", "1"]
    )  # fmt: skip
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "crown failed inside auto_LiRPA at BoundRelu" in lines[0]
    assert "--crown-batch-size" in lines[0]
