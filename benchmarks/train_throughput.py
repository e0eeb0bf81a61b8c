"""Training throughput: images/s of one optimisation step per network on this device.

Each network runs the last phase of its recipe (for the GANs the adversarial one: generator + PatchGAN
discriminator updates), at its default width, through ``train.engine.Trainer`` exactly as training does
(bf16 autocast and channels-last on CUDA, ``--compile`` optional), on random uint8 images held on the device.

    python benchmarks/train_throughput.py                      # CPU: batch 2, a few steps
    python benchmarks/train_throughput.py --device cuda --batch-size 64 --steps 50 --compile
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
from train.engine import InMemoryBatches, Trainer, TrainingConfig, resolve_device, resolve_recipe  # noqa: E402
from train.losses import IGNORE_LABEL  # noqa: E402


def measure(network: str, device: torch.device, batch_size: int, size: int, steps: int, warmup: int,
            compile: bool) -> float:
    """Images per second of the network's training step (the mean over ``steps`` after ``warmup``)."""
    recipe = resolve_recipe(TrainingConfig(network, [], ""))
    size = recipe.image_size if network == "cnn_classifier" else size  # fixed 224 input
    torch.manual_seed(0)
    generator = colorizers.build_model(network)
    discriminator = PatchDiscriminator() if recipe.adversarial else None
    trainer = Trainer(recipe, generator, device, discriminator=discriminator, compile=compile)
    trainer.start_phase(recipe.phases[-1])
    images = torch.randint(0, 256, (batch_size * 4, 3, size, size), dtype=torch.uint8)
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--networks", nargs="+", default=list(colorizers.NETWORK_NAMES), choices=colorizers.NETWORK_NAMES)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, help="default: 2 on CPU, 32 on CUDA")
    p.add_argument("--size", type=int, default=256, help="image size (cnn_classifier is always 224)")
    p.add_argument("--steps", type=int, help="timed steps (default: 3 on CPU, 30 on CUDA)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default: 1 on CPU, 10 on CUDA)")
    p.add_argument("--compile", action="store_true")
    args = p.parse_args()
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    batch_size = args.batch_size or (32 if cuda else 2)
    steps = args.steps or (30 if cuda else 3)
    warmup = args.warmup if args.warmup is not None else (10 if cuda else 1)
    name = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; batch {batch_size}, {args.size}x{args.size}, {steps} timed steps"
          f"{', compiled' if args.compile else ''}")
    for network in args.networks:
        rate = measure(network, device, batch_size, args.size, steps, warmup, args.compile)
        print(f"{network:22s} {rate:9.1f} images/s", flush=True)


if __name__ == "__main__":
    main()
