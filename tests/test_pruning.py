"""Removing units that are dead on every image: the pruned twin computes the same
function on [0, 1] and gives the same bounds, with fewer channels."""

import pytest
import torch
from torch import nn

from certify.bounds.fusion import fold_batchnorm
from certify.bounds.interval import IntervalNetwork
from certify.bounds.lirpa_compat import load_auto_lirpa
from certify.bounds.margins import BoundMethod, MarginBounder, margin_matrix
from certify.bounds.pruning import prune_dead_units
from certify.pipeline.embedded import EMBEDDED_MODEL
from model_zoo import list_models
from model_zoo.checkpoint import load_checkpoint
from tests.test_eval_ibp import _registered

CPU = torch.device("cpu")


def _chain_with_dead_units() -> nn.Sequential:
    """Conv -> ReLU -> Conv -> ReLU -> Flatten -> Linear -> ReLU -> Linear on 1x14x14,
    with units made dead on the whole pixel box by large negative biases, and one unit
    that is zero at most, which must stay (it can be positive by rounding)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 7 * 7, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )
    with torch.no_grad():
        model[0].bias[[1, 4]] = -20.0
        model[2].bias[[0, 5, 6]] = -50.0
        model[5].bias[[3, 7, 30]] = -100.0
        # Channel 2 of the first layer: weights <= 0, bias 1e-7, so its largest value
        # over the box is 1e-7 at the black image.
        model[0].weight[2] = -model[0].weight[2].abs()
        model[0].bias[2] = 1e-7
    return model.eval()


def _images(n: int, shape: tuple[int, ...], seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    corners = torch.randint(0, 2, (n, *shape), generator=generator).float()
    inside = torch.rand(n, *shape, generator=generator)
    return torch.cat([torch.zeros(1, *shape), torch.ones(1, *shape), corners, inside])


def test_dead_channels_and_features_are_removed_and_the_rest_kept() -> None:
    model = _chain_with_dead_units()
    pruned = prune_dead_units(model, (1, 14, 14))
    assert pruned is not model
    assert pruned[0].weight.shape == (6, 1, 3, 3)  # channels 1 and 4 gone, 2 kept
    assert pruned[2].weight.shape == (5, 6, 3, 3)
    assert pruned[5].weight.shape == (29, 5 * 49)
    assert pruned[7].weight.shape == (10, 29)
    # The model itself is untouched.
    assert model[0].weight.shape == (8, 1, 3, 3)


def test_pruned_model_computes_the_same_function_on_the_pixel_box() -> None:
    model = _chain_with_dead_units()
    pruned = prune_dead_units(model, (1, 14, 14))
    x = _images(64, (1, 14, 14))
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), model(x), rtol=0.0, atol=1e-5)


@pytest.mark.parametrize("eps", [0.0, 0.02, 0.2])
def test_pruned_model_has_the_same_interval_bounds(eps: float) -> None:
    model = _chain_with_dead_units()
    pruned = prune_dead_units(model, (1, 14, 14))
    x = _images(16, (1, 14, 14))
    spec = margin_matrix(torch.arange(len(x)) % 10, 10)
    full = IntervalNetwork(model).bounds_only(x, eps, spec)
    cut = IntervalNetwork(pruned).bounds_only(x, eps, spec)
    for ours, theirs in zip(cut, full, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0.0, atol=1e-4)


def _lirpa_lower(model: nn.Module, x: torch.Tensor, eps: float, method: str) -> torch.Tensor:
    lirpa = load_auto_lirpa()
    module = lirpa.BoundedModule(model, torch.zeros(1, *x.shape[1:]), device=CPU)
    ptb = lirpa.PerturbationLpNorm(
        norm=float("inf"), eps=eps, x_L=(x - eps).clamp(0, 1), x_U=(x + eps).clamp(0, 1)
    )
    spec = margin_matrix(torch.arange(len(x)) % 10, 10)
    with torch.no_grad():
        lower, _ = module.compute_bounds(
            x=(lirpa.BoundedTensor(x, ptb),), C=spec, method=method, bound_upper=False
        )
    return lower


def test_pruned_model_gives_the_same_linear_relaxation_bounds() -> None:
    model = _chain_with_dead_units()
    pruned = prune_dead_units(model, (1, 14, 14))
    x = _images(8, (1, 14, 14))
    # With IBP intermediate bounds a unit dead on the whole box is dead on every
    # smaller box (interval arithmetic is monotone), so CROWN-IBP cannot change.
    torch.testing.assert_close(
        _lirpa_lower(pruned, x, 0.05, "CROWN-IBP"),
        _lirpa_lower(model, x, 0.05, "CROWN-IBP"),
        rtol=0.0,
        atol=1e-4,
    )
    # CROWN's own intermediate bounds may leave such a unit looking unstable in the
    # full model; without it the bounds can only be as tight or tighter.
    cut = _lirpa_lower(pruned, x, 0.05, "CROWN")
    full = _lirpa_lower(model, x, 0.05, "CROWN")
    assert (cut >= full - 1e-4).all()


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_keeps_its_function_and_bounds(name: str) -> None:
    """With a quarter of every layer's units made dead, each architecture loses
    parameters (residual networks in the chains inside their blocks) and keeps its
    outputs and its interval bounds."""
    folded = fold_batchnorm(_registered(name, 3, 32))
    with torch.no_grad():
        for layer in folded.modules():
            if isinstance(layer, nn.Conv2d | nn.Linear) and layer.bias is not None:
                layer.bias[: layer.bias.numel() // 4] = -1e4
    pruned = prune_dead_units(folded, (3, 32, 32))
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in folded.parameters())
    x = _images(4, (3, 32, 32))
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), folded(x), rtol=0.0, atol=1e-4)
    spec = margin_matrix(torch.arange(len(x)) % 10, 10)
    cut = IntervalNetwork(pruned).bounds_only(x, 1 / 255, spec)
    full = IntervalNetwork(folded).bounds_only(x, 1 / 255, spec)
    for ours, theirs in zip(cut, full, strict=True):
        scale = 1.0 + theirs.abs().max().item()
        torch.testing.assert_close(ours, theirs, rtol=0.0, atol=1e-4 * scale)


def test_a_model_the_interval_pass_cannot_read_is_returned_unchanged() -> None:
    class Gelu(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.GELU(), nn.Linear(4, 2))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layers(x)

    model = Gelu().eval()
    assert prune_dead_units(model, (1, 2, 2)) is model


def test_every_unit_dead_keeps_one_channel() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
    with torch.no_grad():
        model[0].bias.fill_(-100.0)
    pruned = prune_dead_units(model, (4,))
    assert pruned[0].weight.shape == (1, 4)
    x = torch.rand(8, 4)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), model(x))


def test_bundled_model_is_pruned_and_verifies_the_same_images(shared_data, monkeypatch) -> None:
    from certify.data import load_split

    model = load_checkpoint(EMBEDDED_MODEL).model
    twin = prune_dead_units(fold_batchnorm(model), (1, 28, 28))
    first = next(m for m in twin.modules() if isinstance(m, nn.Conv2d))
    assert first.out_channels < 16  # fast-trained networks have dead units

    data = load_split("mnist", shared_data, "test", 0, 100)
    pruned = MarginBounder(model, (1, 28, 28), CPU)
    monkeypatch.setattr("certify.bounds.margins.prune_dead_units", lambda m, shape: m)
    full = MarginBounder(model, (1, 28, 28), CPU)
    for method in (BoundMethod.IBP, BoundMethod.CROWN_IBP):
        ours = pruned.lower_bounds(data.images, data.labels, 0.3, method)
        theirs = full.lower_bounds(data.images, data.labels, 0.3, method)
        torch.testing.assert_close(ours, theirs, rtol=0.0, atol=1e-4)
        assert torch.equal((ours > 0).all(1), (theirs > 0).all(1))


def test_a_cut_that_changes_the_outputs_is_refused(monkeypatch) -> None:
    """The last check: if the analysis ever named a live channel dead, the model is
    bounded whole rather than wrongly."""
    import certify.bounds.pruning as pruning

    model = _chain_with_dead_units()
    real_cut_at = pruning._cut_at

    def wrong_cut(node, module, bounds):
        cut = real_cut_at(node, module, bounds)
        if cut is not None and cut.producer == "0":
            cut.live = cut.live[1:]  # also drops channel 0, which is live
        return cut

    monkeypatch.setattr(pruning, "_cut_at", wrong_cut)
    assert prune_dead_units(model, (1, 14, 14)) is model


def test_a_layer_called_twice_is_not_pruned() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first = nn.Linear(4, 4)
            self.shared = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.shared(torch.relu(self.shared(torch.relu(self.first(x)))))

    model = Twice().eval()
    with torch.no_grad():
        model.first.bias[0] = -100.0  # dead, but its reader is also called elsewhere
    assert prune_dead_units(model, (4,)) is model


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_bundled_model_as_onnx_is_pruned_like_the_checkpoint(tmp_path, shared_data) -> None:
    """Through `certify export` (dynamo exporter, a Reshape with a fixed feature count
    before the dense layer): the same channels go, the Reshape's constant follows, and
    the bounds stay."""
    from certify.data import load_split
    from model_zoo.onnx.loading import load_onnx
    from training.export import export_onnx

    path = export_onnx(EMBEDDED_MODEL, tmp_path / "bundled.onnx").path
    loaded = load_onnx(path, input_shape=(1, 28, 28))
    twin = prune_dead_units(loaded.model, (1, 28, 28))
    reference = prune_dead_units(fold_batchnorm(load_checkpoint(EMBEDDED_MODEL).model), (1, 28, 28))

    def widths(model: nn.Module) -> list[int]:
        return [m.weight.shape[0] for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]

    assert widths(twin) == widths(reference)
    assert widths(twin) != widths(loaded.model)
    data = load_split("mnist", shared_data, "test", 0, 64)
    with torch.no_grad():
        torch.testing.assert_close(twin(data.images), loaded.model(data.images), atol=1e-4, rtol=0)
    spec = margin_matrix(data.labels, 10)
    cut = IntervalNetwork(twin).bounds_only(data.images, 0.3, spec)
    full = IntervalNetwork(loaded.model).bounds_only(data.images, 0.3, spec)
    torch.testing.assert_close(cut[0], full[0], rtol=0.0, atol=1e-4)
