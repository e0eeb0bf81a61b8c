"""Opening image files with Pillow, including the valid files its own decoders get wrong.

Pillow decodes an uncompressed YCbCr TIFF (TIFF 6.0 section 21, PhotometricInterpretation 6) with its raw
decoder as if every pixel took four bytes, and stops with "image file is truncated" on a perfectly valid file.
libtiff, which Pillow bundles and already uses for every compressed TIFF, converts such files to RGB correctly, so
they are opened through it instead.
"""
from __future__ import annotations

import os
import threading

from PIL import Image, TiffImagePlugin

#: PhotometricInterpretation (TIFF tag 262) of YCbCr.
YCBCR = 6
_LIBTIFF = threading.Lock()


def open_image(path: str | os.PathLike) -> Image.Image:
    """``Image.open(path)``, lazily as Pillow opens; a YCbCr TIFF that Pillow would read with its raw decoder is
    opened for libtiff instead (``TiffImagePlugin.READ_LIBTIFF`` is a module switch, so it is flipped under a
    lock and only for the call)."""
    image = Image.open(path)
    if (image.format == "TIFF" and image.tag_v2.get(262) == YCBCR
            and not getattr(image, "use_load_libtiff", True)):
        image.close()
        with _LIBTIFF:
            previous, TiffImagePlugin.READ_LIBTIFF = TiffImagePlugin.READ_LIBTIFF, True
            try:
                image = Image.open(path)
            finally:
                TiffImagePlugin.READ_LIBTIFF = previous
    return image
