"""Reading training and evaluation images into memory, once.

Every colorizer trains on 256 x 256 colour images (224 x 224 for ``cnn_classifier``), and the prepared sets
are small enough to hold decoded: colorize256 is ~17k images, 3.3 GB as uint8 at 256 x 256. So the images
are decoded once, in parallel threads (PIL releases the GIL while it decodes), into one uint8 tensor that
the training engine moves to the GPU when it fits; no loader workers, no per-step decoding.

A source is one of
- a folder of images (searched recursively; the app's ``colorizers.pipeline.IMAGE_EXTENSIONS``: .jpg .jpeg
  .png .webp .bmp .tif .tiff .gif),
- a tar shard of images (as ``colorize256/train-00.tar``),
- a ``manifest.csv`` of colorize256 (columns file, split, shard, source, label, kind, ...): it resolves to
  the tar shards next to it, and only here are ``split`` and ``kinds`` known, so only here do they filter.

Images that are not already ``size`` x ``size`` are resized on the short side and centre-cropped.

Decode once: with a ``cache`` folder (the engine's default is ``~/.cache/colorizers/images``, outside the
repository; ``$COLORIZERS_CACHE`` moves it), the first read stores the decoded uint8 array of a request (sources,
split, kinds, size, cap) as a ``.npy`` next to a ``.json`` that describes it, and later reads memory-map it, so a
run starts in seconds. The ``.json`` holds a fingerprint of the sources (path, size and modification time of
every file read) and is written last, after the array is complete: an entry whose sources changed, whose array
is missing or truncated, or whose description is absent (a run killed while writing) is rebuilt, never used.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from colorizers import image_to_rgb_array
from colorizers.pipeline import IMAGE_EXTENSIONS  # one list for the app, the batch CLI and training

SPLITS = ("train", "val")
CACHE_ENV = "COLORIZERS_CACHE"
CACHE_VERSION = 1  # bump when decode_image changes what it makes of a file
KINDS = ("object", "scene", "mixed")


@dataclass
class ImageSet:
    """Decoded images with what is known about them (``None`` where the source does not say)."""

    images: torch.Tensor          # (N, 3, size, size) uint8 RGB
    labels: list[str | None]      # class name (manifests only)
    kinds: list[str | None]       # "object" | "scene" | "mixed" (manifests only)
    names: list[str]              # file name inside its folder, tar or manifest

    def __len__(self) -> int:
        return self.images.shape[0]

    @staticmethod
    def concat(sets: list[ImageSet]) -> ImageSet:
        if not sets:
            raise ValueError("no image sets to concatenate")
        return ImageSet(torch.cat([s.images for s in sets]), [x for s in sets for x in s.labels],
                        [x for s in sets for x in s.kinds], [x for s in sets for x in s.names])


@dataclass
class _Entry:
    """One image still to decode: its encoded bytes and metadata."""

    data: bytes
    name: str
    label: str | None = None
    kind: str | None = None


def decode_image(data: bytes, size: int) -> np.ndarray:
    """Encoded image bytes -> (size, size, 3) uint8 RGB: EXIF orientation applied, short side resized to
    ``size`` (bicubic, anti-aliased), centre-cropped."""
    image = Image.open(io.BytesIO(data))
    image.draft("RGB", (size, size))  # JPEG: let the decoder itself downscale by 2/4/8 when it can
    image = ImageOps.exif_transpose(image) or image
    if image.mode != "RGB":  # grey, 16-bit, palette, alpha: the pipeline's own conversion
        image = Image.fromarray((image_to_rgb_array(image) * 255.0 + 0.5).astype(np.uint8), "RGB")
    w, h = image.size
    if (w, h) != (size, size):
        scale = size / min(w, h)
        new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
        image = image.resize((new_w, new_h), Image.BICUBIC)
        left, top = (new_w - size) // 2, (new_h - size) // 2
        image = image.crop((left, top, left + size, top + size))
    return np.asarray(image, dtype=np.uint8)


def _folder_entries(folder: Path) -> Iterator[_Entry]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    for path in files:
        yield _Entry(path.read_bytes(), str(path.relative_to(folder)))


def _tar_entries(path: Path) -> Iterator[_Entry]:
    with tarfile.open(path) as tar:
        for member in tar:
            if member.isfile() and Path(member.name).suffix.lower() in IMAGE_EXTENSIONS:
                yield _Entry(tar.extractfile(member).read(), member.name)


def _manifest_rows(path: Path, split: str | None, kinds: list[str] | None) -> list[dict[str, str]]:
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    unknown = sorted(set(kinds or ()) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown kind(s) {', '.join(unknown)}; choose from {', '.join(KINDS)}")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"file", "split", "shard", "label", "kind"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path} is not a colorize256 manifest: no column(s) {', '.join(sorted(missing))}")
        rows = list(reader)
    return [r for r in rows if (split is None or r["split"] == split) and (kinds is None or r["kind"] in kinds)]


def _manifest_entries(path: Path, rows: list[dict[str, str]]) -> Iterator[_Entry]:
    """The rows' images, read shard by shard (each tar once, front to back), yielded in manifest order."""
    by_shard: dict[str, set[str]] = {}
    for row in rows:
        by_shard.setdefault(row["shard"], set()).add(row["file"])
    data: dict[tuple[str, str], bytes] = {}
    for shard, wanted in by_shard.items():
        shard_path = path.parent / shard
        if not shard_path.is_file():
            raise FileNotFoundError(f"manifest {path} names shard {shard}, which is not at {shard_path}")
        with tarfile.open(shard_path) as tar:
            for member in tar:
                if member.name in wanted:
                    data[shard, member.name] = tar.extractfile(member).read()
        absent = sorted(wanted - {name for s, name in data if s == shard})
        if absent:
            raise FileNotFoundError(f"{shard_path} lacks {len(absent)} file(s) the manifest lists, e.g. {absent[0]}")
    for row in rows:
        yield _Entry(data[row["shard"], row["file"]], row["file"], row["label"] or None, row["kind"] or None)


def _source_entries(source: str, split: str | None, kinds: list[str] | None,
                    max_images: int | None) -> Iterator[_Entry]:
    path = Path(source).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"image source {source} does not exist (expected a folder, a .tar or a manifest.csv)")
    if path.is_dir():
        return _folder_entries(path)
    if tarfile.is_tarfile(path):
        return _tar_entries(path)
    if path.suffix.lower() == ".csv":
        rows = _manifest_rows(path, split, kinds)
        return _manifest_entries(path, rows[:max_images] if max_images is not None else rows)
    raise ValueError(f"cannot read images from {source}: not a folder, a tar shard or a manifest .csv")


def read_images(sources: list[str], split: str | None = None, kinds: list[str] | None = None, size: int = 256,
                max_images: int | None = None, num_threads: int = 2,
                cache: str | os.PathLike | None = None) -> ImageSet:
    """Decode every image of ``sources`` into one in-memory :class:`ImageSet` at ``size`` x ``size``.

    ``split`` ("train" | "val") and ``kinds`` (subset of "object", "scene", "mixed") filter manifest rows;
    folders and tars carry no such metadata (their labels and kinds are ``None``). ``max_images`` caps the
    total, taken in source order. With ``cache`` (a folder), the decoded set is stored there once and
    memory-mapped by later calls with the same request, as long as the sources are unchanged (module docstring).
    Raises ``FileNotFoundError`` for a missing source and ``ValueError`` when a source is unreadable or nothing
    is left to read.
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    if not sources:
        raise ValueError("no image sources given")
    if cache is None:
        return _decode_sources(sources, split, kinds, size, max_images, num_threads)
    request = {"version": CACHE_VERSION, "sources": [str(Path(s).expanduser().resolve()) for s in sources],
               "split": split, "kinds": sorted(kinds) if kinds is not None else None, "size": size,
               "max_images": max_images}
    key = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()[:24]
    fingerprint = _fingerprint(sources)
    cache = Path(cache).expanduser()
    array_path, meta_path = cache / f"{key}.npy", cache / f"{key}.json"
    cached = _open_cached(array_path, meta_path, fingerprint)
    if cached is not None:
        return cached
    image_set = _decode_sources(sources, split, kinds, size, max_images, num_threads)
    _write_cache(image_set, array_path, meta_path, request, fingerprint)
    return image_set


def default_cache_dir() -> Path:
    """``$COLORIZERS_CACHE``, else ``~/.cache/colorizers/images`` (outside any checkout)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "colorizers" / "images")


def _fingerprint(sources: list[str]) -> list[list]:
    """(path, size, mtime) of every file a request reads: a manifest and its shards, a tar, a folder's images."""
    files: list[Path] = []
    for source in sources:
        path = Path(source).expanduser()
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        elif path.suffix.lower() == ".csv" and path.is_file():
            files.append(path)
            files += sorted(p for p in path.parent.glob("*.tar"))
        else:
            files.append(path)
    stats = []
    for f in files:
        st = f.stat() if f.exists() else None
        stats.append([str(f.resolve()), st.st_size if st else None, st.st_mtime_ns if st else None])
    return stats


def _open_cached(array_path: Path, meta_path: Path, fingerprint: list[list]) -> ImageSet | None:
    """The cached set, memory-mapped; ``None`` if it is absent, stale or incomplete."""
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("fingerprint") != fingerprint:
            return None
        array = np.load(array_path, mmap_mode="c")  # copy-on-write: writable for torch, the file never changes
    except (OSError, ValueError, json.JSONDecodeError):
        return None
    if list(array.shape) != meta.get("shape") or array.dtype != np.uint8:
        return None
    return ImageSet(torch.from_numpy(array), meta["labels"], meta["kinds"], meta["names"])


def _write_cache(image_set: ImageSet, array_path: Path, meta_path: Path, request: dict, fingerprint: list[list]) -> None:
    """The array first, then its description (an entry without a description is incomplete). Both go to
    temporary names and are renamed into place, so a reader never sees half a file."""
    try:
        array_path.parent.mkdir(parents=True, exist_ok=True)
        meta_path.unlink(missing_ok=True)
        tmp = array_path.with_name(array_path.name + f".{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, image_set.images.numpy())
        os.replace(tmp, array_path)
        meta = {**request, "fingerprint": fingerprint, "shape": list(image_set.images.shape),
                "labels": image_set.labels, "kinds": image_set.kinds, "names": image_set.names}
        tmp = meta_path.with_name(meta_path.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, meta_path)
    except OSError as err:  # a full or read-only disk costs speed, not the run
        print(f"note: could not cache decoded images in {array_path.parent}: {err}")


def _decode_sources(sources: list[str], split: str | None, kinds: list[str] | None, size: int,
                    max_images: int | None, num_threads: int) -> ImageSet:
    entries: list[_Entry] = []
    for source in sources:
        left = None if max_images is None else max_images - len(entries)
        if left is not None and left <= 0:
            break
        found = 0
        for entry in _source_entries(str(source), split, kinds, left):
            entries.append(entry)
            found += 1
            if left is not None and found >= left:
                break
        if found == 0:
            filters = f" matching split={split}, kinds={kinds}" if split or kinds else ""
            raise ValueError(f"no images{filters} in {source}")
    with ThreadPoolExecutor(max(1, num_threads)) as pool:
        arrays = list(pool.map(lambda e: _decode_named(e, size), entries))
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return ImageSet(images, [e.label for e in entries], [e.kind for e in entries], [e.name for e in entries])


def _decode_named(entry: _Entry, size: int) -> np.ndarray:
    try:
        return decode_image(entry.data, size)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot decode image {entry.name}: {err}") from err
