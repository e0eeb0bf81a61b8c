"""The per-image quality metrics that need nothing beyond the app's requirements: PSNR, SSIM, colourfulness and
Lab chroma. ``train.metrics`` (the papers' tables, with LPIPS and FID) re-exports the first three, so
``train.evaluate`` and the app's reference mode compute them with the same code.

Every image argument is a float tensor ``(B, 3, H, W)`` of sRGB in [0, 1], or a uint8 one read as 8-bit sRGB
(value / 255 in float32, the values ``image_to_rgb_array`` gives, converted band by band so a 16-megapixel photo
never exists as full-size floats); every metric returns a ``(B,)`` float tensor.
Each function works through the image in bands of rows (``band_pixels`` pixels per image per band), summing
per-band partial results, so a full-resolution 16-megapixel photo never needs full-size float64 or 15-channel
temporaries. The value is the whole-image one up to floating-point summation order; a 256 x 256 training image
is a single band.
"""
from __future__ import annotations

import math

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from .color import rgb_to_lab

SSIM_SIGMA = 1.5    # Gaussian window of Wang et al. (2004): sigma 1.5, truncated at 3.5 sigma -> 11 x 11
SSIM_RADIUS = 5
SSIM_MIN_SIZE = 2 * SSIM_RADIUS + 1
SSIM_K1, SSIM_K2 = 0.01, 0.03
#: Pixels per image in one band of rows. A quarter megapixel keeps a band's temporaries near 100 MB (SSIM's, the
#: largest; half a megapixel took about 200 MB and put reference mode's 16 MP six-model request at 1995 MiB, a
#: megapixel 300 MB); SSIM's 10-row window margin then adds about 4 % work on a 4,600-pixel-wide photo.
BAND_PIXELS = 1 << 18


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape or a.dim() != 4 or a.shape[1] != 3:
        raise ValueError(f"expected two (B, 3, H, W) image batches of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def _check_batch(images: torch.Tensor) -> None:
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"expected a (B, 3, H, W) image batch, got {tuple(images.shape)}")


def _band(images: torch.Tensor, top: int, bottom: int) -> torch.Tensor:
    """Rows ``top:bottom`` of a batch, as float in [0, 1] (uint8 is divided by 255 in float32)."""
    band = images[..., top:bottom, :]
    return band.float() / 255.0 if band.dtype == torch.uint8 else band


def _out_dtype(images: torch.Tensor) -> torch.dtype:
    return torch.promote_types(images.dtype, torch.float32)


def _bands(height: int, width: int, band_pixels: int) -> Iterator[tuple[int, int]]:
    """(top, bottom) row ranges covering ``height`` rows, about ``band_pixels`` pixels each."""
    rows = max(1, band_pixels // max(width, 1))
    for top in range(0, height, rows):
        yield top, min(top + rows, height)


def _ssim_tiles(map_height: int, map_width: int, band_pixels: int, margin: int) -> Iterator[tuple[int, int, int, int]]:
    """(top, bottom, left, right) ranges of SSIM map positions covering the map, each read with ``margin`` more
    rows and columns of the image. Whole-width bands of about ``band_pixels`` image pixels while a band has at
    least ``4 * margin`` rows (the margin then adds at most a quarter); on images too wide for that (65,535 x 244:
    4-row bands that read 14 rows each, 3.5 times the work) square tiles of about ``band_pixels``, whose margins
    add a few per cent."""
    rows = band_pixels // (map_width + margin)
    if rows >= 4 * margin or rows >= map_height:
        rows = max(1, rows)
        for top in range(0, map_height, rows):
            yield top, min(top + rows, map_height), 0, map_width
        return
    side = max(4 * margin, math.isqrt(band_pixels) - margin)
    for top in range(0, map_height, side):
        for left in range(0, map_width, side):
            yield top, min(top + side, map_height), left, min(left + side, map_width)


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, band_pixels: int = BAND_PIXELS) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image, over all pixels and the three RGB channels.

    ``10 log10(data_range^2 / MSE)``, the MSE accumulated in float64; identical images give ``inf`` (not capped, so
    a mean over images that contains an identical pair is ``inf`` too, which is the honest value).
    """
    _check_pair(a, b)
    height, width = a.shape[-2:]
    sse = torch.zeros(a.shape[0], dtype=torch.float64, device=a.device)
    for top, bottom in _bands(height, width, band_pixels):
        diff = _band(a, top, bottom).double() - _band(b, top, bottom).double()
        sse += diff.pow(2).flatten(1).sum(dim=1)
    mse = sse / (3 * height * width)
    return (10.0 * torch.log10(data_range ** 2 / mse)).to(_out_dtype(a))


def _gaussian_window(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    x = torch.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=dtype, device=device)
    w = torch.exp(-0.5 * (x / SSIM_SIGMA) ** 2)
    return w / w.sum()


def _blur_valid(x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter of every channel, keeping only positions where the window fits the image."""
    c = x.shape[1]
    x = F.conv2d(x, window.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, window.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, band_pixels: int = BAND_PIXELS) -> torch.Tensor:
    """Structural similarity per image (Wang et al. 2004), the variant of the papers' tables.

    An 11 x 11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, population (not sample) covariances, on each
    RGB channel separately; the SSIM map is averaged over the positions where the whole window fits the image
    (a 5-pixel border is left out) and over the three channels. This equals scikit-image's
    ``structural_similarity(a, b, channel_axis=-1, data_range=1, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False)``. Images must be at least 11 x 11. Bands (or tiles, ``_ssim_tiles``) of map
    positions read their pixels plus the window's 10 rows and columns of margin, so banding changes no value.
    """
    _check_pair(a, b)
    if min(a.shape[-2:]) < SSIM_MIN_SIZE:
        raise ValueError(f"SSIM needs images of at least {SSIM_MIN_SIZE} x {SSIM_MIN_SIZE}, got {tuple(a.shape[-2:])}")
    dtype = _out_dtype(a)
    window = _gaussian_window(dtype, a.device)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    margin = 2 * SSIM_RADIUS
    height, width = a.shape[-2] - margin, a.shape[-1] - margin  # the SSIM map's size
    total = torch.zeros(a.shape[0], dtype=torch.float64, device=a.device)
    for top, bottom, left, right in _ssim_tiles(height, width, band_pixels, margin):
        # all three channels in one grouped convolution: three times faster than a channel at a time
        band_a = _band(a[..., left:right + margin], top, bottom + margin).to(dtype).contiguous()
        band_b = _band(b[..., left:right + margin], top, bottom + margin).to(dtype).contiguous()
        stats = _blur_valid(torch.cat([band_a, band_b, band_a * band_a, band_b * band_b, band_a * band_b], dim=1),
                            window)
        mu_a, mu_b, aa, bb, ab = stats.split(3, dim=1)
        var_a, var_b, cov = aa - mu_a ** 2, bb - mu_b ** 2, ab - mu_a * mu_b
        ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
        total += ssim_map.flatten(1).double().sum(dim=1)
    return (total / (3 * height * width)).to(dtype)


def _opponent(band: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hasler and Suesstrunk's opponent channels rg = R - G, yb = (R + G)/2 - B on 0..255 RGB, (B, pixels) float64."""
    r, g, b = (band.double() * 255.0).flatten(2).unbind(1)
    return r - g, 0.5 * (r + g) - b


def colourfulness(images: torch.Tensor, band_pixels: int = BAND_PIXELS) -> torch.Tensor:
    """Colourfulness M of Hasler and Suesstrunk (2003), the score ParaColorizer uses (section IV-B, ref. [50]).

    On 0..255 RGB, with the signed opponent channels rg = R - G and yb = (R + G) / 2 - B:
    ``M = sqrt(std(rg)^2 + std(yb)^2) + 0.3 * sqrt(mean(rg)^2 + mean(yb)^2)`` (population standard deviations
    over the pixels of one image; two passes, means first, so no variance is taken as a difference of squares).
    A grey image scores 0.
    """
    _check_batch(images)
    height, width = images.shape[-2:]
    count = height * width
    sums = torch.zeros(images.shape[0], 2, dtype=torch.float64, device=images.device)
    for top, bottom in _bands(height, width, band_pixels):
        rg, yb = _opponent(_band(images, top, bottom))
        sums += torch.stack([rg.sum(dim=1), yb.sum(dim=1)], dim=1)
    means = sums / count
    squares = torch.zeros_like(sums)
    for top, bottom in _bands(height, width, band_pixels):
        rg, yb = _opponent(_band(images, top, bottom))
        squares += torch.stack([(rg - means[:, :1]).pow(2).sum(dim=1), (yb - means[:, 1:]).pow(2).sum(dim=1)], dim=1)
    sigma = torch.sqrt(squares.sum(dim=1) / count)
    mu = torch.sqrt(means.pow(2).sum(dim=1))
    return (sigma + 0.3 * mu).to(_out_dtype(images))


def _chroma_bands(images: torch.Tensor, band_pixels: int) -> Iterator[torch.Tensor]:
    """CIE Lab (D65) chroma sqrt(a^2 + b^2) of each band of rows, (B, pixels), in float32 at least (chroma to about
    1e-4; float64 would double the time of a large photo for nothing)."""
    _check_batch(images)
    height, width = images.shape[-2:]
    dtype = _out_dtype(images)
    for top, bottom in _bands(height, width, band_pixels):
        lab = rgb_to_lab(_band(images, top, bottom).to(dtype))
        yield lab[:, 1:].pow(2).sum(dim=1).sqrt().flatten(1)


def mean_chroma(images: torch.Tensor, band_pixels: int = BAND_PIXELS) -> torch.Tensor:
    """Mean CIE Lab chroma C*ab = sqrt(a^2 + b^2) over the pixels of each image: 0 for grey, about 20 for the
    colorize256 validation photos. The ratio of a result's to the original's says how much colour a model put in
    (1: as much as the original, wherever it is)."""
    total = torch.zeros(images.shape[0], dtype=torch.float64, device=images.device)
    for chroma in _chroma_bands(images, band_pixels):
        total += chroma.double().sum(dim=1)
    return (total / (images.shape[-2] * images.shape[-1])).to(_out_dtype(images))


def chroma_share(images: torch.Tensor, at_least: float, band_pixels: int = BAND_PIXELS) -> torch.Tensor:
    """The share of each image's pixels whose CIE Lab chroma is ``at_least`` or more (0 to 1)."""
    count = torch.zeros(images.shape[0], dtype=torch.float64, device=images.device)
    for chroma in _chroma_bands(images, band_pixels):
        count += (chroma >= at_least).sum(dim=1)
    return count / (images.shape[-2] * images.shape[-1])


__all__ = ["BAND_PIXELS", "SSIM_MIN_SIZE", "chroma_share", "colourfulness", "mean_chroma", "psnr", "ssim"]
