"""The study's stimuli: the ground-truth photos, the models' recolourings of their grey versions (computed once,
cached on disk, keyed by the weights), and how a pair is encoded for the browser."""
from __future__ import annotations

import hashlib
import io
import os
import secrets
import sys
import threading
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np
import torch
from PIL import Image, ImageOps

from colorizers.color import gray_to_rgb_from_l, rgb_to_l
from colorizers.imagefile import open_image
from colorizers.pipeline import IMAGE_EXTENSIONS, Colorizer, image_to_tensor, tensor_to_image

def weights_identity(colorizer: Colorizer) -> str:
    """A fingerprint of a model's weights (names, shapes, dtypes and values of its state dict)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(colorizer.model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def grey_version(photo: Image.Image) -> Image.Image:
    """The photo with its colour removed: the same CIE L, a = b = 0."""
    return tensor_to_image(gray_to_rgb_from_l(rgb_to_l(image_to_tensor(photo))))


#: The longest side a study photo is shown (and recoloured) at: a pair is shown at most a screen wide, and a
#: camera-sized photo (13 MP) at full size cost about 780 MB per pair being built.
DISPLAY_SIDE = 1024

#: Pixels between the two sides of a composed pair (a neutral grey gap), and the most cropped off each edge.
PAIR_GAP = 16
MAX_CROP = 7


def blind_jpeg(image: Image.Image, quality: int) -> bytes:
    """``image`` as a baseline JPEG with fixed settings and no metadata (no EXIF, ICC, comments)."""
    pixels = Image.frombytes("RGB", image.size, image.convert("RGB").tobytes())
    out = io.BytesIO()
    pixels.save(out, "JPEG", quality=quality, subsampling="4:2:0", optimize=False, progressive=False)
    return out.getvalue()


def compose_pair(left: Image.Image, right: Image.Image, rng: np.random.Generator | None = None) -> Image.Image:
    """The two sides of a pair (the same size) as one image, ``left | gap | right``.

    Each composition is unique: a random 0..``MAX_CROP`` pixels are cropped off each edge (the same on both
    sides, so the scenes still line up) and every pixel gets an independent random -1, 0 or +1 per channel (below
    what anyone can see). So the served file never equals a public file or a re-encoding of one, nor another
    participant's copy of the same pair."""
    if left.size != right.size:
        raise ValueError(f"the sides of a pair differ in size: {left.size} and {right.size}")
    rng = rng or np.random.default_rng(secrets.randbits(128))
    width, height = left.size
    margins = [int(rng.integers(0, MAX_CROP + 1)) if extent > 8 * MAX_CROP else 0
               for extent in (width, height, width, height)]
    box = (margins[0], margins[1], width - margins[2], height - margins[3])
    sides = [np.asarray(side.convert("RGB").crop(box), dtype=np.int16) for side in (left, right)]
    h, w = sides[0].shape[:2]
    canvas = np.full((h, 2 * w + PAIR_GAP, 3), 128, dtype=np.int16)
    canvas[:, :w], canvas[:, w + PAIR_GAP:] = sides
    canvas += rng.integers(-1, 2, size=canvas.shape, dtype=np.int16)
    return Image.fromarray(canvas.clip(0, 255).astype(np.uint8), "RGB")


def save_blind_pair(left: Image.Image, right: Image.Image, folder: Path, quality: int,
                    rng: np.random.Generator | None = None) -> Path:
    """The pair as ONE baseline JPEG (``compose_pair``, ``blind_jpeg``) under a random name in ``folder``.

    Blind by construction: both sides are in the same file, so they share its name, length, headers, tables and
    end; the only thing that differs between them is the pixels. (Two files would each have their own length,
    and padding the shorter one leaks which it was.)"""
    path = folder / f"{secrets.token_hex(16)}.jpg"
    path.write_bytes(blind_jpeg(compose_pair(left, right, rng), quality))
    return path


def lower_thread_priority(niceness: int = 10) -> None:
    """Make the calling thread (and the threads it starts, e.g. torch's) yield the CPU to the app's other threads.
    Linux keeps a nice value per thread; elsewhere ``setpriority`` would lower the whole process, so it is left.
    ``niceness`` is added to the thread's own (a server started under ``nice`` stays lower still, never raised)."""
    if sys.platform.startswith("linux"):
        try:
            thread = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, thread, min(os.getpriority(os.PRIO_PROCESS, thread) + niceness, 19))
        except OSError:  # e.g. not permitted in a sandbox: run at normal priority
            pass


class Stimuli:
    """The study photos and the models' recolourings of them, computed once and cached on disk under
    ``cache_dir/<model>/<weights identity>/<photo name>-<photo hash>.png``."""

    def __init__(self, photos_dir: Path, colorizers: Mapping[str, Colorizer], cache_dir: Path):
        self.photos = {p.name: p for p in sorted(Path(photos_dir).iterdir())
                       if p.suffix.lower() in IMAGE_EXTENSIONS} if Path(photos_dir).is_dir() else {}
        self.colorizers = dict(colorizers)
        self.weights = {name: weights_identity(c) for name, c in self.colorizers.items()}
        self.cache_dir = Path(cache_dir)
        self._locks: dict[Path, threading.Lock] = {}
        self._locks_lock = threading.Lock()

    def photo(self, name: str) -> Image.Image:
        """The photo as shown: upright, 8-bit RGB, its longer side at most ``DISPLAY_SIDE`` (JPEGs are decoded at
        a reduced scale straight away, so a camera photo is never held at full size)."""
        with open_image(self.photos[name]) as image:
            image.draft("RGB", (DISPLAY_SIDE, DISPLAY_SIDE))  # JPEG: decode at 1/2, 1/4 or 1/8 where that suffices
            image = (ImageOps.exif_transpose(image) or image).convert("RGB")
        image.thumbnail((DISPLAY_SIDE, DISPLAY_SIDE), Image.Resampling.LANCZOS)
        return image

    def _cache_path(self, model: str, name: str) -> Path:
        photo_hash = hashlib.sha256(self.photos[name].read_bytes()).hexdigest()[:16]
        return self.cache_dir / model / self.weights[model] / f"{Path(name).stem}-{photo_hash}-{DISPLAY_SIDE}.png"

    def recolouring(self, model: str, name: str) -> Image.Image:
        path = self._cache_path(model, name)
        with self._locks_lock:
            lock = self._locks.setdefault(path, threading.Lock())
        with lock:  # each recolouring is computed once; others are not held up meanwhile
            if not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                image = self.colorizers[model].colorize(grey_version(self.photo(name)))
                # A name of its own: another process (or a second app in this one) may write the same key.
                staging = path.with_name(f"{path.stem}.{secrets.token_hex(8)}.tmp")
                image.save(staging, "PNG")
                os.replace(staging, path)
        with Image.open(path) as image:
            return image.convert("RGB")

    def warm(self, models: Iterable[str], stop: threading.Event) -> None:
        """Compute every missing recolouring of ``models`` ahead of the participants, until ``stop`` is set."""
        for model in models:
            for name in self.photos:
                if stop.is_set():
                    return
                self.recolouring(model, name)
