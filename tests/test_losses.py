"""The training objectives against hand-computed values and their defining properties."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from colorizers.color import AB_SCALE, lab_to_rgb
from train.losses import IGNORE_LABEL, EdgeLoss, GANLoss, RebalancedL1, SSIMLoss, masked_cross_entropy


def smooth_image(seed: int = 0, size: int = 32) -> torch.Tensor:
    """A (1, 3, size, size) image in [0, 1] with edges: a coloured square on a gradient."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, size)
    image = torch.stack([ramp[None, :].expand(size, size), ramp[:, None].expand(size, size),
                         torch.full((size, size), 0.3)])[None].clone()
    colour = torch.rand(3, generator=g)
    image[:, :, 8:20, 10:24] = colour[:, None, None]
    return image


def test_vanilla_gan_loss_is_bce_on_logits():
    logits = torch.tensor([0.0, 2.0])
    real = (math.log(2) + math.log(1 + math.exp(-2))) / 2          # -log sigmoid(x)
    fake = (math.log(2) + math.log(1 + math.exp(2))) / 2           # -log(1 - sigmoid(x))
    loss = GANLoss("vanilla")
    assert loss(logits, True).item() == pytest.approx(real, rel=1e-6)
    assert loss(logits, False).item() == pytest.approx(fake, rel=1e-6)


def test_lsgan_loss_is_squared_distance_to_the_label():
    logits = torch.tensor([[0.5, -1.0]])
    loss = GANLoss("lsgan")
    assert loss(logits, True).item() == pytest.approx(((0.5 - 1) ** 2 + (-1 - 1) ** 2) / 2)
    assert loss(logits, False).item() == pytest.approx((0.5 ** 2 + 1.0) / 2)


def test_unknown_gan_mode_is_refused():
    with pytest.raises(ValueError, match="unknown GAN mode"):
        GANLoss("wasserstein")


def test_edge_loss_is_zero_for_identical_images_and_positive_otherwise():
    image = smooth_image()
    edge = EdgeLoss()
    assert edge(image, image.clone()).item() == 0.0
    bled = image.clone()
    bled[:, :, 8:20, 10:24] = image[:, :, 8:20, 10:24].mean()  # colour edge washed out, same lightness-ish
    assert edge(bled, image).item() > 1e-3
    prediction = bled.clone().requires_grad_(True)
    edge(prediction, image).backward()
    assert prediction.grad.abs().sum() > 0  # differentiable, unlike Canny


def test_ssim_loss_is_one_minus_scikit_image_ssim_and_zero_for_identical_images():
    x, y = smooth_image(0), (smooth_image(1) * 0.8 + 0.1)
    expected = structural_similarity(x[0].numpy(), y[0].numpy(), channel_axis=0, data_range=1.0,
                                     gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert SSIMLoss()(x, y).item() == pytest.approx(1.0 - expected, abs=1e-4)
    assert SSIMLoss()(x, x.clone()).item() == pytest.approx(0.0, abs=1e-6)
    prediction = y.clone().requires_grad_(True)
    SSIMLoss()(prediction, x).backward()
    assert prediction.grad.abs().sum() > 0


def test_masked_cross_entropy_ignores_unlabelled_images():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [5.0, -5.0]])
    labels = torch.tensor([0, IGNORE_LABEL, 1])
    expected = torch.nn.functional.cross_entropy(logits[[0, 2]], labels[[0, 2]])
    assert masked_cross_entropy(logits, labels).item() == pytest.approx(expected.item())
    none_known = masked_cross_entropy(logits, torch.full((3,), IGNORE_LABEL))
    assert none_known.item() == 0.0 and not np.isnan(none_known.item())


def _lab_image(l: float, a: float, b: float, size: int = 8) -> torch.Tensor:
    """A (1, 3, size, size) uint8 RGB image of one Lab colour."""
    lab = torch.tensor([l, a, b], dtype=torch.float32).view(1, 3, 1, 1).expand(1, 3, size, size)
    return (lab_to_rgb(lab) * 255).round().to(torch.uint8)


def test_rebalanced_l1_weights_rare_colours_more_and_keeps_the_scale_of_l1():
    """Zhang et al. 2016 2.2: a colour seen rarely in training weighs more than a common one, the expected
    weight under the training distribution is 1, and with mix = 1 (a uniform prior) it is plain L1."""
    grey, blue = _lab_image(50, 5, 5), _lab_image(50, 15, -55)
    images = torch.cat([grey] * 9 + [blue])           # 90 % grey pixels, 10 % saturated blue
    prior = RebalancedL1.prior_of(images, size=8)
    assert float(prior.sum()) == 10 * 64 and int((prior > 0).sum()) == 2
    loss = RebalancedL1(prior)
    ab = lambda a, b: torch.tensor([a, b]).view(1, 2, 1, 1).expand(1, 2, 4, 4) / AB_SCALE
    w_grey, w_blue = float(loss.pixel_weights(ab(5, 5)).mean()), float(loss.pixel_weights(ab(15, -55)).mean())
    assert w_blue > 1.5 * w_grey
    assert float(loss.prior.sum()) == pytest.approx(1.0, abs=1e-3)  # gaussian-smoothed, still (almost) all mass
    assert float((loss.prior * loss.weights).sum()) == pytest.approx(1.0, rel=1e-5)
    # the same error costs more on the rare colour
    error = torch.full((1, 2, 4, 4), 0.1)
    assert float(loss(ab(15, -55) + error, ab(15, -55))) > 1.5 * float(loss(ab(5, 5) + error, ab(5, 5)))
    uniform = RebalancedL1(prior, mix=1.0)
    target, prediction = ab(15, -55), ab(5, 5)
    assert float(uniform(prediction, target)) == pytest.approx(float((prediction - target).abs().mean()), rel=1e-5)


def test_rebalanced_l1_refuses_an_empty_prior():
    with pytest.raises(ValueError, match="histogram"):
        RebalancedL1(torch.zeros(RebalancedL1.BINS, RebalancedL1.BINS))
