"""IBP in evaluation: the hand-written bounds-only pass against auto_LiRPA's IBP, the
fallback to auto_LiRPA, and the allocator setting that makes the pass fast on a CPU."""

import subprocess
import sys

import pytest
import torch
from torch import nn

from certify.bounds.fusion import fold_batchnorm
from certify.bounds.interval import IntervalNetwork
from certify.bounds.margins import BoundMethod, MarginBounder, margin_matrix
from certify.pipeline.embedded import EMBEDDED_MODEL
from model_zoo import create_model
from model_zoo.checkpoint import load_checkpoint
from model_zoo.normalization import NormalizedModel
from tests.networks import SMALL_OPTIONS, Residual

CPU = torch.device("cpu")


def _randomize_batch_norm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Eval-mode BatchNorm with non-trivial statistics and affine parameters, so that
    folding and bounding it is really tested."""
    generator = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=generator) * 0.3)
            m.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            m.weight.data.copy_(torch.randn(n, generator=generator))
            m.bias.data.copy_(torch.randn(n, generator=generator) * 0.2)
    return model.eval()


def _registered(name: str, channels: int, size: int) -> nn.Module:
    torch.manual_seed(0)
    network = create_model(name, channels, size, 10, **SMALL_OPTIONS.get(name, {}))
    mean, std = (0.5,) * channels, (0.25,) * channels
    return _randomize_batch_norm(NormalizedModel(network, mean, std))


@pytest.mark.parametrize(
    ("name", "channels", "size"),
    [
        ("cnn_4layer", 1, 28),
        ("cnn", 3, 32),
        ("wide_resnet_8", 3, 32),
        ("resnext", 3, 32),
        ("ResNeXt_imagenet64", 3, 24),
    ],
)
def test_hand_ibp_equals_auto_lirpa_ibp(name: str, channels: int, size: int) -> None:
    model = _registered(name, channels, size)
    hand = MarginBounder(model, (channels, size, size), CPU)
    lirpa = MarginBounder(model, (channels, size, size), CPU, hand_ibp=False)
    assert hand.hand_ibp and not lirpa.hand_ibp
    images = torch.rand(6, channels, size, size, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(6) % 10
    for eps in (0.0, 1 / 255, 0.03):
        ours = hand.lower_bounds(images, labels, eps, BoundMethod.IBP)
        theirs = lirpa.lower_bounds(images, labels, eps, BoundMethod.IBP)
        scale = 1.0 + theirs.abs().max().item()
        torch.testing.assert_close(ours, theirs, rtol=0.0, atol=2e-5 * scale)


def test_bundled_model_hand_ibp_equals_auto_lirpa_on_real_images(shared_data) -> None:
    from certify.data import load_split

    model = load_checkpoint(EMBEDDED_MODEL).model
    data = load_split("mnist", shared_data, "test", 0, 200)
    hand = MarginBounder(model, (1, 28, 28), CPU)
    lirpa = MarginBounder(model, (1, 28, 28), CPU, hand_ibp=False)
    ours = hand.lower_bounds(data.images, data.labels, 0.3, BoundMethod.IBP)
    theirs = lirpa.lower_bounds(data.images, data.labels, 0.3, BoundMethod.IBP)
    torch.testing.assert_close(ours, theirs, rtol=0.0, atol=1e-4)
    # The same samples verified, not merely close bounds.
    assert torch.equal((ours > 0).all(1), (theirs > 0).all(1))


def test_bounds_only_equals_the_training_pass() -> None:
    torch.manual_seed(0)
    model = _randomize_batch_norm(
        nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            Residual(4),
            nn.ReLU(),
            nn.AvgPool2d(2),
            nn.Flatten(),
            nn.Linear(4 * 4 * 4, 10),
        )
    )
    network = IntervalNetwork(model)
    x = torch.rand(5, 3, 8, 8)
    spec = margin_matrix(torch.tensor([0, 3, 9, 2, 2]), 10)
    for s in (spec, None):
        lower, upper = network.bounds_only(x, 0.05, s)
        with torch.no_grad():
            full = network(x, 0.05, s)
        torch.testing.assert_close(lower, full.lower, rtol=0.0, atol=1e-5)
        torch.testing.assert_close(upper, full.upper, rtol=0.0, atol=1e-5)
    assert not x.requires_grad and lower.grad_fn is None


def test_bounds_only_refuses_batch_statistics() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(Exception, match="clean values"):
        IntervalNetwork(model.train()).bounds_only(torch.rand(3, 4), 0.1)


def test_unsupported_model_falls_back_to_auto_lirpa() -> None:
    # auto_LiRPA bounds a sigmoid; the hand pass does not.
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Sigmoid(), nn.Linear(8, 3))
    bounder = MarginBounder(model.eval(), (1, 4, 4), CPU)
    assert not bounder.hand_ibp
    lower = bounder.lower_bounds(torch.rand(2, 1, 4, 4), torch.tensor([0, 2]), 0.1, BoundMethod.IBP)
    assert lower.shape == (2, 2)


def test_hand_ibp_that_disagrees_with_auto_lirpa_is_not_used(monkeypatch) -> None:
    """The probe at construction compares the two; a wrong hand pass is never used."""
    real = IntervalNetwork.bounds_only

    def loosened(self, x, eps, spec=None):
        lower, upper = real(self, x, eps, spec)
        return lower + 0.01, upper

    monkeypatch.setattr(IntervalNetwork, "bounds_only", loosened)
    model = _registered("cnn_4layer", 1, 28)
    assert not MarginBounder(model, (1, 28, 28), CPU).hand_ibp


def test_folded_model_is_what_the_hand_pass_bounds() -> None:
    """Bounds of the BN-folded twin: the hand pass must accept fx GraphModules."""
    model = _registered("cnn", 3, 32)
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    IntervalNetwork(folded)  # does not raise


_RSS_SCRIPT = """
import sys, torch
from certify.core.allocator import keep_freed_memory
def rss_mb():
    return int(open('/proc/self/statm').read().split()[1]) * 4096 / 2**20
tuned = keep_freed_memory() if sys.argv[1] == 'tuned' else False
before = rss_mb()
block = torch.ones(6 * 2**20)  # 24 MiB: mmapped, and unmapped on free, by default
del block
print(tuned, rss_mb() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
@pytest.mark.slow
def test_keep_freed_memory_keeps_a_freed_block_for_reuse() -> None:
    def kept(mode: str) -> tuple[str, float]:
        out = subprocess.run(
            [sys.executable, "-c", _RSS_SCRIPT, mode], capture_output=True, text=True, check=True
        ).stdout.split()
        return out[0], float(out[1])

    tuned, kept_tuned = kept("tuned")
    _, kept_default = kept("default")
    assert tuned == "True"
    assert kept_tuned >= 20.0  # the 24 MiB stay in the process
    assert kept_default < 4.0  # and without the setting they go back to the system


def test_cli_entry_point_tunes_the_allocator(monkeypatch) -> None:
    import certify.cli

    calls = []
    monkeypatch.setattr(certify.cli, "keep_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr(sys, "argv", ["certify", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        certify.cli.main()
    assert exit_info.value.code == 0 and calls == [1]


def test_bounds_only_sees_weights_changed_in_place() -> None:
    """|W| is cached between calls; an in-place change of W must not leave it stale."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).eval()
    network = IntervalNetwork(model)
    x = torch.rand(4, 6)
    before, _ = network.bounds_only(x, 0.1)
    with torch.no_grad():
        model[0].weight.mul_(-3.0)
    after, _ = network.bounds_only(x, 0.1)
    with torch.no_grad():
        fresh = IntervalNetwork(model)(x, 0.1)
    torch.testing.assert_close(after, fresh.lower, rtol=0.0, atol=1e-5)
    assert not torch.allclose(before, after)
