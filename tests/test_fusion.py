"""BatchNorm folding: same function, no BN left, and the original model untouched."""

import pytest
import torch
from torch import nn

from certify.bounds.fusion import fold_batchnorm
from model_zoo import create_model, list_models
from model_zoo.normalization import NormalizedModel


def _bn_count(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@pytest.mark.parametrize("name", list_models())
def test_folded_model_computes_the_same_function(name: str) -> None:
    model = NormalizedModel(create_model(name, 3, 32, 10), [0.5] * 3, [0.2] * 3)
    model.train()
    with torch.no_grad():
        model(torch.rand(8, 3, 32, 32))  # non-trivial running statistics
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batchnorm(model)
    assert _bn_count(folded) == 0 < _bn_count(model)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_untraceable_model_is_returned_unchanged() -> None:
    class Dynamic(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.bn = nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent control flow defeats tracing
                return self.bn(self.conv(x))
            return self.conv(x)

    model = Dynamic()
    assert fold_batchnorm(model) is model
