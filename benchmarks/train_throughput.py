"""Training throughput: images/s of one optimisation step per network, phase, size and precision on this device.

Each network runs every phase of its recipe (for the GANs the generator pre-training, L1 only, and the
adversarial phase, generator + PatchGAN discriminator updates; the single phase otherwise) at its default width,
through ``train.engine.Trainer`` exactly as training does, on random uint8 images held on the device, in float32
and in bf16 (autocast + channels-last, ``colorizers.precision``), side by side. ``cnn_classifier`` takes 224 x 224
only and is measured at that size alone. On a CPU without native bf16 (AMX-BF16 / AVX512-BF16) PyTorch emulates it
and bf16 is slower: that is why ``--precision auto`` trains such CPUs in float32.

    python benchmarks/train_throughput.py --device cpu                         # batch 16, 128 and 256 px
    python benchmarks/train_throughput.py --device cpu --networks cnn --sizes 128 --precisions fp32,bf16
    python benchmarks/train_throughput.py --device cuda --batch-size 64 --steps 30 --compile
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import colorizers  # noqa: E402
from colorizers.networks import PatchDiscriminator  # noqa: E402
from colorizers.precision import cpu_has_native_bf16  # noqa: E402
from roofline import conv_peak  # noqa: E402  (benchmarks/, this script's folder)
from train.engine import InMemoryBatches, Trainer, TrainingConfig, resolve_device, resolve_recipe  # noqa: E402
from train.losses import IGNORE_LABEL  # noqa: E402

MEASURED_PRECISIONS = ("fp32", "bf16")
FIXED_SIZE = {"cnn_classifier": 224}  # networks that take one input size only


def measure(network: str, phase_name: str, precision: str, device: torch.device, batch_size: int, size: int,
            steps: int, warmup: int, compile: bool) -> float:
    """Images per second of the network's training step in one phase and precision (the mean over ``steps``
    after ``warmup`` untimed steps), from a freshly built network."""
    recipe = resolve_recipe(TrainingConfig(network, [], ""))
    phase = next(p for p in recipe.phases if p.name == phase_name)
    torch.manual_seed(0)
    generator = colorizers.build_model(network)
    discriminator = PatchDiscriminator(**recipe.discriminator) if phase.adversarial else None
    trainer = Trainer(recipe, generator, device, discriminator=discriminator, precision=precision, compile=compile)
    trainer.start_phase(phase)
    images = torch.randint(0, 256, (batch_size * 2, 3, size, size), dtype=torch.uint8)
    labels = torch.full((len(images),), IGNORE_LABEL)
    batches = InMemoryBatches(images, labels, batch_size, device, seed=0)

    def run(n: int) -> None:
        for _ in range(n):
            trainer.step(*batches.next())
        if device.type == "cuda":
            torch.cuda.synchronize()

    run(warmup)
    start = time.perf_counter()
    run(steps)
    return steps * batch_size / (time.perf_counter() - start)


def comma_list(cast):
    def parse(text: str) -> list:
        return [cast(item) for item in text.split(",") if item]
    return parse


def device_line(device: torch.device) -> str:
    if device.type == "cuda":
        bf16 = "native bf16" if torch.cuda.is_bf16_supported() else "no native bf16"
        return f"{torch.cuda.get_device_name(device)} ({bf16})"
    bf16 = ("native bf16 (AMX-BF16 / AVX512-BF16)" if cpu_has_native_bf16()
            else "no native bf16 (emulated: bf16 runs slower)")
    return f"CPU, {bf16}, {torch.get_num_threads()} threads"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--networks", nargs="+", type=comma_list(str), default=[list(colorizers.NETWORK_NAMES)],
                   help=f"comma- or space-separated (default: all: {','.join(colorizers.NETWORK_NAMES)})")
    p.add_argument("--precisions", nargs="+", type=comma_list(str), default=[list(MEASURED_PRECISIONS)],
                   help="of fp32,bf16 (default: both)")
    p.add_argument("--sizes", nargs="+", type=comma_list(int), default=[[128, 256]],
                   help="image sizes (default: 128,256; cnn_classifier is always 224)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--batch-size", type=int, help="default: 16 on CPU, 32 on CUDA")
    p.add_argument("--steps", type=int, help="timed steps (default: 3 on CPU, 30 on CUDA)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default: 1 on CPU, 10 on CUDA)")
    p.add_argument("--compile", action="store_true")
    args = p.parse_args(argv)
    for name in ("networks", "precisions", "sizes"):  # lists of comma-separated lists -> one list
        setattr(args, name, [item for group in getattr(args, name) for item in group])
    for name in args.networks:
        if name not in colorizers.NETWORK_NAMES:
            p.error(f"unknown network {name!r}; choose from {', '.join(colorizers.NETWORK_NAMES)}")
    for name in args.precisions:
        if name not in MEASURED_PRECISIONS:
            p.error(f"unknown precision {name!r}; choose from {', '.join(MEASURED_PRECISIONS)}")
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    batch_size = args.batch_size or (32 if cuda else 16)
    steps = args.steps or (30 if cuda else 3)
    warmup = args.warmup if args.warmup is not None else (10 if cuda else 1)
    precisions = [q for q in MEASURED_PRECISIONS if q in args.precisions]

    print(f"device: {device_line(device)}")
    if device.type == "cpu":  # the ceiling of the speed-up column where the arithmetic dominates
        fp32, bf16 = (conv_peak(dtype) for dtype in (torch.float32, torch.bfloat16))
        print(f"best 3x3 convolution rate here: fp32 {fp32 / 1e9:.0f}, bf16 {bf16 / 1e9:.0f} G multiply-adds/s "
              f"(bf16 / fp32 = {bf16 / fp32:.2f}; benchmarks/roofline.py)")
    print(f"batch {batch_size}, {warmup} warm-up + {steps} timed steps per cell, default widths"
          f"{', compiled' if args.compile else ''}\n")
    columns = [f"{q} img/s" for q in MEASURED_PRECISIONS]
    print(f"| {'network':22s} | {'phase':11s} | {'size':>4s} | {columns[0]:>11s} | {columns[1]:>11s} | speed-up |")
    print(f"|{'-' * 24}|{'-' * 13}|{'-' * 6}|{'-' * 13}|{'-' * 13}|{'-' * 10}|")
    for network in args.networks:
        recipe = resolve_recipe(TrainingConfig(network, [], ""))
        sizes = [FIXED_SIZE[network]] if network in FIXED_SIZE else args.sizes
        for phase in recipe.phases:
            for size in sizes:
                rates = {q: measure(network, phase.name, q, device, batch_size, size, steps, warmup, args.compile)
                         for q in precisions}
                cells = [f"{rates[q]:11.1f}" if q in rates else f"{'-':>11s}" for q in MEASURED_PRECISIONS]
                speedup = (f"{rates['bf16'] / rates['fp32']:7.2f}x" if len(rates) == 2 else f"{'-':>8s}")
                print(f"| {network:22s} | {phase.name:11s} | {size:4d} | {cells[0]} | {cells[1]} | {speedup} |",
                      flush=True)


if __name__ == "__main__":
    main()
