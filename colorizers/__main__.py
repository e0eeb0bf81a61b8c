"""Batch colorization: ``python -m colorizers INPUT... --model NAME [--model NAME ...|all] --out DIR``.

INPUTs are image files or folders (searched recursively for image files). Each result is written as a PNG (lossless,
so it keeps the input's lightness exactly) to ``DIR/<model>/<path relative to its folder>.png``; a file given
directly keeps just its name. Unreadable files are reported and skipped, and the exit status is 1 if any failed.

With ``--reference``, each colour photo (``colorizers.reference``: at least 1 % of its pixels with Lab chroma >= 15)
is also its own ground truth: the models colour its grey version, and ``DIR/metrics.csv`` gets one row per photo
and model (PSNR, SSIM, colourfulness and chroma against the original, at full resolution) plus one ``mean`` row
per model. Grey photos are colorized but not scored.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError

from . import MODEL_NAMES, PRECISION_ENV, PRECISIONS, load_colorizers, reference, resolve_precision
from .compare import colorize_models
from .imagefile import open_image
from .pipeline import IMAGE_EXTENSIONS
from .weights import WEIGHTS_ENV, describe_source



def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m colorizers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="image files or folders")
    parser.add_argument("--model", action="append", required=True, choices=(*MODEL_NAMES, "all"), metavar="NAME",
                        help=f"a model to run ({', '.join(MODEL_NAMES)}); repeat for several, or 'all'")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--weights", help=f"weights root: a folder or a Hub repo id[@revision] "
                                          f"(default: ${WEIGHTS_ENV} or the bundled assets/weights)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--reference", action="store_true",
                        help="score each colour photo's results against its real colours: OUT/metrics.csv, one row "
                             "per photo and model plus each model's mean (grey photos are not scored)")
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="auto: bf16 autocast + channels-last where the device does bf16 natively, float32 "
                             f"elsewhere; bf16 or fp32 forces it (default: ${PRECISION_ENV} or auto)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    try:
        args.precision = resolve_precision(args.precision, args.device)  # only $COLORIZERS_PRECISION can be bad here
    except ValueError as err:
        parser.error(f"${PRECISION_ENV}: {err}")
    args.model = list(MODEL_NAMES) if "all" in args.model else list(dict.fromkeys(args.model))
    return args


def find_images(inputs: list[Path]) -> tuple[dict[Path, Path], list[str]]:
    """Input file -> its output path relative to ``DIR/<model>``, and problems with the inputs themselves."""
    found: dict[Path, Path] = {}
    problems: list[str] = []
    for item in inputs:
        if item.is_dir():
            files = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not files:
                problems.append(f"{item}: no image files in this folder")
            found.update((p, p.relative_to(item).with_suffix(".png")) for p in files)
        elif item.is_file():
            found[item] = Path(item.name).with_suffix(".png")
        else:
            problems.append(f"{item}: no such file or folder")
    seen: dict[Path, Path] = {}
    for source, relative in found.items():
        if relative in seen:
            problems.append(f"{source} and {seen[relative]} would both be written as {relative}; "
                            "give their folders instead, or run them separately")
        seen.setdefault(relative, source)
    return found, problems


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    images, problems = find_images(args.inputs)
    if problems:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    models, unavailable = load_colorizers(args.model, source=args.weights, device=args.device,
                                          precision=args.precision)
    if unavailable:
        for name, reason in unavailable.items():
            print(f"error: model {name} is unavailable: {reason}", file=sys.stderr)
        print(f"error: no weights for {len(unavailable)} model(s) in {describe_source(args.weights)}",
              file=sys.stderr)
        return 2

    start = time.perf_counter()
    failed: dict[Path, str] = {}
    scored: list[tuple[str, reference.Score]] = []
    grey: list[Path] = []
    for source, relative in images.items():
        try:
            with open_image(source) as image:
                image.load()
                original = reference.colour_original(image) if args.reference else None
                # one comparison: L computed once, ParaColorizer's generators shared with fg/bg
                results = {name: r.image for name, r in colorize_models(image, models).results.items()}
            if args.reference and original is None:
                grey.append(source)
            elif original is not None:
                photo = relative.with_suffix(source.suffix).as_posix()
                scored += [(photo, score) for score in reference.score(original, results).values()]
                del original
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as err:
            failed[source] = f"{type(err).__name__}: {err}"
            print(f"skipped {source}: cannot read it as an image ({failed[source]})", file=sys.stderr)
            continue
        for name, result in results.items():
            target = args.out / name / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            result.save(target)
        print(f"{source} -> {args.out}/{{{','.join(models)}}}/{relative}")

    done = len(images) - len(failed)
    print(f"colorized {done} of {len(images)} image(s) with {len(models)} model(s) "
          f"({', '.join(models)}; {args.device}, {args.precision}) in {time.perf_counter() - start:.1f} s; "
          f"results in {args.out}")
    if args.reference:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "metrics.csv").write_text(reference.csv_text(scored, with_means=True), encoding="utf-8")
        photos = len({photo for photo, _ in scored})
        print(f"scored {photos} colour photo(s) against their real colours: {args.out / 'metrics.csv'}"
              + (f"; not scored, grey: {', '.join(map(str, grey))}" if grey else ""))
    if failed:
        print(f"{len(failed)} file(s) could not be read: {', '.join(map(str, failed))}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
