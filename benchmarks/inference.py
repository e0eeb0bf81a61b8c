"""Inference benchmark (not a test): per-model latency, ParaColorizer next to the paper's 24 ms, batched throughput,
the app's whole compare request (1024x768, and at the pixel cap) and its resident memory. Prints one table with the targets beside the numbers,
float32 and bf16 (autocast + channels-last, ``colorizers/precision.py``) side by side.

    python benchmarks/inference.py                       # the bundled weights (or $COLORIZERS_WEIGHTS)
    python benchmarks/inference.py --weights ROOT        # a weights root: folder or Hub repo id[@revision]
    python benchmarks/inference.py --random-weights      # untrained default-width networks, for timing only
    python benchmarks/inference.py --random-weights --config paracolorizer_bg.width=64   # ... at another width
    python benchmarks/inference.py --precisions fp32     # one precision only (default: fp32 and bf16)
    python benchmarks/inference.py --compile             # also paracolorizer under torch.compile (not the app's)

Latency is the median of ``--repeats`` runs after ``--warmup`` runs, with CUDA synchronised around each run. A model's
latency is the whole pipeline at 256x256 (resize, network, up-sampling, recombination) except for
``paracolorizer (network only)``, which times ParaColorizer's networks alone, as the paper's 24 ms does.
bf16 is measured even where the device does not do it natively (there it is emulated, and slower); the header says
which precision the app's ``auto`` picks here. The request at the pixel cap runs in that precision only, and the
peak resident memory covers the runs of every precision measured.
"""
from __future__ import annotations

import argparse
import gc
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import app  # noqa: E402  (the app's own compare request is measured)
import colorizers  # noqa: E402
from colorizers.precision import autocast, cpu_has_native_bf16, memory_format, resolve_precision  # noqa: E402
from benchmarks.random_weights import describe, network_setting, write_timing_weights  # noqa: E402

PAPER_PARACOLORIZER_MS = 24.0  # ParaColorizer section V: test time per image on a GTX 1080
COMPARE_PHOTO = ROOT / "assets" / "examples" / "boats.jpg"
COLOUR_PHOTO = ROOT / "assets" / "study" / "boats.jpg"  # the same photo in colour: reference mode scores it
COMPARE_SIZE = (1024, 768)


@dataclass(frozen=True)
class Timing:
    median: float  # seconds
    best: float  # the fastest run: the least disturbed by other work on a shared machine

    def ms(self) -> str:
        return f"{self.median * 1e3:.1f} ms (best {self.best * 1e3:.1f})"


def measure(fn: Callable[[], object], device: str, warmup: int, repeats: int) -> Timing:
    """Wall-clock time of ``fn()`` over ``repeats`` runs after ``warmup`` runs, synchronising CUDA around each."""
    def run() -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start
    for _ in range(warmup):
        run()
    times = [run() for _ in range(repeats)]
    return Timing(statistics.median(times), min(times))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class Table:
    """One row per measurement and device, one result column per precision (filled as each precision runs)."""

    def __init__(self, precisions: list[str]):
        self.precisions = list(precisions)
        self.rows: dict[tuple[str, str], dict[str, str]] = {}
        self.targets: dict[tuple[str, str], str] = {}

    def add(self, what: str, device: str, precision: str, value: str, target: str = "") -> None:
        self.rows.setdefault((what, device), {})[precision] = value
        if precision not in self.precisions:
            self.precisions.append(precision)
        if target:
            self.targets[(what, device)] = target
        print(f"  {what} [{device}, {precision}]: {value}", file=sys.stderr, flush=True)  # progress while it runs

    def print(self) -> None:
        header = ("measurement", "device", *self.precisions, "target / reference")
        rows = [(what, device, *(values.get(p, "") for p in self.precisions), self.targets.get((what, device), ""))
                for (what, device), values in self.rows.items()]
        widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
        for row in (header, tuple("-" * w for w in widths), *rows):
            print(" | ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def bench_device(available: dict, device: str, precision: str, source: str | None, args, table: Table) -> None:
    models = available if device == "cpu" else \
        colorizers.load_colorizers(list(available), source, device, precision)[0]
    l_256 = torch.rand(1, 1, 256, 256) * 100
    for name, colorizer in models.items():
        timing = measure(lambda: colorizer.colorize_l(l_256), device, args.warmup, args.repeats)
        target = f"paper: {PAPER_PARACOLORIZER_MS:g} ms on a GTX 1080" if name == "paracolorizer" else ""
        table.add(f"{name} latency, 1 image 256x256", device, precision, timing.ms(), target)
    if "paracolorizer" not in models:
        return
    para = models["paracolorizer"].model
    with torch.inference_mode(), autocast(device, precision):
        l_dev = l_256.to(device, memory_format=memory_format(precision))
        timing = measure(lambda: para.predict_all(l_dev), device, args.warmup, args.repeats)
        target = f"<= 3 ms on an H100; paper: {PAPER_PARACOLORIZER_MS:g} ms" if device == "cuda" else \
            f"paper: {PAPER_PARACOLORIZER_MS:g} ms on a GTX 1080"
        table.add("paracolorizer (network only), 1 image", device, precision, timing.ms(), target)
        if args.compile:  # not what the app runs: how much a compiler could still take off the eager networks
            import torch._inductor.config as inductor_config
            inductor_config.freezing = True  # inference only: the weights become constants, folded and pre-packed
            compiled = torch.compile(para.predict_all)
            start = time.perf_counter()
            compiled(l_dev)
            compile_seconds = time.perf_counter() - start
            timing = measure(lambda: compiled(l_dev), device, args.warmup, args.repeats)
            table.add("  the same under torch.compile (inductor, frozen weights)", device, precision,
                      f"{timing.ms()}; compiling took {compile_seconds:.0f} s")
        if device == "cuda":
            batch = (torch.rand(args.batch, 1, 256, 256, device=device) * 100).contiguous(
                memory_format=memory_format(precision))
            timing = measure(lambda: para.predict_all(batch), device, args.warmup, args.repeats)
            table.add(f"paracolorizer (network only), batch {args.batch}", device, precision,
                      f"{args.batch / timing.median:.0f} images/s (best {args.batch / timing.best:.0f})",
                      "> 3000 images/s on an H100")


def bench_compare(available: dict, settings: app.Settings, precision: str, args, table: Table) -> None:
    """The Compare button's whole request (read, colorize with every model, save PNGs and the zip) on a
    1024x768 photo, through ``app.run_comparison``."""
    with tempfile.TemporaryDirectory() as tmp:
        photo = Path(tmp) / "photo-1024x768.png"
        Image.open(COMPARE_PHOTO).convert("L").resize(COMPARE_SIZE).save(photo)
        def request():
            return app.run_comparison(str(photo), list(available), available, settings, tmp)
        timing = measure(request, "cpu", 1, args.compare_repeats)
        comparison, _ = request()
    per_model = ", ".join(f"{n} {r.seconds * 1e3:.0f}" for n, r in comparison.results.items())
    table.add(f"compare request, {len(available)} models, 1024x768 photo", settings.device, precision,
              f"{timing.median:.2f} s (best {timing.best:.2f})", "<= 2 s on a 2-core CPU")
    table.add("  of which colorizing, one more run (ms per model)", settings.device, precision,
              f"{comparison.seconds:.2f} s: {per_model}")
    with tempfile.TemporaryDirectory() as tmp:
        photo = Path(tmp) / "colour-1024x768.png"
        Image.open(COLOUR_PHOTO).convert("RGB").resize(COMPARE_SIZE).save(photo)
        timing = measure(lambda: app.run_comparison(str(photo), list(available), available, settings, tmp), "cpu", 1,
                         args.compare_repeats)
    table.add("  the same, reference mode (a colour photo, scored)", settings.device, precision,
              f"{timing.median:.2f} s (best {timing.best:.2f})")


def bench_compare_at_cap(available: dict, settings: app.Settings, precision: str, table: Table,
                         colour: bool = False) -> None:
    """One compare request for the largest photo the app accepts (``settings.max_pixels``, 4:3): its time, and the
    process's peak resident memory after it (the app's worst case). ``colour``: a colour photo, so reference mode
    scores it too (run it after the grey one: the peak is the process's)."""
    width = int((settings.max_pixels * 4 / 3) ** 0.5)
    height = settings.max_pixels // width
    what = "reference-mode (colour) " if colour else ""
    with tempfile.TemporaryDirectory() as tmp:
        photo = Path(tmp) / f"photo-{width}x{height}.png"
        source = Image.open(COLOUR_PHOTO if colour else COMPARE_PHOTO).convert("RGB" if colour else "L")
        source.resize((width, height)).save(photo, compress_level=1)
        start = time.perf_counter()
        app.run_comparison(str(photo), list(available), available, settings, tmp)
        seconds = time.perf_counter() - start
    table.add(f"{what}compare request at the pixel cap, {width}x{height}", settings.device, precision,
              f"{seconds:.1f} s")
    table.add(f"app peak resident memory, after the {what}cap request", "cpu", precision, f"{peak_rss_mb():.0f} MB",
              "<= 2 GB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--weights", help="weights root (default: $COLORIZERS_WEIGHTS or the bundled assets/weights)")
    source.add_argument("--random-weights", action="store_true",
                        help="untrained networks in a temporary folder, at default widths unless --config: timing only")
    parser.add_argument("--config", action="append", type=network_setting, default=[], metavar="NETWORK.KEY=VALUE",
                        help="with --random-weights: build NETWORK with KEY=VALUE (repeatable), e.g. "
                             "paracolorizer_bg.width=64")
    parser.add_argument("--threads", type=int, default=app.Settings().threads,
                        help="torch CPU threads (default: the app's, the CPUs this process may use)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--compare-repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256, help="batch size of the CUDA throughput run")
    parser.add_argument("--skip-cap", action="store_true", help="skip the compare request at the pixel cap")
    parser.add_argument("--compile", action="store_true",
                        help="also time paracolorizer's networks under torch.compile (the app does not compile)")
    parser.add_argument("--precisions", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"],
                        help="the precisions to measure, side by side (default: both)")
    args = parser.parse_args(argv)
    if args.config and not args.random_weights:
        parser.error("--config sets the shape of --random-weights networks; trained weights carry their own config")

    settings = app.Settings(threads=args.threads)  # otherwise the app's defaults (CPU)
    torch.set_num_threads(settings.threads)
    app_precision = resolve_precision(None, settings.device)  # what the app's auto (or $COLORIZERS_PRECISION) runs
    precisions = list(dict.fromkeys(args.precisions))
    with tempfile.TemporaryDirectory() as tmp:
        source = write_timing_weights(Path(tmp), args.config) if args.random_weights else args.weights
        weights_note = (describe(args.config) if args.random_weights
                        else f"weights: {colorizers.weights.describe_source(source)}")
        print(f"# Inference benchmark: {weights_note}")
        print(f"# torch {torch.__version__}, {settings.threads} CPU thread(s)"
              + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no CUDA device"))
        print(f"# CPU does bf16 natively: {'yes' if cpu_has_native_bf16() else 'no (bf16 is emulated, slower)'}; "
              f"the app runs {app_precision} on {settings.device}")

        table = Table(precisions)
        rss_loaded = None
        for precision in precisions:
            available, unavailable = colorizers.load_colorizers(source=source, precision=precision)
            gc.collect()
            rss_loaded = rss_loaded or peak_rss_mb()
            if precision == precisions[0]:
                for name, reason in unavailable.items():
                    print(f"# {name} not measured: {reason}")
            if not available:
                print("# nothing to measure: no model has weights (use --random-weights to time untrained networks)")
                return 1
            bench_device(available, "cpu", precision, source, args, table)
            bench_compare(available, settings, precision, args, table)
            names = list(available)
            del available
            gc.collect()
        # Before any CUDA work, whose context would count too: the app's imports, its models, compare requests.
        table.add("app peak resident memory, over the runs above", "cpu", precisions[0],
                  f"{peak_rss_mb():.0f} MB ({rss_loaded:.0f} MB once all models were loaded)", "<= 2 GB")
        if not args.skip_cap:
            available = colorizers.load_colorizers(source=source, precision=app_precision)[0]
            bench_compare_at_cap(available, settings, app_precision, table)
            bench_compare_at_cap(available, settings, app_precision, table, colour=True)
            del available
        if torch.cuda.is_available():
            for precision in precisions:
                bench_device(dict.fromkeys(names), "cuda", precision, source, args, table)
        print()
        table.print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
