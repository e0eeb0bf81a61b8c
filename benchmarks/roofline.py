"""What this machine can do at all: its best convolution rate in float32 and bf16, each model's multiply-adds, and
the latency floor they give (not a test).

A network cannot run faster than its multiply-adds divided by the best rate the hardware reaches on convolutions
of the shapes these networks are made of, so a latency target below that floor needs other hardware or a smaller
network, not better code. The floor is optimistic: it assumes every layer runs at the best layer's rate and that
everything else (normalisation, activations, the colour conversions, the first 1- and 3-channel convolutions,
which reach far less) is free. The ratio of the two peaks bounds bf16's speed-up over float32 wherever the
arithmetic dominates: about 2x for AVX512-BF16 (two bf16 products per float32 lane), several times more with
AMX-BF16's tile units or a GPU's tensor cores.

    python benchmarks/roofline.py                  # 2 torch threads, the bundled weights' networks
    python benchmarks/roofline.py --threads 1 --repeats 20
    python benchmarks/roofline.py --random-weights --config paracolorizer_bg.width=64   # a width not trained yet
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import colorizers  # noqa: E402
from colorizers.precision import cpu_has_native_bf16  # noqa: E402
from benchmarks.random_weights import describe, network_setting, write_timing_weights  # noqa: E402

#: 3x3 convolutions of the widths and sizes the Res-UNets, the Attention U-Net and DenseFuse are made of at 256x256
#: (channels in = out, side of the feature map), batch 1 as in the app.
PEAK_SHAPES = ((64, 64, 256), (128, 128, 64), (256, 256, 32))
#: Latency targets the floor is checked against (set for an AMX-BF16 Xeon; docs/benchmarks.md).
TARGET_MS = {"paracolorizer": 60.0}


def multiply_adds(fn: Callable[[], object]) -> int:
    """Multiply-adds of everything ``fn`` runs that PyTorch's FLOP counter knows (convolutions, matrix products,
    attention), half its FLOPs."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() // 2


def conv_peak(dtype: torch.dtype, repeats: int = 10, shapes=PEAK_SHAPES) -> float:
    """The best rate on the CPU, in multiply-adds per second, of a 3x3 convolution (batch 1, channels-last,
    inference) over ``shapes``, each timed ``repeats`` times after three warm-up runs; the fastest run counts."""
    best = 0.0
    for channels_in, channels_out, side in shapes:
        conv = nn.Conv2d(channels_in, channels_out, 3, padding=1, bias=False).to(dtype, memory_format=torch.channels_last)
        x = torch.randn(1, channels_in, side, side, dtype=dtype).contiguous(memory_format=torch.channels_last)
        work = channels_in * channels_out * 9 * side * side
        with torch.inference_mode():
            for _ in range(3):
                conv(x)
            for _ in range(repeats):
                start = time.perf_counter()
                conv(x)
                best = max(best, work / (time.perf_counter() - start))
    return best


def model_multiply_adds(colorizer) -> int:
    """Multiply-adds of a model's networks for one image at its native size (what the app runs per photo)."""
    size = colorizer.model.native_size
    l = torch.rand(1, 1, size, size) * 100
    with torch.inference_mode():
        return multiply_adds(lambda: colorizer.model.predict_ab(l))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2, the app's here)")
    parser.add_argument("--repeats", type=int, default=10)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--weights", help="weights root whose networks are counted (default: $COLORIZERS_WEIGHTS "
                                          "or the bundled assets/weights)")
    source.add_argument("--random-weights", action="store_true",
                        help="untrained default-width networks (multiply-adds depend on the shape only)")
    parser.add_argument("--config", action="append", type=network_setting, default=[], metavar="NETWORK.KEY=VALUE",
                        help="with --random-weights: build NETWORK with KEY=VALUE (repeatable)")
    args = parser.parse_args(argv)
    if args.config and not args.random_weights:
        parser.error("--config sets the shape of --random-weights networks; trained weights carry their own config")
    if args.random_weights:
        with tempfile.TemporaryDirectory() as tmp:
            return run(args, write_timing_weights(Path(tmp), args.config), describe(args.config))
    return run(args, args.weights, None)


def run(args: argparse.Namespace, source: str | None, note: str | None) -> int:
    torch.set_num_threads(args.threads)
    peaks = {name: conv_peak(dtype, repeats=args.repeats)
             for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    native = "native bf16" if cpu_has_native_bf16() else "no native bf16 (emulated)"
    print(f"# CPU, {native}, {args.threads} thread(s), torch {torch.__version__}")
    if note:
        print(f"# {note}")
    print(f"# best 3x3 convolution rate: fp32 {peaks['fp32'] / 1e9:.0f}, bf16 {peaks['bf16'] / 1e9:.0f} G multiply-adds/s"
          f" (bf16 / fp32 = {peaks['bf16'] / peaks['fp32']:.2f}: the most bf16 can gain where arithmetic dominates)")
    available, unavailable = colorizers.load_colorizers(source=source, precision="fp32")
    for name, reason in unavailable.items():
        print(f"# {name} not counted: {reason}")
    print()
    print("| model | G multiply-adds | floor fp32 | floor bf16 | target |")
    print("|---|---:|---:|---:|---|")
    for name, colorizer in available.items():
        work = model_multiply_adds(colorizer)
        floors = [f"{work / peaks[p] * 1e3:.1f} ms" for p in ("fp32", "bf16")]
        target = f"<= {TARGET_MS[name]:g} ms" if name in TARGET_MS else ""
        print(f"| {name} | {work / 1e9:.2f} | {floors[0]} | {floors[1]} | {target} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
