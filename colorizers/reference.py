"""Reference mode: when the photo to colour is a colour photo, score each model's result against its real colours.

The models only ever see the photo's lightness (L), so a colour photo can serve as its own ground truth: each
result is compared with the original at the full resolution of the upload, with the metrics of
``train.evaluate`` (``colorizers.metrics``, which ``train.metrics`` re-exports) plus the chroma ratio. The app's
Compare tab and the batch tool's ``--reference`` flag both use this module.

Whether a photo counts as colour is decided from its CIE Lab chroma: at least ``COLOUR_SHARE`` (1 %) of its pixels
must have a chroma of ``COLOUR_CHROMA`` (15) or more. A scan with a faint warm or cool cast (chroma well under 15
everywhere) stays grey; a strongly toned print (deep sepia) counts as colour, and its toning is then the
"real colour" the models are scored against.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
from PIL import Image, ImageOps

from . import metrics
from .pipeline import image_to_rgb_array

COLOUR_CHROMA = 15.0
COLOUR_SHARE = 0.01

#: The table's metrics: (field, header, what is best, decimals). "high": the highest value; "zero": the smallest
#: absolute value; "one": the value closest to 1 (on a log scale, so half and double are equally far).
METRICS = (
    ("psnr", "PSNR (dB)", "high", 2),
    ("ssim", "SSIM", "high", 3),
    ("delta_colourfulness", "Δ colourfulness", "zero", 2),
    ("chroma_ratio", "Chroma ratio", "one", 2),
)
METRIC_NAMES = tuple(name for name, *_ in METRICS)
BEST_MARK = "★"
#: One line on what each metric rewards, shown under the table.
METRICS_NOTE = (
    "PSNR and SSIM reward being close to the original pixel by pixel, so a cautious, greyish result can score well "
    "(both papers warn of this); Δ colourfulness (result − original, Hasler–Süsstrunk) and the chroma ratio (mean "
    "Lab chroma, result ÷ original) reward having as much colour as the original, wherever it is put. None of them "
    "says whether a result looks real."
)
#: Why the table has no LPIPS (docs/app.md gives the measurements).
LPIPS_NOTE = (
    "LPIPS is left out: its AlexNet backbone would fit the weights budget, but at the full resolution used here it "
    "would take minutes and several GB of memory on a large photo; `python -m train.evaluate` reports it."
)
MEAN = "mean"


@dataclass(frozen=True)
class Score:
    """One result against its original. ``delta_colourfulness`` is signed: negative means duller than the original."""

    model: str
    psnr: float
    ssim: float
    colourfulness: float           # of the result
    original_colourfulness: float
    delta_colourfulness: float     # colourfulness - original_colourfulness
    chroma: float                  # mean Lab chroma of the result
    original_chroma: float
    chroma_ratio: float            # chroma / original_chroma


#: Image modes that hold no colour at all: such an upload is grey without looking at its pixels.
_GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def _as_batch(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) array -> a (1, 3, H, W) view of it (no copy; the metrics read it in bands of rows, and read uint8
    as 8-bit sRGB)."""
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None]


def _pixels(image: Image.Image) -> torch.Tensor:
    """An 8-bit RGB image's pixels as a ``(1, 3, H, W)`` uint8 tensor (one writable copy, made by numpy)."""
    if image.mode != "RGB":
        raise ValueError(f"expected an 8-bit RGB image, got mode {image.mode!r}")
    return _as_batch(np.array(image))


def is_colour(rgb: torch.Tensor) -> bool:
    """Whether a ``(1, 3, H, W)`` sRGB image (float in [0, 1], or uint8) counts as a colour photo (see the module
    docstring)."""
    return metrics.chroma_share(rgb, COLOUR_CHROMA)[0].item() >= COLOUR_SHARE


def colour_original(image: Image.Image) -> Image.Image | None:
    """The image as 8-bit RGB, read as the pipeline reads it (EXIF orientation applied, transparency over white),
    if it is a colour photo; ``None`` for a grey one. Kept in 8 bits (a quarter of float32) while the models run."""
    if image.mode in _GREY_MODES:
        return None
    if image.mode == "RGB":  # the common case, without float copies: the pipeline's reading of it is exactly /255
        rgb = np.array(ImageOps.exif_transpose(image) or image)
    else:
        rgb = (image_to_rgb_array(image) * 255.0 + 0.5).astype(np.uint8)
    if not is_colour(_as_batch(rgb)):
        return None
    return Image.fromarray(rgb, "RGB")


def score(original: Image.Image, results: dict[str, Image.Image]) -> dict[str, Score]:
    """Score each model's result image (8-bit RGB, the original's size) against the ``original`` (8-bit RGB), at
    full resolution. The metrics read both as 8-bit sRGB (value / 255, as the pipeline reads images) band by band,
    so no full-size float copy of either exists."""
    original = _pixels(original)
    original_colourfulness = metrics.colourfulness(original).item()
    original_chroma = metrics.mean_chroma(original).item()
    scores = {}
    for name, image in results.items():
        result = _pixels(image)
        if result.shape != original.shape:
            raise ValueError(f"{name}'s result is {tuple(result.shape)}, the original {tuple(original.shape)}")
        colour, chroma = metrics.colourfulness(result).item(), metrics.mean_chroma(result).item()
        scores[name] = Score(
            model=name,
            psnr=metrics.psnr(result, original).item(),
            ssim=metrics.ssim(result, original).item(),
            colourfulness=colour,
            original_colourfulness=original_colourfulness,
            delta_colourfulness=colour - original_colourfulness,
            chroma=chroma,
            original_chroma=original_chroma,
            chroma_ratio=chroma / original_chroma,  # a colour photo has a mean chroma above 0.15 (1 % at >= 15)
        )
        del result
    return scores


def _badness(metric: str, value: float) -> float:
    """Smaller is better, for sorting and for finding the best value."""
    goal = next(goal for name, _, goal, _ in METRICS if name == metric)
    if math.isnan(value):
        return math.inf
    if goal == "high":
        return -value
    if goal == "zero":
        return abs(value)
    return abs(math.log(value)) if value > 0 else math.inf


def ranked(scores: dict[str, Score], metric: str) -> list[Score]:
    """The scores from best to worst by ``metric`` (ties keep the models' order)."""
    if metric not in METRIC_NAMES:
        raise ValueError(f"unknown metric {metric!r}; one of {', '.join(METRIC_NAMES)}")
    return sorted(scores.values(), key=lambda s: _badness(metric, getattr(s, metric)))


def best(scores: dict[str, Score], metric: str) -> set[str]:
    """The models with the best value of ``metric`` (several when tied)."""
    top = min(_badness(metric, getattr(s, metric)) for s in scores.values())
    return {s.model for s in scores.values() if _badness(metric, getattr(s, metric)) == top}


def format_value(metric: str, value: float) -> str:
    decimals = next(d for name, _, _, d in METRICS if name == metric)
    text = f"{value:+.{decimals}f}" if metric == "delta_colourfulness" else f"{value:.{decimals}f}"
    return "∞" if math.isinf(value) else text


def table_markdown(scores: dict[str, Score], titles: dict[str, str], sort_by: str) -> str:
    """A Markdown table, one row per model, sorted by ``sort_by``; the best value of each column is bold and
    starred."""
    goals = {"high": "↑", "zero": "→ 0", "one": "→ 1"}
    header = "| Model | " + " | ".join(f"{title} {goals[goal]}" for _, title, goal, _ in METRICS) + " |"
    lines = [header, "|---|" + "---:|" * len(METRICS)]
    winners = {metric: best(scores, metric) for metric in METRIC_NAMES}
    for s in ranked(scores, sort_by):
        cells = []
        for metric in METRIC_NAMES:
            text = format_value(metric, getattr(s, metric))
            cells.append(f"**{text}** {BEST_MARK}" if s.model in winners[metric] else text)
        lines.append(f"| {titles.get(s.model, s.model)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


CSV_FIELDS = ("photo", *(f.name for f in fields(Score)))


def means(rows: list[tuple[str, Score]]) -> list[Score]:
    """Per model, the mean of each number over the photos (in the models' first-seen order). A mean over a photo
    with an infinite PSNR (an exact result) is infinite, as in ``train.evaluate``."""
    by_model: dict[str, list[Score]] = {}
    for _, s in rows:
        by_model.setdefault(s.model, []).append(s)
    numeric = [f.name for f in fields(Score) if f.name != "model"]
    return [Score(model=model, **{name: sum(getattr(s, name) for s in group) / len(group) for name in numeric})
            for model, group in by_model.items()]


def csv_text(rows: list[tuple[str, Score]], with_means: bool) -> str:
    """CSV with one row per (photo, model) and, if ``with_means``, one ``mean`` row per model (photo = ``mean``)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    table = rows + ([(MEAN, s) for s in means(rows)] if with_means else [])
    for photo, s in table:
        writer.writerow({"photo": photo, **{k: (f"{v:.6f}" if isinstance(v, float) else v)
                                            for k, v in asdict(s).items()}})
    return buffer.getvalue()
