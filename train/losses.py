"""The training objectives of the six networks.

- ``l1_loss`` / ``masked_cross_entropy``: DTU equations 1 and 2-3, pix2pix's L1 term, ParaColorizer's L_L1.
- ``GANLoss``: the conditional GAN objective, vanilla (BCE, DTU eq. 6 and ParaColorizer eq. 1) or
  least-squares (LSGAN, Mao et al., ParaColorizer III-A "for stable learning").
- ``EdgeLoss``: ParaColorizer's edge-map loss L_EDGE (III-A), made differentiable.
- ``SSIMLoss``: DenseFuse's structural term, 1 - SSIM (ParaColorizer III-C).
- ``RebalancedL1``: L1 with each pixel weighted by the rarity of its true colour (Zhang et al. 2016, section 2.2),
  which neither paper uses; the CNN baselines' last stages use it against their sepia (``train/plan.py``).
- ``PerceptualLoss``: the distance between ImageNet ResNet-18 features of the colour result and of the photo
  (Johnson et al. 2016), which neither paper uses either; an option against the L1 term's pull to grey.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from colorizers.color import AB_SCALE, rgb_to_lab

from .metrics import ssim

IGNORE_LABEL = -100  # class index of images whose label is unknown or too rare to learn (no CE term)


def l1_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error, computed in float32 whatever the autocast dtype of ``prediction``."""
    return F.l1_loss(prediction.float(), target.float())


def mse_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(prediction.float(), target.float())


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the images with a known class (label != ``IGNORE_LABEL``); 0 when there is none.

    ``F.cross_entropy`` with ``ignore_index`` returns NaN for a batch with no labelled image, which a training
    set mixing labelled and unlabelled images meets often; here such a batch contributes nothing.
    """
    known = labels != IGNORE_LABEL
    total = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_LABEL, reduction="sum")
    return total / known.sum().clamp_min(1)


class GANLoss(nn.Module):
    """The GAN objective on discriminator logits against a constant real/fake target (pix2pix's ``GANLoss``).

    - ``vanilla``: binary cross-entropy on the logits, i.e. -log D(x, y) for real and -log(1 - D(x, G(x)))
      for fake (DTU eq. 6); the generator uses the non-saturating form, target "real" on its fakes.
    - ``lsgan``: mean squared error of the logits against 1 (real) or 0 (fake) (Mao et al. 2017).
    """

    MODES = ("vanilla", "lsgan")

    def __init__(self, mode: str = "vanilla", real_label: float = 1.0, fake_label: float = 0.0):
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"unknown GAN mode {mode!r}; choose one of {', '.join(self.MODES)}")
        self.mode = mode
        self.real_label = real_label
        self.fake_label = fake_label

    def forward(self, logits: torch.Tensor, target_is_real: bool) -> torch.Tensor:
        logits = logits.float()
        target = torch.full_like(logits, self.real_label if target_is_real else self.fake_label)
        if self.mode == "vanilla":
            return F.binary_cross_entropy_with_logits(logits, target)
        return F.mse_loss(logits, target)


def sobel_magnitude(image: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-channel Sobel gradient magnitude sqrt(gx^2 + gy^2 + eps) of (B, C, H, W), replicate-padded."""
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=image.device) / 8.0
    kernels = torch.stack([kx, kx.T])[:, None]  # (2, 1, 3, 3): d/dx, d/dy
    b, c, h, w = image.shape
    flat = F.pad(image.float().reshape(b * c, 1, h, w), (1, 1, 1, 1), mode="replicate")
    gx, gy = F.conv2d(flat, kernels).unbind(1)
    return torch.sqrt(gx * gx + gy * gy + eps).reshape(b, c, h, w)


class EdgeLoss(nn.Module):
    """ParaColorizer's edge-map loss L_EDGE = E ||C(y) - C(G(x))|| (III-A), with a differentiable edge map.

    The paper's C is the Canny detector with Otsu thresholds. Canny's output is a binary map produced by
    non-maximum suppression and hysteresis thresholding: piecewise constant in the image, so its gradient with
    respect to the generator's colours is zero almost everywhere, and a loss built on it cannot train the
    generator. We keep what Canny starts from, the Sobel gradient magnitude, without the thresholds: the mean
    absolute difference of the per-channel Sobel magnitudes of the colour images (RGB in [0, 1]). It is zero
    for identical images and grows where the colourisation puts edges the ground truth does not have (colour
    bleeding across a boundary moves edge energy) or misses edges it has. The colour images must be compared,
    not L: both share the input L, so their lightness edges agree by construction.
    """

    def forward(self, prediction_rgb: torch.Tensor, target_rgb: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(sobel_magnitude(prediction_rgb), sobel_magnitude(target_rgb))


class SSIMLoss(nn.Module):
    """1 - SSIM, DenseFuse's L_ssim (Li & Wu 2019, eq. 2), for RGB images in [0, ``data_range``].

    The SSIM is the evaluation's own (``metrics.ssim``: gaussian window 11 / sigma 1.5, as scikit-image), so
    the fusion network is trained on the quantity its table reports; it is plain torch and differentiable.
    """

    def __init__(self, data_range: float = 1.0):
        super().__init__()
        self.data_range = data_range

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return 1.0 - ssim(prediction.float(), target.float(), self.data_range).mean()


class RebalancedL1(nn.Module):
    """L1 on normalised ab with each pixel weighted by the rarity of its ground-truth colour: the class
    rebalancing of Zhang, Isola and Efros, "Colorful Image Colorization" (ECCV 2016), section 2.2, carried over
    from their classification over ab bins to regression.

    An L1 regressor predicts the conditional median of the colours a grey pixel could have; natural images are
    dominated by low-chroma colours, so that median is a brownish grey wherever the network is unsure (DTU 4.1:
    the CNN "does not generate enough colors"). Weighting each pixel by the inverse of how common its true
    colour is moves the median towards the rarer, saturated colours. As in Zhang et al.: ab space in bins of 10,
    the empirical distribution of the training images' colours ``p`` smoothed by a gaussian of sigma 5,
    mixed with a uniform distribution over the Q bins that occur, w ~ ((1 - mix) p + mix / Q)^-1 with mix = 0.5,
    and normalised so that the expected weight under ``p`` is 1 (the loss keeps plain L1's scale).
    """

    BIN = 10.0
    SIGMA = 5.0
    BINS = int(2 * AB_SCALE // BIN)  # 22 bins per axis over [-110, 110)

    def __init__(self, prior: torch.Tensor, mix: float = 0.5):
        super().__init__()
        if prior.shape != (self.BINS, self.BINS) or float(prior.sum()) <= 0:
            raise ValueError(f"the colour prior must be a non-empty ({self.BINS}, {self.BINS}) histogram")
        if not 0.0 < mix <= 1.0:
            raise ValueError(f"the uniform mix must be in (0, 1], got {mix}")
        prior = prior.double() / prior.sum()
        smoothed = _gaussian_smooth(prior, self.SIGMA / self.BIN)
        occurring = int((prior > 0).sum())
        weights = 1.0 / ((1.0 - mix) * smoothed + mix / occurring)
        weights = weights / (smoothed * weights).sum()
        self.register_buffer("prior", smoothed.float())      # the smoothed distribution the weights come from
        self.register_buffer("weights", weights.float())

    @classmethod
    def prior_of(cls, images: torch.Tensor, max_images: int = 2000, size: int = 64, seed: int = 0) -> torch.Tensor:
        """The (BINS, BINS) histogram of the ab colours of up to ``max_images`` uint8 RGB images (N, 3, H, W),
        a fixed random sample, each area-averaged to ``size`` (the distribution does not depend on the
        training size, so a run resumed at another size weights pixels the same)."""
        generator = torch.Generator().manual_seed(seed)
        index = torch.randperm(len(images), generator=generator)[:max_images].sort().values
        histogram = torch.zeros(cls.BINS * cls.BINS, dtype=torch.float64)
        for chunk in index.split(256):
            rgb = F.adaptive_avg_pool2d(images[chunk].float() / 255.0, size)
            ab = rgb_to_lab(rgb)[:, 1:]
            histogram += torch.bincount(cls._bin_index(ab).flatten(), minlength=cls.BINS * cls.BINS).double()
        return histogram.reshape(cls.BINS, cls.BINS)

    @classmethod
    def _bin_index(cls, ab: torch.Tensor) -> torch.Tensor:
        """Flat bin index (B, H, W) of ab (B, 2, H, W) in ab units."""
        cells = ((ab.float() + AB_SCALE) / cls.BIN).floor().long().clamp_(0, cls.BINS - 1)
        return cells[:, 0] * cls.BINS + cells[:, 1]

    def pixel_weights(self, ab_norm: torch.Tensor) -> torch.Tensor:
        """Weight (B, 1, H, W) of each pixel of the normalised true colours ``ab_norm`` (B, 2, H, W)."""
        return self.weights.flatten()[self._bin_index(ab_norm.float() * AB_SCALE)].unsqueeze(1)

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Weighted mean |prediction - target| over normalised ab, in float32."""
        return (self.pixel_weights(target) * (prediction.float() - target.float()).abs()).mean()


def _gaussian_smooth(grid: torch.Tensor, sigma: float) -> torch.Tensor:
    """A 2-D histogram convolved with a gaussian of ``sigma`` cells (zero outside the grid)."""
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=grid.dtype)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out = F.conv2d(grid[None, None], kernel.view(1, 1, 1, -1), padding=(0, radius))
    return F.conv2d(out, kernel.view(1, 1, -1, 1), padding=(radius, 0))[0, 0]


class PerceptualLoss(nn.Module):
    """Feature ("perceptual") loss of Johnson et al. 2016 through a frozen ImageNet ResNet-18, on RGB in [0, 1].

    Neither paper uses it. An L1 (or L2) loss on a,b rewards the mean of the plausible colours of a pixel, which
    for most objects is a desaturated brown: the colourisations' well-known greyness. A loss on the features of
    a network trained to recognise objects compares what the colours say about the image instead (a grey apple
    and a red one differ in ImageNet features; two plausible reds hardly do), the idea behind DeOldify's
    "NoGAN" pre-training with a feature loss before a short adversarial phase.

    The network is torchvision's ImageNet ResNet-18 through ``layer3`` (``../shared/weights``, BatchNorm folded,
    so in eval mode it is exactly the pretrained network), fed ImageNet-normalised RGB; its weights never
    train. The term is the mean over ``layer1``, ``layer2`` and ``layer3`` of each layer's mean absolute feature
    difference divided by the mean absolute feature of the photo (a relative error, so that each layer counts
    alike whatever its scale). It is zero for identical images. The metrics stay independent of it: LPIPS
    scores with AlexNet and FID with Inception, not with this network.
    """

    LAYERS = (1, 2, 3)

    def __init__(self, state_dict: dict[str, torch.Tensor]):
        super().__init__()
        from colorizers.networks.layers import ResNet18Encoder

        from .imagenet_init import IMAGENET_MEAN, IMAGENET_STD

        encoder = ResNet18Encoder(in_channels=3, width=64, num_layers=max(self.LAYERS))
        wanted = encoder.state_dict()
        missing = sorted(set(wanted) - set(state_dict))
        if missing:
            raise ValueError(f"the ImageNet ResNet-18 weights lack {len(missing)} tensors, e.g. {missing[0]}")
        encoder.load_state_dict({name: state_dict[name] for name in wanted})
        self.encoder = encoder.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def train(self, mode: bool = True) -> "PerceptualLoss":
        super().train(mode)
        self.encoder.eval()  # folded BatchNorm: only eval mode is the pretrained network
        return self

    def features(self, rgb: torch.Tensor) -> list[torch.Tensor]:
        return self.encoder((rgb - self.mean) / self.std)[1:]  # layer1, layer2, layer3 (not the stem)

    def forward(self, prediction_rgb: torch.Tensor, target_rgb: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            targets = self.features(target_rgb)
        terms = [(p.float() - t.float()).abs().mean() / (t.float().abs().mean() + 1e-6)
                 for p, t in zip(self.features(prediction_rgb), targets)]
        return torch.stack(terms).mean()
