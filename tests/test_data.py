"""The training image readers: folders, tar shards and colorize256 manifests, on generated images."""
from __future__ import annotations

import csv
import io
import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from train import data as data_module
from train.data import ImageSet, read_images


def solid(colour, size=(40, 30)) -> Image.Image:
    return Image.new("RGB", size, colour)


def encode(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    return buf.getvalue()


MINI_ROWS = [  # file, split, label, kind, colour
    ("train/00000.webp", "train", "cat", "object", (255, 0, 0)),
    ("train/00001.webp", "train", "", "mixed", (0, 255, 0)),
    ("train/00002.webp", "train", "beach", "scene", (0, 0, 255)),
    ("val/00000.webp", "val", "dog", "object", (255, 255, 0)),
    ("val/00001.webp", "val", "forest", "scene", (0, 255, 255)),
]


@pytest.fixture
def mini_manifest(tmp_path):
    """A colorize256-shaped manifest over two tar shards of 32x32 WebP images."""
    shards = {"train": "train-00.tar", "val": "val.tar"}
    for split, shard in shards.items():
        with tarfile.open(tmp_path / shard, "w") as tar:
            for file, row_split, _, _, colour in MINI_ROWS:
                if row_split == split:
                    data = encode(solid(colour, (32, 32)), "WEBP")
                    info = tarfile.TarInfo(file)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    path = tmp_path / "manifest.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "split", "shard", "source", "label", "kind", "orig_w", "orig_h", "chroma"])
        for file, split, label, kind, _ in MINI_ROWS:
            writer.writerow([file, split, shards[split], "test", label, kind, 32, 32, 50.0])
    return path


def test_folder_is_read_recursively_resized_and_centre_cropped(tmp_path):
    (tmp_path / "sub").mkdir()
    wide = Image.new("RGB", (60, 20), (0, 0, 255))
    wide.paste((255, 0, 0), (20, 0, 40, 20))  # red centre third, blue sides
    wide.save(tmp_path / "sub" / "wide.png")
    solid((0, 200, 0)).convert("L").save(tmp_path / "grey.jpg")
    (tmp_path / "notes.txt").write_text("not an image")

    s = read_images([str(tmp_path)], size=16)
    assert isinstance(s, ImageSet) and len(s) == 2
    assert s.images.shape == (2, 3, 16, 16) and s.images.dtype.is_floating_point is False
    assert s.names == ["grey.jpg", "sub/wide.png"]
    assert s.labels == [None, None] and s.kinds == [None, None]
    centre = s.images[1].permute(1, 2, 0).numpy().astype(int)
    assert (np.abs(centre[4:12, 4:12] - [255, 0, 0]) < 8).all()  # the crop is the red centre
    grey = s.images[0].numpy()
    assert (grey[0] == grey[1]).all() and (grey[1] == grey[2]).all()


def test_folder_and_tar_read_every_image_extension_the_app_reads(tmp_path):
    """The project's one extension list: TIFF and (palette) GIF photos train too, in folders and in tars."""
    colours = {"a.tif": (200, 10, 10), "b.TIFF": (10, 200, 10), "c.gif": (10, 10, 200), "d.bmp": (90, 90, 90)}
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, colour in colours.items():
        solid(colour, (20, 20)).save(folder / name)
    s = read_images([str(folder)], size=20)
    assert s.names == sorted(colours)
    for i, colour in enumerate(colours.values()):
        assert (np.abs(s.images[i, :, 10, 10].numpy().astype(int) - colour) <= 2).all()
    with tarfile.open(tmp_path / "shard.tar", "w") as tar:
        tar.add(folder / "a.tif", "x/a.tif")
        tar.add(folder / "c.gif", "x/c.gif")
    assert read_images([str(tmp_path / "shard.tar")], size=20).names == ["x/a.tif", "x/c.gif"]


def test_tar_shard_and_max_images(tmp_path):
    path = tmp_path / "shard.tar"
    with tarfile.open(path, "w") as tar:
        for i, colour in enumerate([(10, 20, 30), (200, 100, 50), (0, 0, 0)]):
            data = encode(solid(colour, (24, 24)), "PNG")
            info = tarfile.TarInfo(f"train/{i:05d}.png")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    s = read_images([str(path)], size=24)
    assert s.names == ["train/00000.png", "train/00001.png", "train/00002.png"]
    assert s.images[1, :, 5, 5].tolist() == [200, 100, 50]
    assert len(read_images([str(path), str(path)], size=24, max_images=4)) == 4


def test_manifest_split_and_kind_filters(mini_manifest):
    every = read_images([str(mini_manifest)], size=32)
    assert len(every) == 5
    val = read_images([str(mini_manifest)], split="val", size=32)
    assert val.names == ["val/00000.webp", "val/00001.webp"] and val.labels == ["dog", "forest"]
    assert val.images[0, :, 0, 0].tolist() == [255, 255, 0]
    train_objects = read_images([str(mini_manifest)], split="train", kinds=["object", "mixed"], size=32)
    assert train_objects.kinds == ["object", "mixed"]
    assert train_objects.labels == ["cat", None]  # an empty label is unknown
    scenes = read_images([str(mini_manifest)], kinds=["scene"], size=32, max_images=1)
    assert scenes.names == ["train/00002.webp"]


def test_clear_errors(tmp_path, mini_manifest):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_images([str(tmp_path / "nowhere")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        read_images([str(tmp_path / "empty")])
    with pytest.raises(ValueError, match="unknown kind"):
        read_images([str(mini_manifest)], kinds=["people"])
    with pytest.raises(ValueError, match="unknown split"):
        read_images([str(mini_manifest)], split="test")
    (tmp_path / "val.tar").unlink()
    with pytest.raises(FileNotFoundError, match="val.tar"):
        read_images([str(mini_manifest)], split="val")


# ---------------------------------------------------------------------------------------------------------
# Decode once: the cache of decoded images

def test_cache_is_written_once_then_memory_mapped(tmp_path, mini_manifest, monkeypatch):
    cache = tmp_path / "cache"
    first = read_images([str(mini_manifest)], split="train", kinds=["object", "scene"], size=16, cache=cache)
    assert len(list(cache.glob("*.npy"))) == 1 and len(list(cache.glob("*.json"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("the cached images were decoded again")

    monkeypatch.setattr(data_module, "_decode_sources", no_decoding)
    again = read_images([str(mini_manifest)], split="train", kinds=["scene", "object"], size=16, cache=cache)
    assert torch.equal(again.images, first.images)
    assert (again.labels, again.kinds, again.names) == (first.labels, first.kinds, first.names)
    assert again.images.shape == (2, 3, 16, 16)
    # another request (size, split, kinds) is another entry, never the first one's array
    monkeypatch.undo()
    other = read_images([str(mini_manifest)], split="train", size=8, cache=cache)
    assert other.images.shape == (3, 3, 8, 8) and len(list(cache.glob("*.npy"))) == 2


def _rewrite_first_image(manifest, colour):
    """Replace the first training image of the mini manifest's shard with one of another colour."""
    shard = manifest.parent / "train-00.tar"
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar if m.isfile()]
    with tarfile.open(shard, "w") as tar:
        for i, (member, data) in enumerate(members):
            data = encode(solid(colour, (32, 32)), "WEBP") if i == 0 else data
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))


def test_a_stale_cache_is_rebuilt(tmp_path, mini_manifest):
    cache = tmp_path / "cache"
    before = read_images([str(mini_manifest)], split="train", size=16, cache=cache)
    assert before.images[0, :, 8, 8].tolist() == [255, 0, 0]
    _rewrite_first_image(mini_manifest, (0, 0, 0))  # the shard changes: size and mtime
    after = read_images([str(mini_manifest)], split="train", size=16, cache=cache)
    assert after.images[0, :, 8, 8].tolist() == [0, 0, 0]
    assert read_images([str(mini_manifest)], split="train", size=16, cache=cache).images[0, :, 8, 8].tolist() == [0, 0, 0]


@pytest.mark.parametrize("damage", ["no description", "truncated array", "garbled description"])
def test_a_half_written_cache_is_rebuilt_not_used(tmp_path, mini_manifest, damage):
    cache = tmp_path / "cache"
    expected = read_images([str(mini_manifest)], split="train", size=16, cache=cache).images.clone()
    array, meta = next(cache.glob("*.npy")), next(cache.glob("*.json"))
    if damage == "no description":   # killed between writing the array and its description
        meta.unlink()
    elif damage == "truncated array":
        array.write_bytes(array.read_bytes()[:-100])
    else:
        meta.write_text(meta.read_text()[:20])
    rebuilt = read_images([str(mini_manifest)], split="train", size=16, cache=cache)
    assert torch.equal(rebuilt.images, expected)
    assert json.loads(meta.read_text())["shape"] == [3, 3, 16, 16]  # and the entry is whole again
