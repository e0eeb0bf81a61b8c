"""Object proposals for the ParaColorizer foreground colorizer (section III-A).

The paper passes its training images through Mask R-CNN (ResNet-50) and trains the foreground generator on
the full images together with the cropped object proposals. No Mask R-CNN weights can be had offline here;
the YOLOX-nano COCO detector in ``../shared/weights`` next to the repository (``DEFAULT_DETECTOR``; ONNX, run
with onnxruntime) plays its part: only its boxes are used, never masks, so the detector's kind does not
matter to the recipe.

    python -m train.proposals --data ../shared/data/colorize256/manifest.csv --kind object,mixed \\
        --out runs/proposals.npz [--device cuda] [--min-box-size 64]

The ``.npz`` holds ``crops`` (M, 3, 256, 256) uint8, ``boxes`` (M, 4) detected boxes and ``crop_boxes``
(M, 4) the square regions cut, both x0 y0 x1 y1 in the image's pixels, ``scores``, ``classes`` (COCO ids)
and ``image_names``; ``python -m train paracolorizer_fg --proposals FILE`` reads it.

Choice: each crop is the square around its box (side = the box's longer side, moved inside the image) so that
resizing it to 256 x 256 does not distort the object.

Resolution: colorize256 holds its images at 256 x 256 only, so detection runs on those (letterboxed up to
416 for the detector) and crops are cut from them: there are no more pixels to crop from. Unlike the paper's
crops from full-size COCO photos, every crop here is *up-sampled*, by ``crop size / box side`` -- a 32 px box
8x, a 64 px box 4x. Such crops are blurry, and a generator trained on them learns blur, so boxes whose longer
side is under ``--min-box-size`` pixels (of the image as read, ``--image-size``) are dropped. The default, 64
px, caps the up-sampling at 4x for 256 px crops and still keeps the main object of most photos; raise it for
sharper but fewer crops, lower it for more and blurrier ones.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import batched_nms
from tqdm import tqdm

from .data import ImageSet, read_images

#: YOLOX-nano (COCO) as ONNX, in the shared weights folder next to the repository (as the LPIPS backbone).
SHARED_WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights"
DEFAULT_DETECTOR = SHARED_WEIGHTS / "yolox_nano.onnx"
#: Shortest kept box (its longer side, pixels of the image as read): crops are up-sampled at most 256/64 = 4x.
DEFAULT_MIN_BOX_SIZE = 64
INPUT_SIZE = 416
STRIDES = (8, 16, 32)
PAD_VALUE = 114  # YOLOX's letterbox grey


@dataclass
class Detections:
    boxes: np.ndarray    # (K, 4) float32, x0 y0 x1 y1 in the image's pixels
    scores: np.ndarray   # (K,) objectness x class probability
    classes: np.ndarray  # (K,) COCO class index (0..79)


def letterbox(image: np.ndarray, size: int = INPUT_SIZE) -> tuple[np.ndarray, float]:
    """(H, W, 3) uint8 RGB -> the detector's input (1, 3, size, size) float32 BGR 0-255, the image resized
    by ``ratio`` (aspect kept) into the top-left corner of a grey canvas, as YOLOX's ``preproc``."""
    h, w = image.shape[:2]
    ratio = min(size / h, size / w)
    new_h, new_w = int(round(h * ratio)), int(round(w * ratio))
    resized = F.interpolate(torch.tensor(image).permute(2, 0, 1)[None].float(), size=(new_h, new_w),
                            mode="bilinear", align_corners=False, antialias=True)[0]
    canvas = torch.full((3, size, size), float(PAD_VALUE))
    canvas[:, :new_h, :new_w] = resized.round().clamp(0, 255)
    return canvas.flip(0)[None].numpy(), ratio  # RGB -> BGR


def grid_and_strides(size: int = INPUT_SIZE, strides=STRIDES) -> tuple[np.ndarray, np.ndarray]:
    """Cell offsets (N, 2) and stride (N, 1) of every output row, level by level (8, 16, 32)."""
    grids, expanded = [], []
    for stride in strides:
        n = size // stride
        ys, xs = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        grids.append(np.stack([xs, ys], axis=-1).reshape(-1, 2))
        expanded.append(np.full((n * n, 1), stride))
    return np.concatenate(grids).astype(np.float32), np.concatenate(expanded).astype(np.float32)


def decode(output: np.ndarray, score_threshold: float = 0.3, nms_threshold: float = 0.45,
           size: int = INPUT_SIZE) -> Detections:
    """YOLOX's raw output (N, 85): cx, cy, log w, log h (grid-relative), objectness, 80 class probabilities
    -> boxes in input pixels after a score threshold and per-class NMS, best first."""
    grid, stride = grid_and_strides(size)
    if output.shape[0] != grid.shape[0]:
        raise ValueError(f"detector output has {output.shape[0]} rows, expected {grid.shape[0]} for {size}x{size}")
    centre = (output[:, :2] + grid) * stride
    wh = np.exp(output[:, 2:4]) * stride
    class_scores = output[:, 5:] * output[:, 4:5]
    classes = class_scores.argmax(1)
    scores = class_scores[np.arange(len(classes)), classes]
    keep = scores >= score_threshold
    boxes = np.concatenate([centre - wh / 2, centre + wh / 2], axis=1)[keep]
    scores, classes = scores[keep], classes[keep]
    kept = batched_nms(torch.from_numpy(boxes).float(), torch.from_numpy(scores).float(),
                       torch.from_numpy(classes), nms_threshold).numpy()  # sorted by score
    return Detections(boxes[kept].astype(np.float32), scores[kept].astype(np.float32), classes[kept])


class Detector:
    """YOLOX-nano through onnxruntime: ``detect(image) -> Detections`` in the image's own pixels."""

    def __init__(self, path: str | Path = DEFAULT_DETECTOR, device: str = "cpu", score_threshold: float = 0.3,
                 nms_threshold: float = 0.45):
        import onnxruntime

        if not Path(path).is_file():
            raise FileNotFoundError(f"detector {path} not found (see {SHARED_WEIGHTS / 'README.md'})")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else ["CPUExecutionProvider"]
        self.session = onnxruntime.InferenceSession(str(path), providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold

    def raw_output(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        blob, ratio = letterbox(image)
        return self.session.run(None, {self.input_name: blob})[0][0], ratio

    def detect(self, image: np.ndarray) -> Detections:
        """(H, W, 3) uint8 RGB -> detections, boxes clipped to the image."""
        output, ratio = self.raw_output(image)
        found = decode(output, self.score_threshold, self.nms_threshold)
        h, w = image.shape[:2]
        found.boxes = np.clip(found.boxes / ratio, 0, [w, h, w, h]).astype(np.float32)
        return found


def square_crop_box(box: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """The square of side max(box w, box h) centred on ``box``, shifted inside the image (and no larger)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    side = min(max(x1 - x0, y1 - y0), width, height)
    left = min(max((x0 + x1 - side) / 2, 0.0), width - side)
    top = min(max((y0 + y1 - side) / 2, 0.0), height - side)
    left, top, side = int(round(left)), int(round(top)), int(round(side))
    return left, top, min(left + side, width), min(top + side, height)


def crop_and_resize(image: torch.Tensor, crop_box: tuple[int, int, int, int], size: int) -> torch.Tensor:
    """(3, H, W) uint8 -> the region resized to (3, size, size) uint8 (bilinear, anti-aliased)."""
    x0, y0, x1, y1 = crop_box
    region = image[:, y0:y1, x0:x1][None].float()
    resized = F.interpolate(region, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return resized[0].round().clamp(0, 255).to(torch.uint8)


def propose(images: ImageSet, detector: Detector, size: int = 256, max_per_image: int = 2,
            min_box_size: int = DEFAULT_MIN_BOX_SIZE) -> dict[str, np.ndarray]:
    """Detect objects in every image and cut the best ``max_per_image`` boxes whose longer side is at least
    ``min_box_size`` pixels of the image (so no crop is up-sampled more than ``size / min_box_size`` times),
    each resized to ``size``; arrays for ``np.savez``."""
    if min_box_size < 1:
        raise ValueError(f"the minimum box size must be at least 1 pixel, got {min_box_size}")
    crops, boxes, crop_boxes, scores, classes, names = [], [], [], [], [], []
    for image, name in tqdm(zip(images.images, images.names), total=len(images), desc="proposals", unit="img"):
        found = detector.detect(image.permute(1, 2, 0).numpy())
        h, w = image.shape[-2:]
        taken = 0
        for box, score, cls in zip(found.boxes, found.scores, found.classes):
            if taken == max_per_image:
                break
            if max(box[2] - box[0], box[3] - box[1]) < min_box_size:
                continue
            crop_box = square_crop_box(box, w, h)
            crops.append(crop_and_resize(image, crop_box, size))
            boxes.append(box)
            crop_boxes.append(crop_box)
            scores.append(score)
            classes.append(cls)
            names.append(name)
            taken += 1
    return {
        "crops": torch.stack(crops).numpy() if crops else np.zeros((0, 3, size, size), np.uint8),
        "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
        "crop_boxes": np.asarray(crop_boxes, np.int32).reshape(-1, 4),
        "scores": np.asarray(scores, np.float32),
        "classes": np.asarray(classes, np.int64),
        "image_names": np.asarray(names, dtype=str),
    }


def read_proposal_crops(path: str, size: int = 256) -> ImageSet:
    """The crops of a ``train.proposals`` file as an :class:`ImageSet` (kind "proposal"), at ``size``."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"proposals file {path} not found; make it with `python -m train.proposals`")
    with np.load(path) as archive:
        crops = torch.from_numpy(archive["crops"])
        names = [f"{name}#{i}" for i, name in enumerate(archive["image_names"].tolist())]
    if len(crops) == 0:
        raise ValueError(f"{path} holds no proposals")
    if crops.shape[-1] != size:
        crops = F.interpolate(crops.float(), size=(size, size), mode="bilinear", antialias=True,
                              align_corners=False).round().clamp(0, 255).to(torch.uint8)
    return ImageSet(crops, [None] * len(crops), ["proposal"] * len(crops), names)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m train.proposals", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", action="append", required=True, metavar="PATH", help="folder, tar or manifest.csv")
    p.add_argument("--out", required=True, help="output .npz, or a folder to hold proposals.npz")
    p.add_argument("--split", default="train")
    p.add_argument("--kind", dest="kinds", type=lambda s: [k for k in s.split(",") if k], help="manifest kinds")
    p.add_argument("--max-images", type=int)
    p.add_argument("--image-size", type=int, default=256,
                   help="images are read (resized, centre-cropped) at this size; detection and cropping run on them")
    p.add_argument("--size", type=int, default=256, help="crop size (the training size)")
    p.add_argument("--max-per-image", type=int, default=2)
    p.add_argument("--min-box-size", type=int, default=DEFAULT_MIN_BOX_SIZE, metavar="PX",
                   help="drop boxes whose longer side is under PX pixels of the --image-size image: a kept crop is "
                        "up-sampled at most SIZE/PX times (crops from small boxes are blurry)")
    p.add_argument("--score-threshold", type=float, default=0.3)
    p.add_argument("--nms-threshold", type=float, default=0.45)
    p.add_argument("--detector", default=str(DEFAULT_DETECTOR), help="YOLOX ONNX file")
    p.add_argument("--device", default="cpu", help="cpu or cuda (onnxruntime's CUDA provider when installed)")
    args = p.parse_args(argv)
    out = Path(args.out)
    if out.suffix != ".npz":
        out = out / "proposals.npz"
    try:
        detector = Detector(args.detector, args.device, args.score_threshold, args.nms_threshold)
        images = read_images(args.data, split=args.split, kinds=args.kinds, size=args.image_size,
                             max_images=args.max_images)
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f"error: {err}")
    arrays = propose(images, detector, args.size, args.max_per_image, args.min_box_size)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **arrays)
    print(f"wrote {len(arrays['crops'])} proposals from {len(images)} images to {out}")


if __name__ == "__main__":
    main()
