"""colorizers.png: the app's PNG encoder must be lossless, readable by Pillow, and refuse what it cannot write."""
import io

import numpy as np
import pytest
from PIL import Image

from colorizers import png


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest.mark.parametrize("mode, shape", [("RGB", (1, 1, 3)), ("RGB", (7, 5, 3)), ("L", (5, 7)), ("L", (1, 1)),
                                         ("RGB", (64, 33, 3))])
def test_encoded_images_decode_to_the_same_pixels(mode, shape):
    pixels = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    back = decode(png.encode_png(Image.fromarray(pixels, mode)))
    assert back.format == "PNG" and back.mode == mode and back.size == (shape[1], shape[0])
    assert np.array_equal(np.asarray(back), pixels)


def test_a_photo_taller_than_one_band_is_encoded_whole(monkeypatch):
    """Rows are filtered and deflated in bands; every band, the last one short, must land in the one stream."""
    monkeypatch.setattr(png, "_BAND_BYTES", 3 * 40 * 3)  # three 40-pixel RGB rows a band
    pixels = np.random.default_rng(0).integers(0, 256, (10, 40, 3), dtype=np.uint8)
    assert np.array_equal(np.asarray(decode(png.encode_png(Image.fromarray(pixels, "RGB")))), pixels)


def test_a_smooth_photo_is_compressed_like_pillows_level_1():
    """The single Sub filter keeps the file near Pillow's per-row choice on a photo (not a random image)."""
    from skimage import data
    photo = Image.fromarray(data.astronaut())
    ours = len(png.encode_png(photo))
    buffer = io.BytesIO()
    photo.save(buffer, "PNG", compress_level=1)
    assert ours < 1.15 * len(buffer.getvalue()) and ours < 0.7 * photo.width * photo.height * 3


@pytest.mark.parametrize("mode", ["RGBA", "I;16", "P", "1"])
def test_other_image_modes_are_refused(mode):
    with pytest.raises(ValueError, match="8-bit grey or RGB"):
        png.encode_png(Image.new(mode, (4, 4)))
