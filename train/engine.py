"""The one training loop every network shares (after nanoGPT's ``train.py`` and pix2pix's ``Pix2PixModel``).

Read top to bottom: the run's configuration (plain data), the images in memory, the model, the step (plain
and adversarial), and ``train``, which strings them together with logging, checkpoints and the export.

The step runs under bf16 autocast with channels-last tensors wherever the hardware does bf16 natively (CUDA, and
CPUs with AMX-BF16 or AVX512-BF16; ``colorizers.precision``), in float32 elsewhere; losses and the colour
conversion stay float32. The decoded uint8 images are cached once per size (``data.py``), and on CUDA sit on the
GPU when they fit in half its free memory (else in pinned host memory), so a batch is an index, a flip and a
colour conversion on the device: the step never waits on a loader.

A run can be time-boxed (``minutes``): it then stops cleanly at the budget with a checkpoint, the export and the
curves, and ``--resume`` continues it bit for bit (on the same machine and thread count), also at another image
size: a run may spend most of its steps at 128 x 128 and finish at the native 256 x 256.

Output, under ``OUT/NETWORK/``: ``config.json`` + ``model.safetensors`` (``save_pretrained``, what
``colorizers.load_colorizer`` reads), ``training_config.json`` (this run's configuration and recipe),
``losses.csv`` and ``curves.png`` (generator terms; discriminator real/fake losses, as DTU Fig. 8 and 9),
and ``checkpoint.pt`` (generator, discriminator, optimizers, step, sampler: what ``--resume`` needs; not
part of what ships). ``model.safetensors`` is what ships, so it is written in fp16 by default (``--export-dtype``):
the six networks at their default widths take ~65 MB so, ~129 MB in fp32, and the budget is 250 MB; the
loaders cast it back to the float32 networks. ``checkpoint.pt`` keeps full precision for ``--resume``.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

import colorizers
from colorizers.color import lab_to_rgb, normalize_ab, normalize_l, rgb_to_lab, unnormalize_ab, unnormalize_l
from colorizers.networks import PatchDiscriminator
from colorizers.precision import PRECISIONS, autocast, memory_format, resolve_precision
from colorizers.metrics import colourfulness

from .data import ImageSet, read_images
from .distributed import Distributed
from .imagenet_init import (IMAGENET_NETWORKS, calibration_l_norm, check_encoder_init, init_encoder_from_imagenet,
                            load_imagenet_resnet18)
from .losses import (IGNORE_LABEL, EdgeLoss, GANLoss, PerceptualLoss, RebalancedL1, SSIMLoss, l1_loss,
                     masked_cross_entropy, mse_loss)
from .recipes import Adam, Phase, Recipe, get_recipe

CHECKPOINT = "checkpoint.pt"
LOSSES_CSV = "losses.csv"
CURVES_PNG = "curves.png"
TRAINING_CONFIG = "training_config.json"
HISTORY = "history.jsonl"  # one line per invocation of the run: steps, size, time, speed (what the model card reports)
#: ``--export-dtype`` choices: the precision of the exported ``model.safetensors`` (the checkpoint stays float32).
EXPORT_DTYPES = {"float16": torch.float16, "float32": torch.float32}


# ----------------------------------------------------------------------------------------------------------
# Configuration: everything a run needs, as plain data (saved next to the weights)

@dataclass
class TrainingConfig:
    network: str
    data: list[str]
    out: str
    steps: int | None = None          # total optimisation steps; else ``epochs``; else the recipe's epochs
    epochs: float | None = None
    batch_size: int | None = None     # default: the recipe's
    image_size: int | None = None     # training resolution; default: the recipe's (the network's native size)
    lr: float | None = None           # overrides the generator learning rate of every phase
    discriminator_lr: float | None = None
    loss_weights: dict[str, float] = field(default_factory=dict)  # e.g. {"ssim": 10}: overrides a term's weight
    pretrain_share: float | None = None  # share of steps spent pre-training a GAN's generator
    rebalance_mix: float = 0.5        # l1_rebalanced: uniform share of the colour prior (losses.RebalancedL1)
    model_config: dict = field(default_factory=dict)          # build_model overrides, e.g. {"width": 16}
    discriminator_config: dict = field(default_factory=dict)  # PatchDiscriminator overrides, e.g. {"ndf": 16}
    split: str | None = "train"       # manifest rows of the training data
    kinds: list[str] | None = None    # default: the recipe's
    max_images: int | None = None
    val_data: list[str] = field(default_factory=list)  # manifests: their "val" split
    max_val_images: int | None = 512
    val_every: int | None = None      # default: every checkpoint
    proposals: str | None = None      # paracolorizer_fg: the .npz of ``python -m train.proposals``
    min_class_examples: int | None = None  # cnn_classifier; default: the recipe's
    init: str | None = None           # weights root whose NETWORK is the starting generator (skips pre-training)
    encoder_init: str = "none"        # "imagenet": ResNet-18 encoder from ../shared/weights (imagenet_init.py)
    resume: bool = False
    seed: int = 0
    device: str = "auto"              # "auto": cuda when available
    compile: bool = False
    precision: str = "auto"           # "auto": bf16 autocast + channels-last where native (CUDA, AMX/AVX512-BF16)
    minutes: float | None = None      # wall-clock budget: stop cleanly (checkpoint, export) when it is spent
    cpu_minutes: float | None = None  # CPU-time budget of this process (all its threads), stopped the same way
    freeze_encoder_steps: int = 0     # the generator's encoder is frozen (weights, BN statistics) for these steps
    cache: str | None = None          # folder of decoded images (the CLI's default: data.default_cache_dir())
    log_every: int = 10
    checkpoint_every: int = 1000
    export_dtype: str = "float16"     # model.safetensors precision (EXPORT_DTYPES); the shipped files are fp16
    num_threads: int = field(default_factory=lambda: os.cpu_count() or 1)


def resolve_recipe(config: TrainingConfig) -> Recipe:
    """The network's recipe with this run's overrides applied."""
    recipe = get_recipe(config.network)
    if config.export_dtype not in EXPORT_DTYPES:
        raise ValueError(f"--export-dtype must be one of {', '.join(EXPORT_DTYPES)}, got {config.export_dtype!r}")
    unknown = sorted(set(config.loss_weights) - set(recipe.loss_terms))
    if unknown:
        raise ValueError(f"{config.network} has no loss term(s) {', '.join(unknown)}; "
                         f"its terms are {', '.join(recipe.loss_terms)}")
    if config.pretrain_share is not None and not 0.0 <= config.pretrain_share <= 1.0:
        raise ValueError(f"--pretrain-share must be in [0, 1], got {config.pretrain_share}")
    if not config.resume:  # a resumed generator comes from its checkpoint, whatever initialised it
        check_encoder_init(config.network, config.encoder_init, config.model_config, init=config.init)
    if config.freeze_encoder_steps < 0:
        raise ValueError(f"--freeze-encoder-steps must be >= 0, got {config.freeze_encoder_steps}")
    if config.freeze_encoder_steps and config.network not in IMAGENET_NETWORKS:
        raise ValueError(f"--freeze-encoder-steps: {config.network} has no ResNet-18 encoder; it applies to "
                         f"{', '.join(IMAGENET_NETWORKS)}")
    for name in ("minutes", "cpu_minutes"):
        if getattr(config, name) is not None and getattr(config, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(config, name)}")
    image_size = config.image_size or recipe.image_size
    if image_size != recipe.image_size and not recipe.resizable:
        raise ValueError(f"{config.network} takes {recipe.image_size}x{recipe.image_size} images only")
    if image_size % 32:
        raise ValueError(f"image size must be a multiple of 32 (the networks down-sample by up to 32), got {image_size}")
    phases = []
    for phase in recipe.phases:
        weights = {term: config.loss_weights.get(term, w) for term, w in phase.losses.items()}
        losses = {term: w for term, w in weights.items() if w != 0}  # a term at weight 0 is not computed
        if not losses:
            raise ValueError(f"every loss term of {config.network}'s {phase.name!r} phase has weight 0")
        optimizer = dataclasses.replace(phase.optimizer, lr=config.lr or phase.optimizer.lr)
        d_optimizer = phase.discriminator_optimizer
        if d_optimizer is not None and config.discriminator_lr:
            d_optimizer = dataclasses.replace(d_optimizer, lr=config.discriminator_lr)
        share = phase.share
        if config.pretrain_share is not None and len(recipe.phases) > 1:
            share = config.pretrain_share if phase.name == "pretrain" else 1.0 - config.pretrain_share
        phases.append(dataclasses.replace(phase, losses=losses, optimizer=optimizer,
                                          discriminator_optimizer=d_optimizer, share=share))
    return dataclasses.replace(
        recipe, phases=tuple(p for p in phases if p.share > 0),
        batch_size=config.batch_size or recipe.batch_size, image_size=image_size,
        min_class_examples=(config.min_class_examples or recipe.min_class_examples
                            if recipe.min_class_examples is not None else None),
    )


def phase_schedule(phases: tuple[Phase, ...], total_steps: int) -> list[tuple[Phase, int, int]]:
    """(phase, first step, end step) for each phase, the steps split by the phases' shares."""
    total_share = sum(p.share for p in phases)
    schedule, begin, cumulative = [], 0, 0.0
    for phase in phases:
        cumulative += phase.share
        end = round(total_steps * cumulative / total_share)
        schedule.append((phase, begin, end))
        begin = end
    return schedule


def phase_of(phases: tuple[Phase, ...], total: int, step: int) -> str:
    """The name of the phase that step ``step`` (1-based count done) belongs to."""
    for phase, begin, end in phase_schedule(phases, total):
        if step <= end:
            return phase.name
    return phases[-1].name


def resolve_device(name: str) -> torch.device:
    """The device to train on; on CUDA also TF32 for the float32 ops left outside autocast (colour
    conversion, losses) and cuDNN autotuning (every batch has the same shape)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda asked for, but torch sees no CUDA device")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    return device


# ----------------------------------------------------------------------------------------------------------
# Images in memory

def load_training_images(config: TrainingConfig, recipe: Recipe) -> ImageSet:
    """The training images at the recipe's size, plus object-proposal crops for ``paracolorizer_fg``."""
    kinds = config.kinds if config.kinds is not None else list(recipe.kinds)
    images = read_images(config.data, split=config.split, kinds=kinds, size=recipe.image_size,
                         max_images=config.max_images, num_threads=config.num_threads, cache=config.cache)
    if config.proposals:
        if not recipe.uses_proposals:
            raise ValueError(f"--proposals is for paracolorizer_fg; {config.network} does not train on crops")
        from .proposals import read_proposal_crops
        images = ImageSet.concat([images, read_proposal_crops(config.proposals, recipe.image_size)])
    elif recipe.uses_proposals:
        tqdm.write(f"note: no --proposals given; {config.network} trains on full images only "
                   "(make crops with `python -m train.proposals`)")
    return images


def frequent_classes(labels: list[str | None], min_examples: int) -> list[str]:
    """The class names with at least ``min_examples`` images, sorted."""
    counts: dict[str, int] = {}
    for label in labels:
        if label is not None:
            counts[label] = counts.get(label, 0) + 1
    return sorted(name for name, n in counts.items() if n >= min_examples)


def class_indices(labels: list[str | None], class_names: list[str] | None) -> torch.Tensor:
    """Class index per image; ``IGNORE_LABEL`` for unknown or rare classes (and for every image of a network
    without a classifier)."""
    index = {name: i for i, name in enumerate(class_names or [])}
    return torch.tensor([index.get(label, IGNORE_LABEL) for label in labels], dtype=torch.long)


def place_on_device(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The uint8 images on the GPU when they take at most half its free memory; else pinned host memory."""
    if device.type != "cuda":
        return images
    free, _ = torch.cuda.mem_get_info(device)
    if images.numel() * images.element_size() <= free // 2:
        return images.to(device)
    return images.pin_memory()


def needs_host_copy(batch_device: torch.device, device: torch.device) -> bool:
    """Whether a batch cut from the image set must still be copied to ``device``: only when the set stayed in
    host memory and training runs elsewhere. (Not ``batch_device != device``: a set placed on ``cuda`` lives on
    ``cuda:0``, which compares unequal to ``cuda``, and pinning a GPU tensor fails.)"""
    return batch_device.type == "cpu" and device.type != "cpu"


class InMemoryBatches:
    """Shuffled mini-batches (epoch by epoch, last partial batch dropped) with random horizontal flips, as
    float RGB in [0, 1] on the device. The sampler's state is part of the checkpoint.

    Data-parallel (``world_size`` ranks): every rank draws the same permutation and flips from the same seed and
    takes its own slice (``rank``) of each global batch of ``batch_size * world_size`` images, so every image is
    seen once per epoch across the ranks, the order is reshuffled every epoch, the sampler's state is the same on
    every rank (rank 0's checkpoint resumes them all, also mid-epoch), and the union of the slices is exactly the
    batch one process would draw at the global batch size."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, device: torch.device, seed: int,
                 rank: int = 0, world_size: int = 1):
        self.images = place_on_device(images, device)
        self.labels = labels.to(self.images.device)
        self.device = device
        if world_size > 1 and batch_size * world_size > len(images):
            raise ValueError(f"a global batch of {batch_size} x {world_size} ranks = {batch_size * world_size} images "
                             f"needs at least as many training images, got {len(images)}")
        self.batch_size = min(batch_size, len(images))  # per rank
        self.rank, self.global_batch_size = rank, self.batch_size * world_size
        self.generator = torch.Generator().manual_seed(seed)
        self.order = torch.randperm(len(images), generator=self.generator)
        self.position = 0

    def __len__(self) -> int:
        return len(self.images)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.position + self.global_batch_size > len(self.order):
            self.order = torch.randperm(len(self.images), generator=self.generator)
            self.position = 0
        index = self.order[self.position:self.position + self.global_batch_size]
        self.position += self.global_batch_size
        flip = torch.rand(len(index), generator=self.generator) < 0.5
        mine = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)  # everything in one process
        index, flip = index[mine], flip[mine]
        index, flip = index.to(self.images.device), flip.to(self.device)
        rgb = self.images[index]
        if needs_host_copy(rgb.device, self.device):  # a host-resident set: from pinned memory the copy runs asynchronously
            rgb = rgb.pin_memory().to(self.device, non_blocking=True)
        rgb = torch.where(flip[:, None, None, None], rgb.flip(-1), rgb).float().div_(255.0)
        return rgb, self.labels[index].to(self.device, non_blocking=True)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "order": self.order, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.order, self.position = state["order"], state["position"]


# ----------------------------------------------------------------------------------------------------------
# The model

def model_config_of(model: nn.Module) -> dict:
    """The init kwargs the Hub mixin recorded (what config.json will hold)."""
    return dict(model._hub_mixin_config)


def build_generator(config: TrainingConfig, recipe: Recipe, images: ImageSet, checkpoint: dict | None) -> nn.Module:
    """The generator to train: from the checkpoint (``--resume``), from ``--init`` weights, or new.

    A new generator with ``encoder_init="imagenet"`` gets the ImageNet ResNet-18 encoder, its BatchNorms
    re-expanded on a few hundred of ``images`` (``imagenet_init.py``).

    A new ``cnn_classifier`` learns the classes with at least ``min_class_examples`` training images; their
    names go into its config, so the exported model knows what its logits mean.
    """
    if checkpoint is not None:
        model = colorizers.build_model(config.network, **checkpoint["model_config"])
        model.load_state_dict(checkpoint["generator"])
        return model
    if config.init:
        if config.model_config:
            raise ValueError("--config cannot change the architecture of an --init model; drop one of them")
        return colorizers.load_network(config.network, config.init).train()
    model_config = dict(config.model_config)
    if recipe.min_class_examples is not None:
        classes = frequent_classes(images.labels, recipe.min_class_examples)
        if not classes:
            raise ValueError(
                f"{config.network} needs labelled images: no class has {recipe.min_class_examples} or more "
                "training images (labels come from a colorize256 manifest; see --min-class-examples)")
        model_config.update(num_classes=len(classes), class_names=classes)
    model = colorizers.build_model(config.network, **model_config)
    if config.encoder_init == "imagenet":
        init_encoder_from_imagenet(model.encoder, calibration_l_norm(images.images, seed=config.seed),
                                   device=resolve_device(config.device))
    return model


# ----------------------------------------------------------------------------------------------------------
# The step

@dataclass
class Batch:
    """One batch in the forms the losses need."""

    rgb: torch.Tensor                  # (B, 3, H, W) in [0, 1]
    labels: torch.Tensor               # (B,) class index or IGNORE_LABEL
    l_norm: torch.Tensor | None = None   # colorizers: normalised L and ab
    ab_norm: torch.Tensor | None = None


@dataclass
class Prediction:
    ab_norm: torch.Tensor | None = None   # colorizers
    logits: torch.Tensor | None = None    # cnn_classifier
    rgb: torch.Tensor | None = None       # DenseFuse reconstruction


def validation_terms(recipe: Recipe) -> list[str]:
    """The loss terms validation reports: the recipe's non-adversarial terms, and plain L1 for every colorizer
    (also one trained on the rebalanced L1 alone, so runs stay comparable on one number)."""
    terms = [t for t in recipe.loss_terms if t != "gan"]
    return ["l1", *terms] if recipe.input == "l" and "l1" not in terms else terms


class Trainer:
    """Generator (and discriminator) with their optimizers, and one optimisation step for any recipe phase.

    With ``distributed`` (a ``torchrun`` launch) the networks' BatchNorms are synchronised over the ranks and the
    step runs them through ``DistributedDataParallel`` (``step_generator``, ``step_discriminator``), which averages
    their gradients over the ranks; validation and the export use the plain networks. In one process the step's
    networks are the plain (or compiled) ones."""

    def __init__(self, recipe: Recipe, generator: nn.Module, device: torch.device, *,
                 discriminator: nn.Module | None = None, precision: str = "auto", compile: bool = False,
                 rebalanced_l1: RebalancedL1 | None = None, perceptual_loss: PerceptualLoss | None = None,
                 distributed: Distributed | None = None):
        self.recipe = recipe
        self.device = device
        self.distributed = distributed
        self.compile = compile
        if distributed is not None:
            generator = distributed.sync_batchnorm(generator)
            discriminator = distributed.sync_batchnorm(discriminator) if discriminator is not None else None
        self.precision = resolve_precision(precision, device)
        self.memory_format = memory_format(self.precision)
        self.generator = generator.to(device, memory_format=self.memory_format).train()
        self.discriminator = None
        if discriminator is not None:
            self.discriminator = discriminator.to(device, memory_format=self.memory_format).train()
        self.run_generator = torch.compile(self.generator) if compile else self.generator
        self.run_discriminator = (torch.compile(self.discriminator) if compile and discriminator is not None
                                  else self.discriminator)
        self.step_generator, self.step_discriminator = self.run_generator, self.run_discriminator
        if distributed is not None:
            self.step_generator = self.data_parallel(self.generator)
            if self.discriminator is not None:
                self.step_discriminator = self.data_parallel(self.discriminator)
        self.gan_loss = GANLoss(recipe.gan_mode) if recipe.gan_mode else None
        self.edge_loss = EdgeLoss()
        self.ssim_loss = SSIMLoss()
        self.rebalanced_l1 = rebalanced_l1.to(device) if rebalanced_l1 is not None else None
        self.perceptual_loss = None
        if perceptual_loss is not None:
            self.perceptual_loss = perceptual_loss.to(device, memory_format=self.memory_format).eval()
        self.phase: Phase | None = None
        self.generator_optimizer: torch.optim.Optimizer | None = None
        self.discriminator_optimizer: torch.optim.Optimizer | None = None
        self.encoder_frozen = False

    def data_parallel(self, network: nn.Module) -> nn.Module:
        """``network`` in ``DistributedDataParallel`` (compiled as a whole with ``compile``)."""
        wrapped = self.distributed.wrap(network)
        return torch.compile(wrapped) if self.compile else wrapped

    def freeze_encoder(self, frozen: bool) -> None:
        """Freeze (or release) the generator's ResNet-18 encoder: no gradients (so no backward pass through it,
        and Adam skips its weights) and eval-mode BatchNorm (its statistics stay as initialised). A warm-up with
        a frozen ImageNet encoder trains the decoder to read the pretrained features before they are fine-tuned.

        Data-parallel, the generator is wrapped anew: ``DistributedDataParallel`` reduces the gradients of the
        parameters that required them when it was built, and would wait for the frozen ones for ever."""
        encoder = self.generator.encoder
        encoder.requires_grad_(not frozen)
        encoder.train(not frozen and self.generator.training)
        self.encoder_frozen = frozen
        if self.distributed is not None:
            self.step_generator = self.data_parallel(self.generator)

    def autocast(self):
        return autocast(self.device, self.precision)

    def start_phase(self, phase: Phase) -> None:
        """Fresh optimizers for the phase (pre-training and adversarial training use different ones)."""
        self.phase = phase
        self.generator_optimizer = make_adam(self.generator, phase.optimizer)
        self.discriminator_optimizer = None
        if phase.adversarial:
            if self.discriminator is None:
                raise ValueError(f"phase {phase.name!r} is adversarial but the trainer has no discriminator")
            self.discriminator_optimizer = make_adam(self.discriminator, phase.discriminator_optimizer)

    def prepare(self, rgb: torch.Tensor, labels: torch.Tensor) -> Batch:
        rgb = rgb.contiguous(memory_format=self.memory_format)
        if self.recipe.input == "rgb":
            return Batch(rgb, labels)
        lab = rgb_to_lab(rgb)
        return Batch(rgb, labels, normalize_l(lab[:, :1]), normalize_ab(lab[:, 1:]))

    def predict(self, batch: Batch, generator: nn.Module | None = None) -> Prediction:
        """The generator's outputs (``generator``: the step's, else the plain one)."""
        generator = generator or self.run_generator
        with self.autocast():
            if self.recipe.input == "rgb":
                return Prediction(rgb=generator(batch.rgb))
            out = generator(batch.l_norm)
        if isinstance(out, tuple):
            return Prediction(ab_norm=out[0], logits=out[1])
        return Prediction(ab_norm=out)

    def critic(self, l_norm: torch.Tensor, ab_norm: torch.Tensor, discriminator: nn.Module | None = None) -> torch.Tensor:
        """PatchGAN logits for the (L, ab) pair (conditional GAN: D sees the input L with the colours). The
        generator's term uses the plain discriminator (its weights get no gradient there, so there is nothing to
        average over the ranks); the discriminator's step passes ``step_discriminator``."""
        discriminator = discriminator or self.run_discriminator
        with self.autocast():
            return discriminator(torch.cat([l_norm, ab_norm.to(l_norm.dtype)], dim=1))

    def predicted_rgb(self, batch: Batch, prediction: Prediction) -> torch.Tensor:
        l = unnormalize_l(batch.l_norm)
        return lab_to_rgb(torch.cat([l, unnormalize_ab(prediction.ab_norm.float())], dim=1))

    def loss_term(self, term: str, batch: Batch, prediction: Prediction) -> torch.Tensor:
        """One generator loss term of the recipe (see ``recipes.py`` for the names)."""
        if term == "l1":
            return l1_loss(prediction.ab_norm, batch.ab_norm)
        if term == "l1_rebalanced":
            if self.rebalanced_l1 is None:
                raise ValueError("the l1_rebalanced term needs the training colours' prior (Trainer rebalanced_l1)")
            return self.rebalanced_l1(prediction.ab_norm, batch.ab_norm)
        if term == "perceptual":
            if self.perceptual_loss is None:
                raise ValueError("the perceptual term needs the ImageNet ResNet-18 (Trainer perceptual_loss)")
            rgb = self.predicted_rgb(batch, prediction).contiguous(memory_format=self.memory_format)
            with self.autocast():
                return self.perceptual_loss(rgb, batch.rgb)
        if term == "ce":
            return masked_cross_entropy(prediction.logits, batch.labels)
        if term == "gan":
            return self.gan_loss(self.critic(batch.l_norm, prediction.ab_norm), True)
        if term == "edge":
            return self.edge_loss(self.predicted_rgb(batch, prediction), batch.rgb)
        if term == "mse":
            return mse_loss(prediction.rgb, batch.rgb)
        if term == "ssim":
            return self.ssim_loss(prediction.rgb, batch.rgb)
        raise ValueError(f"unknown loss term {term!r}")

    def discriminator_step(self, batch: Batch, prediction: Prediction) -> dict[str, torch.Tensor]:
        """pix2pix's ``backward_D``: real pairs towards "real", generated pairs (detached) towards "fake"."""
        real = self.gan_loss(self.critic(batch.l_norm, batch.ab_norm, self.step_discriminator), True)
        fake = self.gan_loss(self.critic(batch.l_norm, prediction.ab_norm.detach(), self.step_discriminator), False)
        self.discriminator_optimizer.zero_grad(set_to_none=True)
        (0.5 * (real + fake)).backward()
        self.discriminator_optimizer.step()
        return {"d_real": real.detach(), "d_fake": fake.detach()}

    def step(self, rgb: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """One optimisation step of the current phase; returns the (detached, unweighted) loss terms."""
        batch = self.prepare(rgb, labels)
        prediction = self.predict(batch, self.step_generator)
        logs: dict[str, torch.Tensor] = {}
        if self.phase.adversarial:
            logs.update(self.discriminator_step(batch, prediction))
            self.discriminator.requires_grad_(False)  # the generator's step must not train D
        terms = {term: self.loss_term(term, batch, prediction) for term in self.phase.losses}
        total = sum(self.phase.losses[term] * value for term, value in terms.items())
        self.generator_optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.generator_optimizer.step()
        if self.phase.adversarial:
            self.discriminator.requires_grad_(True)
        logs.update({f"g_{term}": value.detach() for term, value in terms.items()})
        logs["g_total"] = total.detach()
        return logs

    @torch.no_grad()
    def evaluate(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> dict[str, float]:
        """Mean non-adversarial loss terms of the recipe over held-out images, in eval mode.

        Colorizers (L input) also report the mean colourfulness of their colours and of the truth
        (``val_colourfulness`` / ``val_colourfulness_truth``, Hasler and Suesstrunk as ParaColorizer IV-B): the
        L1 terms alone cannot tell a desaturated generator from a garish one, and the adversarial phase is
        balanced by watching both.
        """
        terms = validation_terms(self.recipe)
        sums = dict.fromkeys(terms, 0.0)
        colourful = self.recipe.input == "l"
        if colourful:
            sums |= {"colourfulness": 0.0, "colourfulness_truth": 0.0}
        self.generator.eval()
        for start in range(0, len(images), batch_size):
            rgb = images[start:start + batch_size].to(self.device).float() / 255.0
            batch = self.prepare(rgb, labels[start:start + batch_size].to(self.device))
            prediction = self.predict(batch)
            for term in terms:
                sums[term] += float(self.loss_term(term, batch, prediction)) * len(rgb)
            if colourful:
                sums["colourfulness"] += float(colourfulness(self.predicted_rgb(batch, prediction)).sum())
                sums["colourfulness_truth"] += float(colourfulness(batch.rgb.float()).sum())
        self.generator.train()
        if self.encoder_frozen:
            self.generator.encoder.eval()
        return {f"val_{term}": total / len(images) for term, total in sums.items()}

    def state_dict(self) -> dict:
        state = {"generator": self.generator.state_dict(), "phase": self.phase.name,
                 "generator_optimizer": self.generator_optimizer.state_dict()}
        if self.discriminator is not None:
            state["discriminator"] = self.discriminator.state_dict()
        if self.discriminator_optimizer is not None:
            state["discriminator_optimizer"] = self.discriminator_optimizer.state_dict()
        return state

    def load_optimizer_states(self, state: dict) -> None:
        """Optimizer moments from a checkpoint taken in the current phase. The learning rates and betas stay this
        run's (the phase's settings): ``load_state_dict`` would bring back the checkpoint's, and a resumed run
        given another ``--lr`` / ``--d-lr`` would silently keep the old ones."""
        pairs = [(self.generator_optimizer, state["generator_optimizer"], self.phase.optimizer)]
        if self.discriminator_optimizer is not None:
            pairs.append((self.discriminator_optimizer, state["discriminator_optimizer"],
                          self.phase.discriminator_optimizer))
        for optimizer, saved, settings in pairs:
            optimizer.load_state_dict(saved)
            for group in optimizer.param_groups:
                group["lr"], group["betas"] = settings.lr, settings.betas


def make_adam(model: nn.Module, settings: Adam) -> torch.optim.Optimizer:
    fused = next(model.parameters()).is_cuda  # the fused CUDA kernel: one launch for all parameters
    return torch.optim.Adam(model.parameters(), lr=settings.lr, betas=settings.betas, fused=fused)


def discriminator_config(recipe: Recipe, config: TrainingConfig, checkpoint: dict | None) -> dict | None:
    """The PatchGAN's config for an adversarial recipe (the checkpoint's on resume); ``None`` otherwise."""
    if not recipe.adversarial:
        return None
    if checkpoint is not None:
        return checkpoint["discriminator_config"]
    return {**recipe.discriminator, **config.discriminator_config}


# ----------------------------------------------------------------------------------------------------------
# Logging: a CSV of losses and the training curves

class LossLog:
    """``losses.csv``: one row per logged step (the mean of the terms since the last row), validation rows
    in the same table. On resume the rows after the checkpoint's step are dropped."""

    def __init__(self, path: Path, columns: list[str], keep_until: int | None = None):
        self.path = path
        self.columns = ["step", "phase", *columns]
        rows = []
        if keep_until is not None and path.exists():
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= keep_until]
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, self.columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    def append(self, step: int, phase: str, values: dict[str, float]) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.columns, extrasaction="ignore").writerow({"step": step, "phase": phase, **values})


class RunningMean:
    """Sums of the step losses on the device; one host sync per logged row, not per step."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, values: dict[str, torch.Tensor]) -> None:
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0) + value.float()
        self.count += 1

    def pop(self, distributed: Distributed | None = None) -> dict[str, float]:
        """The means since the last call (data-parallel: also over the ranks, so the log holds the global batch's
        losses; every rank calls it at the same step)."""
        means = {key: float(total) / self.count for key, total in self.sums.items()}
        self.sums, self.count = {}, 0
        return distributed.mean(means) if distributed is not None else means


def read_loss_log(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def plot_curves(csv_path: Path, png_path: Path, title: str) -> None:
    """Training curves: generator loss terms (DTU Fig. 8), discriminator real/fake losses (Fig. 9), and
    validation terms, each against the step."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_loss_log(csv_path)
    columns = list(rows[0]) if rows else []
    panels = [("generator", [c for c in columns if c.startswith("g_")]),
              ("discriminator", [c for c in columns if c.startswith("d_")]),
              ("validation", [c for c in columns if c.startswith("val_") and "colourfulness" not in c])]
    panels = [(name, cols) for name, cols in panels if any(r[c] for r in rows for c in cols)]
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(5.5 * max(len(panels), 1), 4), squeeze=False)
    for ax, (name, cols) in zip(axes[0], panels):
        for col in cols:
            points = [(int(r["step"]), float(r[col])) for r in rows if r[col]]
            ax.plot(*zip(*points), label=col, marker="." if len(points) < 30 else None)
        if all(float(r[c]) > 0 for r in rows for c in cols if r[c]):
            ax.set_yscale("log")
        ax.set(title=f"{title}: {name} losses", xlabel="step", ylabel="loss")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------------
# The run

class StopRequest:
    """SIGTERM or SIGINT (Ctrl-C) during a run: finish the current step, then stop as a spent ``--minutes`` budget
    does (checkpoint, export, curves, history), so ``kill PID`` never loses the steps since the last checkpoint.
    Installed only in the main thread (signal handlers cannot be set elsewhere); a second signal acts as usual."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested = False
        self._previous = {}

    @classmethod
    def install(cls) -> "StopRequest":
        request = cls()
        if threading.current_thread() is threading.main_thread():
            for sig in cls.SIGNALS:
                request._previous[sig] = signal.signal(sig, request._handle)
        return request

    def _handle(self, signum, frame) -> None:
        self.requested = True
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))  # a second signal is not held back
        tqdm.write(f"{signal.Signals(signum).name}: stopping after this step (checkpoint and export follow)")

    def uninstall(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()


def save_checkpoint(path: Path, trainer: Trainer, batches: InMemoryBatches, step: int, config: TrainingConfig,
                    d_config: dict | None) -> None:
    state = {**trainer.state_dict(), "step": step, "batches": batches.state_dict(),
             "model_config": model_config_of(trainer.generator), "discriminator_config": d_config,
             "config": dataclasses.asdict(config), "torch_rng": torch.get_rng_state()}
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a run killed while saving keeps its previous checkpoint


def load_checkpoint(out_dir: Path) -> dict:
    path = out_dir / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {path}; start the run without --resume")
    return torch.load(path, map_location="cpu", weights_only=False)


def total_steps(config: TrainingConfig, recipe: Recipe, num_images: int, world_size: int = 1) -> int:
    """``--steps``, else the epochs' worth of global batches (``batch_size`` per rank times ``world_size``)."""
    if config.steps is not None:
        return config.steps
    epochs = config.epochs if config.epochs is not None else recipe.epochs
    return math.ceil(epochs * num_images / min(recipe.batch_size * world_size, num_images))


def export(model: nn.Module, out_dir: str | os.PathLike, dtype: str = "float16") -> None:
    """``model`` as ``colorizers`` loads it: config.json + model.safetensors, the floating-point tensors in
    ``dtype`` ("float16", what ships, or "float32").

    A CPU copy is cast and saved (through the Hub mixin's ``save_pretrained``, as ``from_pretrained`` reads
    it); the model being trained is left as it is. A weight beyond fp16's range (65504) is an error rather than
    an ``inf`` in the shipped file.
    """
    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"export dtype must be one of {', '.join(EXPORT_DTYPES)}, got {dtype!r}")
    state = model.state_dict()
    copy = type(model)(**model_config_of(model))
    copy.load_state_dict(state)
    copy = copy.to(dtype=EXPORT_DTYPES[dtype]).eval()  # integer buffers (BatchNorm's counters) stay as they are
    overflow = [name for name, t in copy.state_dict().items()
                if t.is_floating_point() and not t.isfinite().all() and state[name].isfinite().all()]
    if overflow:
        raise ValueError(f"{dtype} export: {', '.join(overflow[:3])} exceed(s) the {dtype} range; "
                         "export with --export-dtype float32")
    copy.save_pretrained(out_dir)


def train(config: TrainingConfig) -> Path:
    """Run (or resume) a training run; returns ``OUT/NETWORK``.

    Under ``torchrun`` every process runs this with the same config, data-parallel (``distributed.py``): the batch
    size is per process, the global batch ``batch_size * world_size``; rank 0 alone reads the checkpoint (and
    sends it to the others) and writes every file; the ranks vote before each step, so a signal or a spent
    budget on any rank stops all of them after the same step."""
    distributed = Distributed.start(config.device)  # None: one process, as ever
    try:
        return train_process(config, distributed)
    finally:
        if distributed is not None:
            distributed.close()


def train_process(config: TrainingConfig, distributed: Distributed | None) -> Path:
    """``train`` in this process: all of it alone, or one rank's share of a data-parallel run."""
    recipe = resolve_recipe(config)
    device = resolve_device(config.device if distributed is None else str(distributed.device))
    main = distributed is None or distributed.is_main  # the process that writes
    world_size = 1 if distributed is None else distributed.world_size
    torch.manual_seed(config.seed)
    out_dir = Path(config.out) / config.network
    checkpoint = None
    if config.resume:
        checkpoint = load_checkpoint(out_dir) if distributed is None else distributed.from_main(
            lambda: load_checkpoint(out_dir))
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)

    with distributed.local_main_first() if distributed is not None else contextlib.nullcontext():
        images = load_training_images(config, recipe)  # (one rank per machine fills the cache, the others map it)
    generator = build_generator(config, recipe, images, checkpoint)
    if distributed is not None and recipe.min_class_examples is not None and "ce" not in recipe.loss_terms:
        raise ValueError(f"{config.network} without its ce term cannot train data-parallel: its classifier would "
                         "get no gradient, which DistributedDataParallel waits for; train it in one process")
    class_names = model_config_of(generator).get("class_names")
    d_config = discriminator_config(recipe, config, checkpoint)
    discriminator = PatchDiscriminator(**d_config) if d_config is not None else None
    if checkpoint is not None and discriminator is not None:
        discriminator.load_state_dict(checkpoint["discriminator"])
    rebalanced_l1 = None
    if "l1_rebalanced" in recipe.loss_terms:  # the training colours' distribution, from a fixed sample
        rebalanced_l1 = RebalancedL1(RebalancedL1.prior_of(images.images, seed=config.seed), config.rebalance_mix)
    perceptual_loss = None
    if "perceptual" in recipe.loss_terms:  # ImageNet ResNet-18 features (../shared/weights, $COLORIZERS_RESNET18)
        perceptual_loss = PerceptualLoss(load_imagenet_resnet18())
    trainer = Trainer(recipe, generator, device, discriminator=discriminator, precision=config.precision,
                      compile=config.compile, rebalanced_l1=rebalanced_l1, perceptual_loss=perceptual_loss,
                      distributed=distributed)
    batches = InMemoryBatches(images.images, class_indices(images.labels, class_names), recipe.batch_size,
                              device, config.seed, rank=0 if distributed is None else distributed.rank,
                              world_size=world_size)
    validation = None
    if config.val_data and main:  # (validation is rank 0's alone; the others wait for it at the next step)
        val_set = read_images(config.val_data, split="val", size=recipe.image_size,
                              max_images=config.max_val_images, num_threads=config.num_threads, cache=config.cache)
        validation = (val_set.images, class_indices(val_set.labels, class_names))

    phases = tuple(p for p in recipe.phases if not (config.init and p.name == "pretrain"))  # DTU 3.3.3
    steps = total_steps(config, recipe, len(batches), world_size)
    if steps < 1:
        raise ValueError(f"a run needs at least one step, got {steps}")
    start = 0
    if checkpoint is not None:
        start = checkpoint["step"]
        batches.load_state_dict(checkpoint["batches"])
        torch.set_rng_state(checkpoint["torch_rng"])

    global_batch = recipe.batch_size * world_size  # images per step, over all the ranks
    if main:
        (out_dir / TRAINING_CONFIG).write_text(json.dumps({
            "config": dataclasses.asdict(config), "recipe": dataclasses.asdict(recipe),
            "model_config": model_config_of(generator), "num_images": len(batches), "total_steps": steps,
            "resumed_from_step": start, "device": str(device), "precision": trainer.precision,
            "world_size": world_size, "global_batch_size": global_batch,
        }, indent=2, default=str))
    columns = [f"g_{t}" for t in recipe.loss_terms] + ["g_total"]
    if recipe.adversarial:
        columns += ["d_real", "d_fake"]
    if validation is not None:
        columns += [f"val_{t}" for t in validation_terms(recipe)]
        if recipe.input == "l":
            columns += ["val_colourfulness", "val_colourfulness_truth"]
    log = LossLog(out_dir / LOSSES_CSV, columns, keep_until=start if checkpoint is not None else None) if main else None
    val_every = config.val_every or config.checkpoint_every

    step, latest_val, began, began_cpu = start, {}, time.monotonic(), time.process_time()
    deadline = began + 60.0 * config.minutes if config.minutes else None
    cpu_deadline = began_cpu + 60.0 * config.cpu_minutes if config.cpu_minutes else None

    def budget_spent() -> bool:
        return ((deadline is not None and time.monotonic() >= deadline)
                or (cpu_deadline is not None and time.process_time() >= cpu_deadline))

    def time_to_stop() -> bool:
        """A stop was requested or the budget is spent; data-parallel, on any rank (every rank stops here)."""
        if distributed is None:
            return stop.requested or budget_spent()
        stop.requested, spent = distributed.any(stop.requested, budget_spent())
        return stop.requested or spent

    if main and distributed is not None:
        tqdm.write(f"{config.network}: data-parallel on {world_size} processes ({device.type}), "
                   f"batch {recipe.batch_size} per process, global batch {global_batch}")
    progress = tqdm(total=steps, initial=min(start, steps), desc=config.network, unit="step", dynamic_ncols=True,
                    disable=not main)
    stop = StopRequest.install()  # SIGTERM / SIGINT: stop after this step, as a spent budget does
    try:
        for phase, begin, end in phase_schedule(phases, steps):
            if end <= step:
                continue
            trainer.start_phase(phase)
            if checkpoint is not None and checkpoint["phase"] == phase.name and begin <= start:
                trainer.load_optimizer_states(checkpoint)
            mean = RunningMean()
            while step < end and not time_to_stop():
                if trainer.encoder_frozen != (step < config.freeze_encoder_steps):
                    trainer.freeze_encoder(step < config.freeze_encoder_steps)
                mean.add(trainer.step(*batches.next()))
                step += 1
                progress.update(1)
                if step % config.log_every == 0 or step == end:
                    values = mean.pop(distributed)
                    if main:
                        log.append(step, phase.name, values)
                    progress.set_postfix(phase=phase.name, loss=f"{values['g_total']:.4f}")
                if validation is not None and step % val_every == 0:
                    latest_val = trainer.evaluate(*validation, recipe.batch_size)
                    log.append(step, "val", latest_val)
                if step % config.checkpoint_every == 0 and step < steps and main:
                    save_checkpoint(out_dir / CHECKPOINT, trainer, batches, step, config, d_config)
                    export(trainer.generator, out_dir, config.export_dtype)
            if step < end:  # the time budget ran out, or a stop was requested, inside this phase
                if mean.count:
                    values = mean.pop(distributed)
                    if main:
                        log.append(step, phase.name, values)
                break
    finally:
        progress.close()
        stop.uninstall()
    if not main:
        return out_dir
    if step > start:  # (a resumed run already at its last step has nothing new to save)
        if validation is not None and step % val_every != 0:
            latest_val = trainer.evaluate(*validation, recipe.batch_size)
            log.append(step, "val", latest_val)
        save_checkpoint(out_dir / CHECKPOINT, trainer, batches, step, config, d_config)
    export(trainer.generator, out_dir, config.export_dtype)
    plot_curves(out_dir / LOSSES_CSV, out_dir / CURVES_PNG, config.network)
    elapsed = time.monotonic() - began
    budget = " and ".join(f"{m:g}{unit}" for m, unit in ((config.minutes, "-minute"), (config.cpu_minutes, " CPU-minute"))
                          if m)
    status = ("finished" if step >= steps else "stopped on request (--resume continues)" if stop.requested
              else f"stopped by the {budget} budget (--resume continues)")
    terms = ", ".join(f"{k} {v:.4f}" for k, v in latest_val.items())
    with open(out_dir / HISTORY, "a") as f:
        f.write(json.dumps({
            "from_step": start, "to_step": step, "total_steps": steps, "phase": phase_of(phases, steps, step),
            "images": (step - start) * global_batch, "minutes": round(elapsed / 60, 2),
            "cpu_minutes": round((time.process_time() - began_cpu) / 60, 2),  # (rank 0's, data-parallel)
            "images_per_second": round((step - start) * global_batch / max(elapsed, 1e-9), 2),
            "frozen_encoder_steps": max(0, min(step, config.freeze_encoder_steps) - start),
            "image_size": recipe.image_size, "batch_size": recipe.batch_size, "world_size": world_size,
            "global_batch_size": global_batch, "precision": trainer.precision,
            "threads": torch.get_num_threads(), "device": str(device), "init": config.init, "resume": config.resume,
            "stopped_by_budget": step < steps and not stop.requested, "stopped_on_request": stop.requested,
            "validation": latest_val}) + "\n")
    tqdm.write(f"{config.network}: {status} at step {step}/{steps} ({phase_of(phases, steps, step)}), "
               f"{(step - start) * global_batch} images in {elapsed / 60:.1f} min "
               f"({(step - start) * global_batch / max(elapsed, 1e-9):.1f} img/s, {trainer.precision}, "
               f"{recipe.image_size}px){'; ' + terms if terms else ''}")
    return out_dir
