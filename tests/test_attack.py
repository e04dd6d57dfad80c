"""PGD: finds adversarial points inside the clipped ball, never outside it."""

import torch
from torch import nn

from certify.evaluation.attack import PGDConfig, pgd_attack


def _linear_model() -> nn.Module:
    # Two classes separated by the sign of the mean pixel minus 0.5.
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.stack([torch.full((16,), 1 / 16), torch.full((16,), -1 / 16)]))
        model[1].bias.copy_(torch.tensor([-0.5, 0.5]))
    return model.eval()


def test_attack_succeeds_exactly_when_the_ball_crosses_the_boundary() -> None:
    model = _linear_model()
    # Mean pixel 0.55: class 0 with margin 2*(0.05); an eps of 0.06 crosses, 0.04 does not.
    images = torch.full((2, 1, 4, 4), 0.55)
    labels = torch.zeros(2, dtype=torch.long)
    robust, adv = pgd_attack(model, images, labels, 0.06, PGDConfig(steps=20))
    assert not robust.any()
    assert (adv - images).abs().max() <= 0.06 + 1e-7
    assert (model(adv).argmax(1) != labels).all()
    robust, _ = pgd_attack(model, images, labels, 0.04, PGDConfig(steps=20))
    assert robust.all()


def test_adversarial_images_stay_in_the_pixel_box() -> None:
    model = _linear_model()
    images = torch.rand(8, 1, 4, 4)
    labels = model(images).argmax(1)
    _, adv = pgd_attack(model, images, labels, 0.3, PGDConfig(steps=10, restarts=2))
    assert adv.min() >= 0 and adv.max() <= 1
    assert (adv - images).abs().max() <= 0.3 + 1e-6


def test_misclassified_clean_images_count_as_not_robust() -> None:
    model = _linear_model()
    images = torch.full((1, 1, 4, 4), 0.9)
    wrong = torch.ones(1, dtype=torch.long)
    robust, _ = pgd_attack(model, images, wrong, 0.0, PGDConfig())
    assert not robust.any()


def test_random_starts_do_not_depend_on_batching() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    images = torch.rand(6, 1, 4, 4)
    labels = model(images).argmax(1)
    config = PGDConfig(steps=3)
    whole = pgd_attack(model, images, labels, 0.2, config, seed=5)
    first = pgd_attack(model, images[:2], labels[:2], 0.2, config, 5, torch.arange(2))
    rest = pgd_attack(model, images[2:], labels[2:], 0.2, config, 5, torch.arange(2, 6))
    torch.testing.assert_close(torch.cat([first[1], rest[1]]), whole[1])
    other_seed = pgd_attack(model, images, labels, 0.2, config, seed=6)
    assert not torch.equal(other_seed[1], whole[1])
