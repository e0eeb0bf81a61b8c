"""The one pipeline: every image mode, EXIF orientation, exact output size, and the input's L kept."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.color import rgb2lab

import colorizers
from colorizers.color import lab_to_rgb, lab_to_rgb_in_gamut, rgb_to_lab
from colorizers.pipeline import image_to_rgb_array, to_8bit
from tests.helpers import random_image


def lightness(image: Image.Image) -> np.ndarray:
    """The pipeline's reading of an image's L (used where the input is plain RGB or grey)."""
    return rgb2lab(image_to_rgb_array(image))[..., 0]


def expected_lightness(image: Image.Image) -> np.ndarray:
    """L of an image in any mode computed without the pipeline: Pillow's own RGB conversion, transparency
    composited over white by hand, 16-bit grey scaled by hand."""
    if image.mode == "I;16":
        grey = np.asarray(image, dtype=np.float64) / 65535.0
        return rgb2lab(np.repeat(grey[..., None], 3, axis=2))[..., 0]
    if image.mode == "I":
        grey = np.asarray(image, dtype=np.float64) / 255.0
        return rgb2lab(np.repeat(grey[..., None], 3, axis=2))[..., 0]
    if image.mode in ("LA", "La", "RGBA", "RGBa", "PA"):
        straight = image.convert("LA") if image.mode == "La" else image  # Pillow un-premultiplies La only to LA
        rgba = np.asarray(straight.convert("RGBA"), dtype=np.float64) / 255.0
        alpha = rgba[..., 3:]
        return rgb2lab(rgba[..., :3] * alpha + (1.0 - alpha))[..., 0]
    return rgb2lab(np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0)[..., 0]


def chroma(image: Image.Image) -> float:
    lab = rgb2lab(np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0)
    return float(np.hypot(lab[..., 1], lab[..., 2]).mean())


@pytest.fixture(scope="module")
def models(random_weights_root):
    available, unavailable = colorizers.load_colorizers(source=random_weights_root)
    assert not unavailable
    return available


def test_lab_matches_scikit_image_and_round_trips():
    rgb = torch.rand(2, 3, 19, 23, dtype=torch.float64)
    ref = rgb2lab(rgb.permute(0, 2, 3, 1).numpy())
    assert np.abs(rgb_to_lab(rgb).permute(0, 2, 3, 1).numpy() - ref).max() < 1e-3
    assert torch.allclose(lab_to_rgb(rgb_to_lab(rgb)), rgb, atol=1e-6)


def test_colour_conversion_is_differentiable():
    ab = torch.zeros(1, 2, 8, 8, requires_grad=True)
    lab = torch.cat([torch.full((1, 1, 8, 8), 50.0), ab], dim=1)
    lab_to_rgb(lab)[:, 0].sum().backward()
    assert ab.grad is not None and ab.grad.abs().sum() > 0


def test_gamut_mapping_keeps_lightness_where_clipping_does_not():
    g = torch.Generator().manual_seed(0)
    lab = torch.stack([torch.rand(64, 64, generator=g) * 100, torch.randn(64, 64, generator=g) * 90,
                       torch.randn(64, 64, generator=g) * 90]).double()
    mapped = rgb_to_lab(lab_to_rgb_in_gamut(lab))[0]
    clipped = rgb_to_lab(lab_to_rgb(lab))[0]
    assert (mapped - lab[0]).abs().max() < 0.01
    assert (clipped - lab[0]).abs().mean() > 1.0  # the problem the mapping solves


def test_gamut_mapping_of_a_batch_equals_each_image_alone():
    """Out-of-gamut pixels are found and mended across leading dimensions in one pass (in place)."""
    g = torch.Generator().manual_seed(1)
    lab = torch.stack([torch.rand(2, 16, 16, generator=g) * 100, torch.randn(2, 16, 16, generator=g) * 90,
                       torch.randn(2, 16, 16, generator=g) * 90], dim=1)  # (2, 3, H, W), two different images
    together = lab_to_rgb_in_gamut(lab)
    for i in range(2):
        assert torch.allclose(together[i], lab_to_rgb_in_gamut(lab[i]), atol=1e-6)
    assert (together[0] - together[1]).abs().mean() > 0.1


def test_8_bit_conversion_rounds_to_nearest_and_clips():
    levels = torch.tensor([[-0.3, 0.4, 0.6], [1.51, 127.4, 127.6], [254.6, 255.0, 400.0]]) / 255
    rgb = torch.stack([levels, levels.flip(0), levels.T])  # (3, H, W): a different pattern in each channel
    pixels = to_8bit(rgb)
    assert pixels.dtype == np.uint8 and pixels.shape == (3, 3, 3)
    assert pixels[..., 0].tolist() == [[0, 0, 1], [2, 127, 128], [255, 255, 255]]
    assert np.array_equal(pixels[..., 1], pixels[::-1, :, 0]) and np.array_equal(pixels[..., 2], pixels[..., 0].T)


SIZES = [(1, 1), (7, 5), (33, 517), (600, 13), (255, 257), (1000, 3)]


@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_every_model_keeps_size_and_lightness_at_odd_sizes_and_aspect_ratios(models, size):
    image = random_image(size[1], size[0], seed=size[0])
    for name, colorizer in models.items():
        out = colorizer.colorize(image)
        assert out.mode == "RGB" and out.size == image.size, name
        assert np.abs(lightness(out) - lightness(image)).mean() < 0.5, name


def test_models_produce_colour_from_grey(models, photo):
    grey = photo.convert("L")
    for name, colorizer in models.items():
        assert chroma(colorizer.colorize(grey)) > chroma(grey) + 1.0, name


def _modes(photo: Image.Image) -> dict[str, Image.Image]:
    small = photo.resize((97, 61))
    rgba = small.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(small.size))
    grey16 = Image.fromarray((np.asarray(small.convert("L"), dtype=np.uint16) * 257), "I;16")
    return {
        "L": small.convert("L"), "LA": rgba.convert("LA"), "RGB": small, "RGBA": rgba,
        "P": small.convert("P", palette=Image.Palette.ADAPTIVE), "CMYK": small.convert("CMYK"),
        "I;16": grey16, "1": small.convert("1"), "I": small.convert("I"),
        "La": rgba.convert("LA").convert("La"), "RGBa": rgba.convert("RGBa"),
    }


@pytest.mark.parametrize("mode", ["L", "LA", "La", "RGB", "RGBA", "RGBa", "P", "CMYK", "I;16", "1", "I"])
def test_every_image_mode(models, photo, mode):
    image = _modes(photo)[mode]
    assert image.mode == mode
    expected_l = expected_lightness(image)
    for name in ("cnn", "paracolorizer"):
        out = models[name].colorize(image)
        assert out.size == image.size and out.mode == "RGB"
        assert np.abs(lightness(out) - expected_l).mean() < 0.5, (name, mode)


def test_sixteen_bit_grey_keeps_its_precision():
    ramp = np.linspace(0, 65535, 4096, dtype=np.uint16).reshape(64, 64)
    arr = image_to_rgb_array(Image.fromarray(ramp, "I;16"))
    assert len(np.unique(arr[..., 0])) > 1000  # not squeezed through 8 bits
    assert arr.max() == pytest.approx(1.0) and arr.min() == 0.0


def test_transparent_pixels_are_composited_over_white():
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert np.allclose(image_to_rgb_array(rgba), 1.0)


def test_exif_orientation_is_applied(models, photo):
    tall = photo.resize((40, 90))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    buf = io.BytesIO()
    tall.save(buf, "JPEG", exif=exif.tobytes())
    shown = Image.open(io.BytesIO(buf.getvalue()))
    assert shown.size == (40, 90)
    out = models["cnn"].colorize(shown)
    assert out.size == (90, 40)


def test_non_images_are_refused(models):
    with pytest.raises(TypeError, match="PIL image"):
        models["cnn"].colorize(np.zeros((4, 4)))


def test_banded_conversion_equals_whole_image_conversion(photo):
    """The pipeline converts large photos in bands of rows to bound memory: the result must not change."""
    from colorizers.color import rgb_to_l
    from colorizers.pipeline import image_to_l, image_to_tensor, recombine, recombine_to_image, tensor_to_image
    image = photo.resize((301, 203))
    whole_l = rgb_to_l(image_to_tensor(image))
    banded_l = image_to_l(image, band_pixels=301 * 7 + 5)  # bands of 7 rows, the last one short
    assert torch.allclose(banded_l, whole_l, atol=1e-4)  # float rounding only
    ab = torch.randn(1, 2, 203, 301) * 70  # strong colours: many pixels need gamut mapping
    whole = np.asarray(tensor_to_image(recombine(whole_l, ab)))
    banded = np.asarray(recombine_to_image(whole_l, ab, band_pixels=301 * 7 + 5))
    assert np.abs(banded.astype(int) - whole.astype(int)).max() <= 1
    assert (banded != whole).mean() < 0.001


def test_banded_l_takes_the_white_level_of_the_whole_image():
    """A 32-bit grey image whose only bright pixel is in the last band: every band is read on the whole image's
    scale (65535 here), as the whole-image reading does, not on its own."""
    from colorizers.pipeline import image_to_l, image_to_tensor
    from colorizers.color import rgb_to_l
    values = np.full((40, 30), 200, dtype=np.int32)
    values[-1, -1] = 60000
    image = Image.fromarray(values, "I")
    banded = image_to_l(image, band_pixels=30 * 4)  # 10 bands of 4 rows
    assert torch.allclose(banded, rgb_to_l(image_to_tensor(image)), atol=1e-4)
    assert banded[0, 0, 0, 0] < 10  # 200 of 65535 is nearly black


@pytest.mark.parametrize("size", [(37, 301), (301, 37), (1, 700), (700, 1), (256, 256)])
def test_banded_upsampling_equals_whole_upsampling(size):
    """``finish_image`` up-samples a,b in bands (the short side first), so no full-size float a,b exist; the
    result must be that of up-sampling the whole image, up to float rounding."""
    from colorizers.pipeline import finish_image, recombine_to_image, upsample_ab, upsampled_ab_bands
    torch.manual_seed(0)
    l_full = torch.rand(1, 1, *size) * 100
    ab_small = torch.randn(1, 2, 256, 256) * 40
    whole = upsample_ab(ab_small, size)
    covered = torch.zeros(size, dtype=torch.int)
    for rows, cols, ab in upsampled_ab_bands(ab_small, size, band_pixels=97):
        assert torch.allclose(ab, whole[..., rows, cols], atol=1e-4)
        covered[rows, cols] += 1
    assert (covered == 1).all()  # every pixel exactly once
    banded = np.asarray(finish_image(l_full, ab_small, band_pixels=97)).astype(int)
    expected = np.asarray(recombine_to_image(l_full, whole)).astype(int)
    assert np.abs(banded - expected).max() <= 1 and (banded != expected).mean() < 0.001
