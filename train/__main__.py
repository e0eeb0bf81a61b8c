"""``python -m train NETWORK --data PATH [--data PATH ...] --out ROOT [options]``

Examples::

    # the CNN baseline on colorize256's training split, 100 epochs (the recipe's), on the GPU
    python -m train cnn --data ../shared/data/colorize256/manifest.csv --out weights --device cuda
    # ParaColorizer foreground: crops first, then training on images + crops, validating on the val split
    python -m train.proposals --data ../shared/data/colorize256/manifest.csv --kind object,mixed --out runs/proposals.npz
    python -m train paracolorizer_fg --data .../manifest.csv --proposals runs/proposals.npz --out weights \\
        --val-data .../manifest.csv --compile
    # a quick small run on a folder of photos, then more steps
    python -m train attention_ugan --data photos/ --out runs/small --steps 200 --config base_width=8
    python -m train attention_ugan --data photos/ --out runs/small --steps 400 --resume
    # DTU's "pretrained Attention UGAN": fine-tune the generator of an earlier run, no pre-training phase
    python -m train attention_ugan --data .../manifest.csv --out runs/finetune --init weights --epochs 20
    # data-parallel on the 4 GPUs of one machine (32 images per GPU, a global batch of 128); rank 0 writes
    torchrun --standalone --nproc-per-node 4 -m train paracolorizer_bg --data .../manifest.csv --out runs/ddp
    # ... or on 2 machines of 8 GPUs each: the same command on both (HOST: the first machine's address)
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-id colorize --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        -m train paracolorizer_bg --data .../manifest.csv --out runs/ddp

Data-parallel training: ``docs/distributed-training.md`` and ``train/distributed.py``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

from colorizers import NETWORK_NAMES

from colorizers.precision import PRECISIONS

from .data import CACHE_ENV, default_cache_dir
from .engine import EXPORT_DTYPES, TrainingConfig, train
from .imagenet_init import ENCODER_INITS


def key_value(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with VALUE read as JSON when it parses (numbers, lists, true/false), else as a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def comma_list(text: str) -> list[str]:
    return [item for item in text.split(",") if item]


def parse_args(argv: list[str] | None = None) -> TrainingConfig:
    p = argparse.ArgumentParser(prog="python -m train", description="Train one colorization network.")
    p.add_argument("network", choices=NETWORK_NAMES)
    p.add_argument("--data", action="append", required=True, metavar="PATH",
                   help="image folder, tar shard or colorize256 manifest.csv (repeatable)")
    p.add_argument("--out", required=True, metavar="ROOT", help="weights root; the run writes ROOT/NETWORK/")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="optimisation steps in all (default: the recipe's epochs)")
    length.add_argument("--epochs", type=float, help="passes over the training images")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: cuda when available; under "
                                                    "torchrun each process takes cuda:LOCAL_RANK)")
    p.add_argument("--resume", action="store_true", help="continue from ROOT/NETWORK/checkpoint.pt")
    p.add_argument("--init", metavar="ROOT", help="start from the trained ROOT/NETWORK (skips GAN pre-training)")
    p.add_argument("--encoder-init", choices=ENCODER_INITS, default="none",
                   help="imagenet: a new generator's ResNet-18 encoder from ../shared/weights' ImageNet ResNet-18 "
                        "(cnn; paracolorizer_fg/bg with --config width=64), BatchNorms re-expanded on 256 training "
                        "images (default: %(default)s)")
    p.add_argument("--minutes", type=float, metavar="N",
                   help="wall-clock budget: stop cleanly after N minutes (checkpoint, export, curves); --resume continues")
    p.add_argument("--cpu-minutes", type=float, metavar="N",
                   help="CPU-time budget: stop the same way once this process has used N CPU-minutes (all its threads; "
                        "runs that share the cores get equal work, not equal wall time)")
    p.add_argument("--freeze-encoder-steps", type=int, default=0, metavar="N",
                   help="cnn, paracolorizer_fg/bg: keep the ResNet-18 encoder frozen (weights and BatchNorm statistics; "
                        "no backward pass through it) for the first N steps, then train it (default: %(default)s)")

    g = p.add_argument_group("data")
    g.add_argument("--split", default="train", help="manifest split to train on (default: %(default)s)")
    g.add_argument("--kind", dest="kinds", type=comma_list, help="manifest kinds, e.g. object,mixed (default: the recipe's)")
    g.add_argument("--max-images", type=int)
    g.add_argument("--val-data", action="append", default=[], metavar="PATH",
                   help="held-out images (a manifest's val split) for validation losses")
    g.add_argument("--max-val-images", type=int, default=512, help="(default: %(default)s)")
    g.add_argument("--proposals", metavar="FILE", help="object-proposal crops (.npz of train.proposals), paracolorizer_fg")
    g.add_argument("--min-class-examples", type=int, help="cnn_classifier: rarer classes are ignored (recipe: 30)")
    g.add_argument("--threads", dest="num_threads", type=int, default=os.cpu_count() or 1,
                   help="torch and image decoding threads (default: %(default)s)")
    g.add_argument("--cache", default=str(default_cache_dir()), metavar="DIR",
                   help="decoded images are cached here once per size and memory-mapped later (default: %(default)s, "
                        f"or ${CACHE_ENV})")
    g.add_argument("--no-cache", dest="cache", action="store_const", const=None, help="decode the images every run")

    g = p.add_argument_group("model and optimisation")
    g.add_argument("--config", dest="model_config", action="append", type=key_value, default=[], metavar="KEY=VALUE",
                   help="network config override, e.g. width=16 (repeatable)")
    g.add_argument("--d-config", dest="discriminator_config", action="append", type=key_value, default=[],
                   metavar="KEY=VALUE", help="PatchDiscriminator config override, e.g. ndf=32")
    g.add_argument("--batch-size", type=int, help="default: the recipe's; under torchrun per process (the global batch "
                                                  "is this times the number of processes)")
    g.add_argument("--size", dest="image_size", type=int,
                   help="training image size (default: the network's native size); --resume may change it, e.g. "
                        "128 for most steps, then 256 to finish")
    g.add_argument("--lr", type=float, help="generator learning rate of every phase (default: the recipe's)")
    g.add_argument("--d-lr", dest="discriminator_lr", type=float, help="discriminator learning rate")
    g.add_argument("--loss-weight", dest="loss_weights", action="append", type=key_value, default=[],
                   metavar="TERM=WEIGHT", help="override a loss term's weight, e.g. ssim=10")
    g.add_argument("--rebalance-mix", type=float, default=0.5, metavar="MIX",
                   help="l1_rebalanced: the uniform share of the colour prior (Zhang et al. 2016's lambda; 1 is plain "
                        "L1, lower weights rare colours more; default: %(default)s)")
    g.add_argument("--pretrain-share", type=float, help="share of the steps that pre-train a GAN's generator")
    g.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    g.add_argument("--compile", action="store_true", help="torch.compile the networks")
    g.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto: bf16 autocast + channels-last where the device does bf16 natively (CUDA, CPUs with "
                        "AMX-BF16 or AVX512-BF16), else float32 (default: %(default)s)")
    g.add_argument("--no-amp", dest="precision", action="store_const", const="fp32", help="same as --precision fp32")
    g.add_argument("--log-every", type=int, default=10, help="steps per losses.csv row (default: %(default)s)")
    g.add_argument("--checkpoint-every", type=int, default=1000, help="(default: %(default)s)")
    g.add_argument("--val-every", type=int, help="default: every checkpoint")
    g.add_argument("--export-dtype", choices=list(EXPORT_DTYPES), default="float16",
                   help="precision of the exported model.safetensors (checkpoint.pt stays float32; default: %(default)s, "
                        "as the weights ship)")

    args = vars(p.parse_args(argv))
    for name in ("model_config", "discriminator_config", "loss_weights"):
        args[name] = dict(args[name])
    return TrainingConfig(**args)


def main(argv: list[str] | None = None) -> None:
    config = parse_args(argv)
    torch.set_num_threads(max(1, config.num_threads))
    try:
        out_dir = train(config)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        sys.exit(f"error: {err}")
    if os.environ.get("RANK", "0") == "0":  # (under torchrun only rank 0 writes)
        print(f"wrote {out_dir}")


if __name__ == "__main__":
    main()
