"""The steps of the one inference pipeline every model goes through (after richzhang/colorization's ``util``:
the network runs at its native size, and its a,b are recombined with the full-resolution L).

image -> full-resolution L (prepare: ``image_to_l``) -> L resized to the model's native size -> model predicts
a,b (the network: ``predict_native_ab``) -> a,b up-sampled to the original size -> recombined with the original
full-resolution L -> brought into the sRGB gamut by reducing chroma (so L is kept) -> RGB image of exactly the
input's size (finish: ``finish_image``).

``compare.colorize_models`` runs these steps for a photo, for one model (``Colorizer.colorize``) or several.

Only the network runs in the colorizer's precision (bf16 autocast + channels-last where the device does bf16
natively, see ``precision.py``); its a,b are cast back to float32 at once, so up-sampling, recombination and gamut
mapping are float32 and the output's L is the input's in either precision.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from .color import lab_to_rgb_in_gamut, rgb_to_l
from .precision import autocast, memory_format

#: File extensions the project reads as images (batch tool, training data, study photos).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")

_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
_ALPHA_MODES = {"LA", "RGBA", "PA"}
_PREMULTIPLIED = {"La": "LA", "RGBa": "RGBA"}


class ABPredictor(Protocol):
    native_size: int

    def predict_ab(self, l: torch.Tensor) -> torch.Tensor: ...


def _white_level(image: Image.Image) -> float | None:
    """The value that means white in a 16/32-bit grey image (None for other modes): 65535 for I;16*; for F, 1 or
    255 by its largest value; for I, 255, 65535 or its largest value. Taken from the whole image."""
    mode = image.mode
    if mode not in _SIXTEEN_BIT_MODES and mode != "F":
        return None
    if mode not in ("I", "F"):
        return 65535.0
    arr = np.asarray(image)
    if mode == "F":
        return 1.0 if arr.size == 0 or np.nanmax(arr) <= 1.0 else 255.0
    top = arr.max() if arr.size else 0
    return 255.0 if top <= 255 else 65535.0 if top <= 65535 else float(top)


def image_to_rgb_array(image: Image.Image, white: float | None = None) -> np.ndarray:
    """Any PIL image -> float32 RGB array (H, W, 3) in [0, 1], with its EXIF orientation applied.

    Grey modes (1, L, I;16*, I, F) are replicated to three channels without going through 8 bits, transparent
    images are composited over white, palette and CMYK/YCbCr images are converted to RGB. ``white``: the white
    level of a 16/32-bit grey image when ``image`` is a piece of a larger one (default: this image's own).
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image, got {type(image).__name__}")
    image = ImageOps.exif_transpose(image) or image
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES or mode == "F":
        arr = np.asarray(image, dtype=np.float64)
        peak = white if white is not None else _white_level(image)
        gray = np.clip(np.nan_to_num(arr / peak), 0.0, 1.0).astype(np.float32)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode in _PREMULTIPLIED:  # Pillow converts these to RGB only through their straight-alpha modes
        image = image.convert(_PREMULTIPLIED[mode])
        mode = image.mode
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in _ALPHA_MODES:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba).convert("RGB")
    elif mode in ("1", "L"):
        gray = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
        return np.repeat(gray[..., None], 3, axis=2)
    elif mode != "RGB":
        try:
            image = image.convert("RGB")
        except (ValueError, OSError) as err:
            raise ValueError(f"cannot read an image of mode {mode!r}: {err}") from None
    return np.asarray(image, dtype=np.float32) / 255.0


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL image -> (1, 3, H, W) float32 sRGB in [0, 1]."""
    return torch.from_numpy(image_to_rgb_array(image)).permute(2, 0, 1)[None].contiguous()


def image_to_l(image: Image.Image, band_pixels: int = 1 << 18) -> torch.Tensor:
    """PIL image -> its L channel (1, 1, H, W) in [0, 100] (``image_to_rgb_array``'s reading of it), converted in
    bands of rows straight from the image, so a large photo never holds a full-size float RGB copy nor float Lab
    temporaries: only the L it returns (4 bytes a pixel) is full size."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image, got {type(image).__name__}")
    image = ImageOps.exif_transpose(image) or image
    white = _white_level(image)
    width, height = image.size
    l_full = torch.empty(1, 1, height, width)
    rows = max(1, band_pixels // max(width, 1))
    for top in range(0, height, rows):
        band = image_to_rgb_array(image.crop((0, top, width, min(height, top + rows))), white)
        l_full[0, :, top:top + rows] = rgb_to_l(torch.from_numpy(band).permute(2, 0, 1))
    return l_full


def to_8bit(rgb: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [0, 1] -> (H, W, 3) uint8, rounded to nearest; the arithmetic runs in torch on the planar
    floats (its threads) and only the 8-bit result is transposed to pixel order."""
    return rgb.mul(255.0).add_(0.5).clamp_(0.0, 255.0).to(torch.uint8).permute(1, 2, 0).contiguous().cpu().numpy()


def tensor_to_image(rgb: torch.Tensor) -> Image.Image:
    """(1, 3, H, W) or (3, H, W) in [0, 1] -> 8-bit RGB PIL image."""
    if rgb.dim() == 4:
        rgb = rgb[0]
    return Image.fromarray(to_8bit(rgb), "RGB")


def predict_native_ab(model: ABPredictor, l_full: torch.Tensor, device: str | torch.device = "cpu",
                      precision: str = "fp32") -> torch.Tensor:
    """Run ``model`` at its native size on ``l_full`` (B, 1, H, W), resized with antialiasing: a,b (B, 2, S, S),
    float32. The network runs under ``precision``'s autocast, its input in that precision's memory format."""
    size = (model.native_size, model.native_size)
    l_small = F.interpolate(l_full, size=size, mode="bilinear", antialias=True, align_corners=False)
    l_small = l_small.to(device, memory_format=memory_format(precision))
    with autocast(device, precision):
        ab = model.predict_ab(l_small)
    return ab.float().cpu().contiguous()


def upsample_ab(ab_small: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Native-size a,b -> a,b at the photo's full resolution (bilinear)."""
    return F.interpolate(ab_small, size=size, mode="bilinear", align_corners=False)


def predict_full_resolution_ab(model: ABPredictor, l_full: torch.Tensor, device: str | torch.device = "cpu",
                               precision: str = "fp32") -> torch.Tensor:
    """Run ``model`` at its native size on ``l_full`` (B, 1, H, W) and up-sample its a,b to (B, 2, H, W)."""
    return upsample_ab(predict_native_ab(model, l_full, device, precision), l_full.shape[-2:])


def recombine(l_full: torch.Tensor, ab_full: torch.Tensor) -> torch.Tensor:
    """Full-resolution L + a,b -> sRGB in gamut, L kept."""
    return lab_to_rgb_in_gamut(torch.cat([l_full, ab_full], dim=1))


def recombine_to_image(l_full: torch.Tensor, ab_full: torch.Tensor, band_pixels: int = 1 << 20) -> Image.Image:
    """``recombine`` for one image (batch 1), straight to an 8-bit PIL image, in bands of rows.

    The colour conversion's float temporaries then cover one band (about a megapixel) instead of the whole
    photo, which keeps a many-model comparison of a large photo within memory; every pixel's result is the same.
    """
    height, width = l_full.shape[-2:]
    out = np.empty((height, width, 3), dtype=np.uint8)
    rows = max(1, band_pixels // max(width, 1))
    for top in range(0, height, rows):
        band = recombine(l_full[..., top:top + rows, :], ab_full[..., top:top + rows, :])[0]
        out[top:top + rows] = to_8bit(band)
    return Image.fromarray(out, "RGB")


def upsampled_ab_bands(ab_small: torch.Tensor, size: tuple[int, int], band_pixels: int = 1 << 20):
    """``upsample_ab(ab_small, size)`` (batch 1) in bands, never whole: yields ``(rows, cols, ab)``, slices of the
    full-resolution image and its a,b there, covering it once.

    Bilinear up-sampling is separable: first the short side of the output is up-sampled whole (2 x native x short
    side floats, at most a few MB), then the long side in bands of about ``band_pixels``. Equal to ``upsample_ab``
    up to float rounding."""
    height, width = size
    native_h, native_w = ab_small.shape[-2:]
    if height >= width:  # tall: columns first, then bands of columns up to the full height
        first = F.interpolate(ab_small, size=(native_h, width), mode="bilinear", align_corners=False)
        step = max(1, band_pixels // max(height, 1))
        for left in range(0, width, step):
            cols = slice(left, min(width, left + step))
            band = F.interpolate(first[..., cols], size=(height, cols.stop - left), mode="bilinear",
                                 align_corners=False)
            yield slice(0, height), cols, band
    else:  # wide: rows first, then bands of rows across the full width
        first = F.interpolate(ab_small, size=(height, native_w), mode="bilinear", align_corners=False)
        step = max(1, band_pixels // max(width, 1))
        for top in range(0, height, step):
            rows = slice(top, min(height, top + step))
            band = F.interpolate(first[..., rows, :], size=(rows.stop - top, width), mode="bilinear",
                                 align_corners=False)
            yield rows, slice(0, width), band


def finish_image(l_full: torch.Tensor, ab_small: torch.Tensor, band_pixels: int = 1 << 18) -> Image.Image:
    """A model's native-size a,b (batch 1) on the photo's full-resolution L, as an 8-bit RGB image: up-sampled
    and recombined in bands (``upsampled_ab_bands``), so the only full-size arrays are L and the 8-bit result.
    The same result as ``recombine_to_image(l_full, upsample_ab(ab_small, ...))`` up to float rounding."""
    height, width = l_full.shape[-2:]
    out = np.empty((height, width, 3), dtype=np.uint8)
    for rows, cols, ab in upsampled_ab_bands(ab_small, (height, width), band_pixels):
        band = recombine(l_full[..., rows, cols], ab)[0]
        out[rows, cols] = to_8bit(band)
    return Image.fromarray(out, "RGB")


@dataclass
class Colorizer:
    """A loaded model behind the common pipeline: ``colorize(PIL.Image) -> PIL.Image``. ``precision`` is the
    resolved one, ``"bf16"`` or ``"fp32"`` (``load_colorizer`` resolves ``"auto"`` for the device)."""

    name: str
    model: ABPredictor
    device: str | torch.device = "cpu"
    precision: str = "fp32"

    @property
    def native_size(self) -> int:
        return self.model.native_size

    @torch.inference_mode()
    def colorize_l(self, l_full: torch.Tensor) -> torch.Tensor:
        """L (B, 1, H, W) in [0, 100] -> sRGB (B, 3, H, W) in [0, 1] with that L: float results for a batch of L
        tensors (evaluation, benchmarks), where ``colorize`` takes a photo to an 8-bit image."""
        return recombine(l_full, predict_full_resolution_ab(self.model, l_full, self.device, self.precision))

    def colorize(self, image: Image.Image) -> Image.Image:
        """PIL image -> 8-bit RGB image of its size with its L: a comparison of this one model."""
        from .compare import colorize_models  # the orchestrator, built on this module's steps

        return colorize_models(image, {self.name: self}, grey=False).results[self.name].image
