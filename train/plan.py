"""The CPU training plan that produced the shipped weights, as plain data, and the tool that runs and ships it.

    python -m train.plan show                          # every stage's command and its CPU budget
    python -m train.plan run paracolorizer_bg --root runs   # run one network's stages in order, in the background
    python -m train.plan ship --root runs --eval runs/eval  # copy the final weights into assets/weights + model cards

Every network follows its recipe (``recipes.py``) in stages that are separate, time-boxed ``python -m train``
runs, so each one ends cleanly within its time box and the next continues from it:

- the GANs (``attention_ugan``, ``paracolorizer_fg``, ``paracolorizer_bg``): L1 pre-training at 128 x 128, then
  the adversarial phase at 128 x 128 starting from the pre-trained generator (``--init``: a fresh optimizer and
  PatchGAN, as DTU 3.3.3 fine-tunes a pre-trained generator), then the adversarial phase finished at the native
  256 x 256 (``--resume --size 256``: the same optimizers and PatchGAN, at the native size);
- the others (``cnn``, ``paracolorizer_fusion``): their single phase at 128 x 128, finished at 256 x 256
  (224 x 224 throughout for ``cnn_classifier``, whose fully connected layers fix its input).

``minutes`` is the wall-clock budget of a stage with one torch thread on the project's 2-core CPU (two stages run
side by side, one per core): CPU-minutes, in other words. A stage stops at its budget with a checkpoint and an
export (``--minutes``), so how many steps it reaches depends on the machine; each run's ``history.jsonl``
records them, and ``ship`` writes the exact step counts into the model cards, so a card's commands
(``--steps`` instead of ``--minutes``) repeat the run step for step on any machine.

Deviations from the recipes, for the CPU: batch 16 (more updates per CPU-minute than 32), a generator learning
rate of 1e-4 in ParaColorizer's adversarial phase (the recipe's 2e-4 made garish colours in a first probe) with
the discriminator at 5e-5 (the recipe: 2e-4), and ``attention_ugan`` at ``base_width=16`` (2.2 M parameters
instead of 8.7 M: the full width trains at 4 images/s per core adversarially). Every such choice is in the
stage's arguments, and from there in ``training_config.json`` and the model card.

Release 0.4.0 rebalanced ParaColorizer's adversarial phase (``COLOUR_UP`` then ``SETTLE`` below): with pix2pix's
lambda = 100 and the lowered rates, 200 adversarial steps had barely moved the L1 generators' sepia (val
colourfulness ~20 against the truth's ~38-42), so a stretch at a lower L1 weight lifted the colours and lambda 100
at still lower rates (G 5e-5, D 2e-5) settled them. The weights of each stage are watched on validation
colourfulness and L1 every 100 steps (``losses.csv``). Release 0.5.0 gave ``attention_ugan`` a new adversarial run at
the lowered rates from its longer L1 pre-training, moved the CNN baselines to the rebalanced L1 (``REBALANCED``),
and lengthened the generators' 256 x 256 stages. 0.6.0 put the GANs on the rebalanced L1 too (``REBALANCED_GAN``):
``attention_ugan`` in a new adversarial run at lambda 300, ParaColorizer's generators continued at lambda 100 (128 then
256), and ``attention_ugan`` and the background generator settled at 256 x 256 with lambda 300 and G at 2e-5.
0.7.0 settled the foreground generator the same way and ``attention_ugan`` under a heavier reconstruction term
(lambda 1000) for fewer wrong colours; a stronger rebalancing (``REBALANCED_GAN_08``) then gave ``attention_ugan`` and
the background generator back some colour, which the fusion needed.
Stages stopped by hand (``kill``, which stops a run cleanly after its step) have their measured length in the history
and their exact step count in the model card.
"""
from __future__ import annotations

import argparse
import csv
import json
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import colorizers
from train import evaluate
from train.recipes import get_recipe

REPO = Path(__file__).resolve().parent.parent
DATA = "../shared/data/colorize256/manifest.csv"
PROPOSALS = "{root}/proposals.npz"
#: Arguments every stage shares: validation on 200 val images every 250 steps, batch 16, one thread.
COMMON = ("--val-data", DATA, "--max-val-images", "200", "--batch-size", "16", "--checkpoint-every", "500",
          "--val-every", "250", "--log-every", "20", "--threads", "1")
#: The same for a stage on the GPU (``Stage.device == "cuda"``; release 0.8.0, on an H200): the recipes'
#: batch of 32, four threads for decoding, validation as on the CPU.
GPU_COMMON = ("--val-data", DATA, "--max-val-images", "200", "--batch-size", "32", "--checkpoint-every", "100000",
              "--val-every", "250", "--log-every", "50", "--threads", "4", "--device", "cuda")
ADVERSARIAL_128 = ("--lr", "1e-4", "--d-lr", "5e-5", "--steps", "100000", "--size", "128")
#: Release 0.4.0's rebalancing of ParaColorizer's adversarial phase (each continues the run before it, ``--resume``):
#: a lower L1 weight lifts the colours out of the L1 model's sepia (lambda 30 overshot: val colourfulness swung
#: 33-62 against the truth's 38, with magenta blotches; 50 oscillated less), then lambda 100 at lower rates lets
#: them settle (val L1 back to ~0.09 with colourfulness ~30).
COLOUR_UP = ("--lr", "1e-4", "--d-lr", "5e-5", "--steps", "100000", "--resume")
SETTLE = ("--lr", "5e-5", "--d-lr", "2e-5", "--loss-weight", "l1=100", "--steps", "100000", "--resume")
#: Release 0.5.0: the CNN baselines' L1 regression stayed at ~16 colourfulness (the truth's ~42), under the target
#: of half; they continue on the rebalanced L1 (``losses.RebalancedL1``, Zhang et al. 2016 2.2). Zhang's
#: mix of 0.5 overshot on a probe (8 min of ``cnn`` at 128: colourfulness 41 on 150 val images against the truth's
#: 36, LPIPS 0.217 and FID 97.4, worse than grey's 0.206 / 96.1); 0.9 reached 32.3 with LPIPS 0.186 and FID 90.0
#: (the L1 model: 17.3, 0.178, 85.4).
REBALANCED = ("--rebalance-mix", "0.9", "--loss-weight", "l1=0", "--loss-weight", "l1_rebalanced=1")


def rebalanced_gan(mix: str) -> tuple[str, ...]:
    """A GAN stage on gan + lambda * rebalanced L1 (no plain L1), the colour prior mixed with a uniform one at ``mix``;
    the stage adds its lambda (``LAMBDA_*``) and generator rate."""
    return ("--d-lr", "2e-5", "--rebalance-mix", mix, "--loss-weight", "l1=0", "--steps", "100000")


#: Release 0.6.0: the GANs' L1 term rebalanced the same way (lambda 100 as pix2pix's, or 300 to calm a run, given by the
#: stage), to lift their colours through the reconstruction term rather than the adversarial one: attention_ugan's
#: adversarial run had overshot to garish colours (val colourfulness 47, LPIPS 0.249 against grey's 0.211) while
#: ParaColorizer's generators, and so their fusion (which averages their colourings, docs/training.md), stayed
#: short of the truth (31.5 and 34.2; fused 28.7 against 41.9).
#: The colour-up stretch runs the generator at 1e-4, the finish at 5e-5 and the settling at 2e-5 (lambda 300); the
#: discriminator stays at 2e-5.
REBALANCED_GAN = rebalanced_gan("0.9")
LAMBDA_100 = ("--loss-weight", "l1_rebalanced=100")
LAMBDA_300 = ("--loss-weight", "l1_rebalanced=300")
#: Release 0.7.0: attention_ugan stayed above grey's LPIPS after settling at lambda 300 (0.226 against 0.211 on val,
#: colourfulness 37.6 against the truth's 41.9); a still heavier reconstruction term trades some of its colour margin
#: for fewer wrong colours.
LAMBDA_1000 = ("--loss-weight", "l1_rebalanced=1000")
#: Release 0.7.0: the fused result averages its parts' colourings (docs/training.md) and so stays short of the truth's
#: colourfulness; a stronger rebalancing of the reconstruction term (uniform share 0.8 instead of 0.9) lifts the
#: generators' rarer colours without a stronger adversarial term (attention_ugan's lambda 1000 had cost it more
#: colour than LPIPS needed: 300 val images, colourfulness 36.2 -> 30.8 against the truth's 38.8, LPIPS 0.214 -> 0.185).
REBALANCED_GAN_08 = rebalanced_gan("0.8")
#: Release 0.8.0 (on an H200, for 15 minutes): the two ParaColorizer generators continued from
#: their shipped weights at 256 x 256 for 3,637 (foreground) and 4,482 (background) more steps (batch 32: 5 and 9
#: epochs' worth, more than all their CPU adversarial training), in four runs side by side on the GPU, a stage per snapshot: each at its shipped
#: rebalancing (foreground 0.9, background 0.8) and one step stronger (0.8, 0.7), lambda 300, G 5e-5 then 2e-5,
#: D 2e-5 (a new PatchGAN: ``--init`` carries the generator only). Every snapshot of each generator, alone and fused
#: with every snapshot of the other, was scored on the whole val split on the GPU (FID, colourfulness;
#: docs/training.md): the shipped rebalancing drained the foreground's colour (val colourfulness 33 -> 26-28,
#: FID 52.9 -> 49.0-49.5), the stronger kept it and bettered FID too; its last snapshots (below) are shipped, the pair
#: with the widest colour margins among the lowest fused FIDs (docs/training.md).


def gpu_finish(run: str, init: str, mix: str, extra: tuple[str, ...] = ()) -> tuple[Stage, ...]:
    """Release 0.8.0's GPU stages for one generator: ``--init`` from its shipped run, then ``--resume``; rebalanced L1
    at ``mix``, lambda 300, G 5e-5 for two stages and 2e-5 for three (the fifth added after the first evaluation).
    Their minutes are wall-clock minutes on the GPU, which four runs shared."""
    def stage(k: int, lr: str, minutes: float) -> Stage:
        return Stage(f"GPU 256, rebalanced (mix {mix}) λ 300, G {lr}, part {k}", run,
                     (*extra, "--init", init, *rebalanced_gan(mix), *LAMBDA_300, "--lr", lr, "--size", "256",
                      *(("--resume",) if k > 1 else ())), minutes, device="cuda")
    return (stage(1, "5e-5", 1.5), stage(2, "5e-5", 1.25), stage(3, "2e-5", 1.25), stage(4, "2e-5", 1.0),
            stage(5, "2e-5", 1.2))


@dataclass(frozen=True)
class Stage:
    name: str                 # e.g. "pretrain 128"
    run: str                  # the run's folder under ROOT (a weights root: ROOT/RUN/NETWORK/)
    args: tuple[str, ...]     # ``python -m train`` arguments beyond network, --data, --out and the COMMON ones
    minutes: float            # wall-clock budget: with one thread (CPU-minutes), or on the GPU (GPU-minutes)
    device: str = "cpu"       # "cuda": a GPU stage (GPU_COMMON)

    @property
    def on_gpu(self) -> bool:
        return self.device != "cpu"


#: The background generator of releases 0.3.0-0.9.0 (width 32 from random weights), replaced in 1.0.0: its stages,
#: kept for the record (the 0.9.0 model card lists their step counts).
PARACOLORIZER_BG_WIDTH32: tuple[Stage, ...] = (
        Stage("pretrain 128", "bg_pre", ("--size", "128", "--pretrain-share", "1", "--steps", "100000"), 36),
        Stage("adversarial 128", "bg_adv", ("--init", "{root}/bg_pre", *ADVERSARIAL_128), 14),
        Stage("adversarial 256", "bg_adv", ("--init", "{root}/bg_pre", *ADVERSARIAL_128[:-1], "256", "--resume"), 10),
        Stage("adversarial 128, λ 30", "bg_adv", ("--init", "{root}/bg_pre", *COLOUR_UP, "--size", "128",
                                                  "--loss-weight", "l1=30"), 15),
        Stage("adversarial 128, λ 50", "bg_adv", ("--init", "{root}/bg_pre", *COLOUR_UP, "--size", "128",
                                                  "--loss-weight", "l1=50"), 3),
        Stage("adversarial 128, λ 100, lower rates", "bg_adv", ("--init", "{root}/bg_pre", *SETTLE, "--size", "128"), 50),
        Stage("adversarial 256, λ 100, lower rates", "bg_adv", ("--init", "{root}/bg_pre", *SETTLE, "--size", "256"), 12),
        # Part 2 was stopped after 20 steps to give the core to the CNN baselines; part 3 continued it.
        Stage("adversarial 256, λ 100, lower rates, part 2", "bg_adv", ("--init", "{root}/bg_pre", *SETTLE,
                                                                           "--size", "256"), 3.4),
        Stage("adversarial 256, λ 100, lower rates, part 3", "bg_adv",
              ("--init", "{root}/bg_pre", *SETTLE, "--size", "256"), 30),
        Stage("adversarial 128, rebalanced λ 100", "bg_adv", ("--init", "{root}/bg_pre", *REBALANCED_GAN, *LAMBDA_100,
                                                              "--lr", "1e-4", "--size", "128", "--resume"), 22),
        Stage("adversarial 256, rebalanced λ 100", "bg_adv", ("--init", "{root}/bg_pre", *REBALANCED_GAN, *LAMBDA_100,
                                                              "--lr", "5e-5", "--size", "256", "--resume"), 14),
        Stage("adversarial 256, rebalanced λ 300, settle", "bg_adv", ("--init", "{root}/bg_pre", *REBALANCED_GAN,
                                                                      *LAMBDA_300, "--lr", "2e-5",
                                                                      "--size", "256", "--resume"), 22),
        Stage("adversarial 256, rebalanced (mix 0.8) λ 300", "bg_adv", ("--init", "{root}/bg_pre", *REBALANCED_GAN_08,
                                                                         *LAMBDA_300, "--lr", "2e-5",
                                                                         "--size", "256", "--resume"), 40),
        # After 0.7.0 this run was branched at lambda 1000 (G 2e-5, 256, ~220 steps, mix 0.9 and 0.8): each fusion that
        # beat cnn_classifier's FID had lost the fused colour the target needs; not shipped (docs/training.md).
        *gpu_finish("bg_gpu", "{root}/bg_adv", "0.7"),
    )
#: Release 1.0.0's background generator: the paper's start (width 64, ImageNet ResNet-18 encoder), pre-trained at
#: 128 x 128 on L1 plus the ImageNet-feature loss at the recipe's batch of 32 (arm ``b_perceptual`` of
#: ``python -m train.encoder_experiment``, two 15-minute parts); its adversarial phase has not run yet.
BG64_PERCEPTUAL = ("--size", "128", "--pretrain-share", "1", "--config", "width=64", "--encoder-init", "imagenet",
                   "--loss-weight", "perceptual=0.25", "--batch-size", "32", "--steps", "100000")


#: The foreground generator of releases 0.3.0-1.0.0 (width 32 from random weights), replaced in 1.1.0: its stages,
#: kept for the record (the 1.0.0 model card lists their step counts).
PARACOLORIZER_FG_WIDTH32: tuple[Stage, ...] = (
        Stage("pretrain 128", "fg_pre", ("--proposals", PROPOSALS, "--size", "128", "--pretrain-share", "1",
                                         "--steps", "100000"), 30),
        Stage("adversarial 128", "fg_adv", ("--proposals", PROPOSALS, "--init", "{root}/fg_pre", *ADVERSARIAL_128), 14),
        Stage("adversarial 256", "fg_adv", ("--proposals", PROPOSALS, "--init", "{root}/fg_pre", *ADVERSARIAL_128[:-1],
                                            "256", "--resume"), 10),
        Stage("adversarial 128, λ 50", "fg_adv", ("--proposals", PROPOSALS, "--init", "{root}/fg_pre", *COLOUR_UP,
                                                  "--size", "128", "--loss-weight", "l1=50"), 31),
        Stage("adversarial 128, λ 100, lower rates", "fg_adv", ("--proposals", PROPOSALS, "--init", "{root}/fg_pre",
                                                                *SETTLE, "--size", "128"), 40),
        Stage("adversarial 256, λ 100, lower rates", "fg_adv", ("--proposals", PROPOSALS, "--init", "{root}/fg_pre",
                                                                *SETTLE, "--size", "256"), 12),
        Stage("adversarial 256, λ 100, lower rates, part 2", "fg_adv", ("--proposals", PROPOSALS, "--init",
                                                                           "{root}/fg_pre", *SETTLE, "--size", "256"),
              50),
        Stage("adversarial 128, rebalanced λ 100", "fg_adv", ("--proposals", PROPOSALS, "--init", "{root}/fg_pre",
                                                              *REBALANCED_GAN, *LAMBDA_100, "--lr", "1e-4",
                                                              "--size", "128", "--resume"), 22),
        Stage("adversarial 256, rebalanced λ 100", "fg_adv", ("--proposals", PROPOSALS, "--init", "{root}/fg_pre",
                                                              *REBALANCED_GAN, *LAMBDA_100, "--lr", "5e-5",
                                                              "--size", "256", "--resume"), 14),
        # Run after 0.6.0 shipped, shipped in 0.7.0.
        Stage("adversarial 256, rebalanced λ 300, settle", "fg_adv", ("--proposals", PROPOSALS, "--init",
                                                                      "{root}/fg_pre", *REBALANCED_GAN, *LAMBDA_300,
                                                                      "--lr", "2e-5", "--size", "256", "--resume"), 33),
        # 0.7.0 also tried the stronger rebalancing here (mix 0.8, lambda 300, G 2e-5, 182 steps at 256, 25
        # CPU-minutes): on the whole val split its fusion lost the lowest FID (48.64 against cnn_classifier's 48.05),
        # so it is not shipped; this settled generator fuses with the mix-0.8 background instead.
        # After 0.7.0 this run was branched at lambda 1000 (187 steps) and 600 (180 steps), G 2e-5, 256, and averaged
        # its weights with the lambda-1000 branch: the fusion reached FID 47.88, but the generator alone lost the
        # colour its own target needs (28.7 against 31.9); not shipped (docs/training.md).
        *gpu_finish("fg_gpu", "{root}/fg_adv", "0.8", ("--proposals", PROPOSALS)),
    )

#: Release 1.1.0's foreground generator: the paper's start (width 64, ImageNet ResNet-18 encoder), pre-trained
#: at 128 x 128 on L1 plus the ImageNet-feature loss, on full images and object-proposal crops, as the background
#: generator of 1.0.0 (arm ``fg_perceptual`` of ``python -m train.encoder_experiment``, four 15-minute parts);
#: its adversarial phase has not run (the background's, on the CPU, cost FID: docs/training.md).
FG64_PERCEPTUAL = ("--proposals", PROPOSALS, *BG64_PERCEPTUAL)


PLAN: dict[str, tuple[Stage, ...]] = {
    "paracolorizer_bg": (
        Stage("ImageNet-64 pretrain 128, L1 + feature loss, part 1", "bg64_perc", BG64_PERCEPTUAL, 15),
        Stage("ImageNet-64 pretrain 128, L1 + feature loss, part 2", "bg64_perc", (*BG64_PERCEPTUAL, "--resume"), 15),
    ),
    "paracolorizer_fg": tuple(
        Stage(f"ImageNet-64 pretrain 128, L1 + feature loss, part {k}", "fg64_perc",
              (*FG64_PERCEPTUAL, *(("--resume",) if k > 1 else ())), 15) for k in (1, 2, 3, 4)
    ),
    "paracolorizer_fusion": (
        Stage("train 128", "fusion", ("--size", "128", "--steps", "100000"), 8),
        Stage("train 256", "fusion", ("--size", "256", "--steps", "100000", "--resume"), 3),
        # The first two stages shared the CPU with benchmarks and reached 131 steps; two more followed.
        Stage("train 128, continued", "fusion", ("--size", "128", "--steps", "100000", "--resume"), 13),
        Stage("train 256, continued", "fusion", ("--size", "256", "--steps", "100000", "--resume"), 3),
        # 0.4.0: the fused images still had a pale green cast on bright areas (reconstruction RMSE ~10/255).
        Stage("train 128, part 3", "fusion", ("--size", "128", "--steps", "100000", "--resume"), 9),
        Stage("train 256, part 3", "fusion", ("--size", "256", "--steps", "100000", "--resume"), 4),
        # After 0.7.0 it was trained further, not shipped: 1,881 steps at 128² (Adam 1e-4) and 111 at 256² (3e-5), 33
        # CPU-minutes, val MSE 0.00088 -> 0.0002, 1 - SSIM 0.0097 -> 0.0036. A truer reconstruction made the fused
        # result more like a plain overlay of the two colourings: whole val split FID 48.18 -> 48.99 (docs/training.md).
    ),
    "cnn": (
        Stage("train 128", "cnn", ("--size", "128", "--steps", "100000"), 12),
        Stage("train 256", "cnn", ("--size", "256", "--steps", "100000", "--resume"), 5),
        Stage("rebalanced L1 128", "cnn_rb09", ("--init", "{root}/cnn", *REBALANCED, "--size", "128",
                                                "--steps", "100000"), 8),
        Stage("rebalanced L1 256", "cnn_rb09", ("--init", "{root}/cnn", *REBALANCED, "--size", "256",
                                                "--steps", "100000", "--resume"), 4),
        # Release 0.9.0: the baseline had had 29 CPU-minutes (about 4.5 epochs' worth); the same rebalanced L1 from its
        # shipped weights, 55 + 15 more (about 13 epochs at 128, one at 256): whole-val FID 53.05 -> 50.69, LPIPS
        # 0.181 -> 0.179, colourfulness 25.9 -> 28.8.
        Stage("rebalanced L1 128, longer run", "cnn_s9", ("--init", "{root}/cnn_rb09", *REBALANCED, "--size", "128",
                                                          "--steps", "100000"), 55),
        Stage("rebalanced L1 256, longer run", "cnn_s9", ("--init", "{root}/cnn_rb09", *REBALANCED, "--size", "256",
                                                          "--steps", "100000", "--resume"), 15),
    ),
    "cnn_classifier": (
        Stage("train 224", "cls", ("--steps", "100000"), 18),
        Stage("train 224, continued", "cls_s3", ("--init", "{root}/cls", "--steps", "100000"), 25),
        Stage("rebalanced L1 224", "cls_rb09", ("--init", "{root}/cls_s3", *REBALANCED, "--steps", "100000"), 22),
        # Release 1.0.0: the least-trained network of the six (2.4 epochs' worth) continued on the same stage, three
        # 20-minute parts (``python -m train.encoder_experiment run cnn_classifier_shipped --chunk 20``, about 5.6
        # epochs more): whole-val FID / LPIPS 48.05 / 0.183 -> 46.88 / 0.180 (docs/cnn-classifier-continued.csv).
        *(Stage(f"rebalanced L1 224, longer run, part {k}", "cls_s10",
                ("--init", "{root}/cls_rb09", *REBALANCED, "--steps", "100000", *(("--resume",) if k > 1 else ())), 20)
          for k in (1, 2, 3)),
    ),
    "attention_ugan": (
        Stage("pretrain 128", "augan_pre", ("--size", "128", "--config", "base_width=16", "--pretrain-share", "1",
                                            "--steps", "100000"), 10),
        # 0.3.0 fine-tuned these 433 steps adversarially (run augan_adv: 224 steps, 15 CPU-minutes) and shipped
        # that; 0.4.0 continued it 408 steps at pix2pix's rates, and it turned purple-magenta with red blotches.
        # Both are superseded: the generator's L1 pre-training went on, then a new adversarial run at lower rates.
        Stage("pretrain 128, continued", "augan_pre", ("--size", "128", "--config", "base_width=16", "--pretrain-share",
                                                       "1", "--steps", "100000", "--resume"), 7),
        Stage("pretrain 128, part 3", "augan_pre", ("--size", "128", "--config", "base_width=16", "--pretrain-share",
                                                       "1", "--steps", "100000", "--resume"), 25),
        # 0.5.0's adversarial run from this generator (augan_adv3: 1,030 steps at G 1e-4 / D 5e-5, 1,295 at
        # lambda 100 with G 5e-5 / D 2e-5, 125 at 256; 90 CPU-minutes) overshot to garish colours (val colourfulness
        # 47, LPIPS 0.249), so 0.6.0 started a new one with the rebalanced L1 in place of plain L1. At lambda 100
        # and G 1e-4 (run augan_rb_l100, 536 steps, 15 CPU-minutes) validation colourfulness swung 41, 47, 33
        # (truth 38) within 15 minutes; lambda 300 at G 5e-5 is calmer. Neither is shipped or in the spend table.
        Stage("adversarial 128, rebalanced λ 300", "augan_rb", ("--init", "{root}/augan_pre", *REBALANCED_GAN,
                                                                *LAMBDA_300, "--lr", "5e-5",
                                                                "--size", "128"), 52),
        Stage("adversarial 256, rebalanced λ 300", "augan_rb", ("--init", "{root}/augan_pre", *REBALANCED_GAN,
                                                                *LAMBDA_300, "--lr", "5e-5",
                                                                "--size", "256", "--resume"), 12),
        Stage("adversarial 256, rebalanced λ 300, settle", "augan_rb", ("--init", "{root}/augan_pre", *REBALANCED_GAN,
                                                                        *LAMBDA_300, "--lr", "2e-5",
                                                                        "--size", "256", "--resume"), 22),
        Stage("adversarial 128, rebalanced λ 1000, settle", "augan_rb", ("--init", "{root}/augan_pre",
                                                                         *REBALANCED_GAN, *LAMBDA_1000, "--lr", "2e-5",
                                                                         "--size", "128", "--resume"), 35),
        Stage("adversarial 256, rebalanced λ 1000, settle", "augan_rb", ("--init", "{root}/augan_pre",
                                                                         *REBALANCED_GAN, *LAMBDA_1000, "--lr", "2e-5",
                                                                         "--size", "256", "--resume"), 20),
        Stage("adversarial 256, rebalanced (mix 0.8) λ 1000", "augan_rb", ("--init", "{root}/augan_pre",
                                                                           *REBALANCED_GAN_08, *LAMBDA_1000,
                                                                           "--lr", "2e-5", "--size", "256", "--resume"),
              25),
        # Release 0.8.0, on the CPU beside the GPU's runs: the same settings from the shipped weights (a new
        # PatchGAN), 128 then 256, two runs side by side: at mix 0.8 whole-val FID 53.44 -> 51.93 with LPIPS (0.199)
        # and colour (34.8 -> 34.1) held, shipped; at mix 0.7 (run augan_s8b, not shipped) 51.83 but LPIPS 0.201.
        Stage("adversarial 128, rebalanced (mix 0.8) λ 1000, new PatchGAN", "augan_s8",
              ("--init", "{root}/augan_rb", *REBALANCED_GAN_08, *LAMBDA_1000, "--lr", "2e-5", "--size", "128"), 33),
        Stage("adversarial 256, rebalanced (mix 0.8) λ 1000, new PatchGAN", "augan_s8",
              ("--init", "{root}/augan_rb", *REBALANCED_GAN_08, *LAMBDA_1000, "--lr", "2e-5", "--size", "256",
               "--resume"), 12),
        # For 0.9.0 it went on from these weights the same way for longer (run augan_s9, --init augan_s8: 2,318
        # steps at 128 in 70 CPU-minutes, 158 at 256 in 20): whole-val FID 51.93 -> 52.74 with LPIPS 0.199 -> 0.197,
        # PSNR 22.00 -> 22.10, colourfulness 34.1 -> 34.0. FID, the metric the models are ranked on, got worse (by less
        # than its noise at 699 images), so it is not shipped and not in the spend table.
    ),
}
#: The proposals the foreground stages train on (``train.proposals``), made before them.
PROPOSALS_COMMAND = ("python", "-m", "train.proposals", "--data", DATA, "--split", "train", "--kind", "object,mixed",
                     "--out", PROPOSALS)


# ----------------------------------------------------------------------------------------------------------
# GPU plans: what ``python -m train.gpu run`` trains on a lent GPU (docs/gpu.md)

@dataclass(frozen=True)
class Lane:
    """Stages of one network that run one after another on the GPU, beside the plan's other lanes. Every stage's
    export is kept as a snapshot and scored on the val split there. Besides ``{root}`` (the device's runs folder),
    the stages' arguments may name ``{weights}``: the weights root they start from (the tree's ``assets/weights``
    unless the payload carries another)."""
    name: str
    network: str
    stages: tuple[Stage, ...]


def gpu_imagenet64(prefix: str, mix: str, extra: tuple[str, ...] = ()) -> tuple[Stage, ...]:
    """A ParaColorizer generator at torchvision's widths (``width=64``) from the ImageNet ResNet-18 encoder: L1 plus
    the ImageNet-feature loss (weight 0.25, as the CPU run that made 1.0.0's background generator) pre-training at
    256 x 256 (two parts), then the adversarial phase from it (a new PatchGAN, ``--init``) on the
    rebalanced L1 at ``mix``, lambda 300, G 1e-4, 5e-5, 2e-5, D 2e-5 (three parts). Batch 32 (``GPU_COMMON``)."""
    imagenet = ("--config", "width=64", "--encoder-init", "imagenet")

    def pretrain(k: int, minutes: float) -> Stage:
        return Stage(f"GPU ImageNet-64 pretrain 256, part {k}", f"{prefix}_pre",
                     (*extra, *imagenet, "--loss-weight", "perceptual=0.25", "--size", "256", "--pretrain-share", "1",
                      "--steps", "100000",
                      *(("--resume",) if k > 1 else ())), minutes, device="cuda")

    def adversarial(k: int, lr: str, minutes: float) -> Stage:
        return Stage(f"GPU ImageNet-64 adversarial 256, rebalanced (mix {mix}) λ 300, G {lr}, part {k}",
                     f"{prefix}_adv", (*extra, "--init", f"{{root}}/{prefix}_pre", *rebalanced_gan(mix), *LAMBDA_300,
                                       "--lr", lr, "--size", "256", *(("--resume",) if k > 1 else ())),
                     minutes, device="cuda")
    return (pretrain(1, 1.25), pretrain(2, 1.25), adversarial(1, "1e-4", 1.25), adversarial(2, "5e-5", 1.25),
            adversarial(3, "2e-5", 1.0))


#: Lanes run side by side on the one GPU; their minutes are wall-clock minutes there (``--minutes`` rescales them).
GPU_PLANS: dict[str, tuple[Lane, ...]] = {
    # The shipped generators continued as ``gpu_finish`` continued them, from the shipped weights (``{weights}``),
    # at the rebalancing that kept their colours (foreground 0.8, background 0.7).
    "continue_shipped": (
        Lane("fg", "paracolorizer_fg", gpu_finish("fg_gpu", "{weights}", "0.8", ("--proposals", PROPOSALS))),
        Lane("bg", "paracolorizer_bg", gpu_finish("bg_gpu", "{weights}", "0.7")),
    ),
    # Not run yet, nothing shipped from it: the papers' generators, width 64 from ImageNet encoders, pre-trained
    # and then adversarial at 256 x 256, with the DenseFuse auto-encoder trained on beside them at 256 x 256 (it
    # fuses any two colourings; its own training sees only images).
    "imagenet64": (
        Lane("fg64", "paracolorizer_fg", gpu_imagenet64("fg64", "0.8", ("--proposals", PROPOSALS))),
        Lane("bg64", "paracolorizer_bg", gpu_imagenet64("bg64", "0.7")),
        Lane("fusion", "paracolorizer_fusion", (
            Stage("GPU 256, continued, part 1", "fusion_gpu", ("--init", "{weights}", "--size", "256",
                                                                "--steps", "100000"), 2.5, device="cuda"),
            Stage("GPU 256, continued, part 2", "fusion_gpu", ("--init", "{weights}", "--size", "256",
                                                                "--steps", "100000", "--resume"), 2.5, device="cuda"),
        )),
    ),
}


def stage_command(network: str, stage: Stage, root: str, minutes: float | None = None,
                  steps: int | None = None) -> list[str]:
    """``python -m train`` for a stage, under ``root``; ``steps`` replaces the budget by an exact step count."""
    args = [a.format(root=root) for a in stage.args]
    if steps is not None:
        args[args.index("--steps") + 1] = str(steps)
    else:
        args += ["--minutes", f"{minutes if minutes is not None else stage.minutes:g}"]
    common = GPU_COMMON if stage.on_gpu else COMMON
    return ["python", "-m", "train", network, "--data", DATA, *common, *args, "--out", f"{root}/{stage.run}"]


def read_history(run_dir: Path) -> list[dict]:
    path = run_dir / "history.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def stage_cpu_minutes(history: dict) -> float:
    """A finished stage's CPU time: measured (``cpu_minutes``, the process's CPU time) where the run recorded it,
    else its wall-clock minutes, which with one thread on an otherwise idle core are the same."""
    return history.get("cpu_minutes", history["minutes"])


def stage_minutes(stage: Stage, history: dict) -> float:
    """A finished stage's cost in its device's minutes: CPU time for a CPU stage (``stage_cpu_minutes``), wall
    time for a GPU stage (its process's CPU time says nothing about the GPU's)."""
    return history["minutes"] if stage.on_gpu else stage_cpu_minutes(history)


def cpu_minutes(network: str) -> float:
    return sum(stage.minutes for stage in PLAN[network] if not stage.on_gpu)


def gpu_minutes(network: str) -> float:
    return sum(stage.minutes for stage in PLAN[network] if stage.on_gpu)


# ----------------------------------------------------------------------------------------------------------
# show / run

def show() -> None:
    total = total_gpu = 0.0
    print(f"$ {shlex.join(PROPOSALS_COMMAND).replace('{root}', 'runs')}")
    for network, stages in PLAN.items():
        total += cpu_minutes(network)
        total_gpu += gpu_minutes(network)
        gpu = f" + {gpu_minutes(network):g} GPU-minutes" if gpu_minutes(network) else ""
        print(f"\n# {network}: {cpu_minutes(network):g} CPU-minutes{gpu}")
        for stage in stages:
            unit = "GPU-min" if stage.on_gpu else "min"
            print(f"$ {shlex.join(stage_command(network, stage, 'runs'))}    # {stage.name}, {stage.minutes:g} {unit}")
    print(f"\n# all networks: {total:g} CPU-minutes ({total / 60:.1f} CPU-hours) + {total_gpu:g} GPU-minutes")


def run(networks: list[str], root: str, scale: float) -> None:
    """Run the networks' stages in order (the proposals first when the foreground needs them)."""
    python = sys.executable
    if "paracolorizer_fg" in networks and not Path(PROPOSALS.format(root=root)).is_file():
        subprocess.run([python, *[a.format(root=root) for a in PROPOSALS_COMMAND[1:]]], cwd=REPO, check=True)
    for network in networks:
        for stage in PLAN[network]:
            command = stage_command(network, stage, root, minutes=stage.minutes * scale)
            print(f"$ {shlex.join(command)}", flush=True)
            subprocess.run([python, *command[1:]], cwd=REPO, check=True)


# ----------------------------------------------------------------------------------------------------------
# ship: final weights + model cards

def _stage_rows(network: str, root: Path) -> list[tuple[Stage, dict]]:
    """(stage, its history entry) in order: a run folder's history lines belong to its stages in order."""
    rows, used = [], {}
    for stage in PLAN[network]:
        history = read_history(root / stage.run / network)
        index = used.get(stage.run, 0)
        if index < len(history):
            rows.append((stage, history[index]))
        used[stage.run] = index + 1
    return rows


def _metric_cell(value: str, decimals: int) -> str:
    try:
        return f"{float(value):.{decimals}f}"
    except ValueError:
        return value or "n/a"


def _metrics_rows(eval_dir: Path | None) -> dict[str, dict[str, str]]:
    if eval_dir is None or not (eval_dir / "metrics.csv").is_file():
        return {}
    with open(eval_dir / "metrics.csv", newline="") as f:
        return {row["method"]: row for row in csv.DictReader(f)}


def model_card(network: str, root: Path, eval_dir: Path | None, dest: Path) -> str:
    """The model card (README.md) of a shipped network."""
    config = json.loads((dest / network / "config.json").read_text())
    net = colorizers.load_network(network, dest)
    params = sum(p.numel() for p in net.parameters())
    size_mb = (dest / network / "model.safetensors").stat().st_size / 1e6
    stages = _stage_rows(network, root)
    on_gpu = any(stage.on_gpu for stage, _ in stages)
    last_run = root / PLAN[network][-1].run / network
    training = json.loads((last_run / "training_config.json").read_text())
    recipe = training["recipe"]
    models = [m for m, nets in colorizers.MODEL_NETWORKS.items() if network in nets]
    metrics = _metrics_rows(eval_dir)
    lines = [
        "---", "library_name: colorizers", "license: mit", "tags: [image-colorization]", "---", "",
        f"# `{network}`", "",
        f"Part of {', '.join(colorizers.MODEL_TITLES[m] for m in models)}. Recipe: {recipe['paper']} "
        f"(`train/recipes.py`); the training plan: `train/plan.py`.", "",
        f"- **Architecture**: `colorizers.build_model({network!r}, **config)`, config: `{json.dumps(config)}`",
        f"- **Size**: {params / 1e6:.2f} M parameters, {size_mb:.1f} MB as fp16 safetensors",
        f"- **Data**: colorize256 (`{DATA}`), train split, kinds {', '.join(recipe['kinds'])}: "
        f"{training['num_images']} training images"
        f"{' and their object-proposal crops' if network == 'paracolorizer_fg' else ''}; "
        "validation on 200 images of the val split.",
        "- **Hardware**: the project's 2-core CPU (AMD EPYC Zen 4 with AVX512-BF16), one torch thread per run, bf16 "
        "autocast + channels-last" + ("; the GPU stages on one NVIDIA H200 (release 0.8.0; the GPU ran two to four "
                                      "such runs at once), bf16 autocast + channels-last." if on_gpu else "."), "",
        "## Training stages", "",
        "| stage | device | phase | size | steps | images | minutes | images per second | val L1 (ab/110) after "
        "| val colourfulness after (truth) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for stage, h in stages:
        validation = h.get("validation", {})
        val = validation.get("val_l1")
        colourful, truth = validation.get("val_colourfulness"), validation.get("val_colourfulness_truth")
        minutes = stage_minutes(stage, h)
        device = "GPU" if stage.on_gpu else "CPU"
        lines.append(f"| {stage.name} | {device} | {h['phase']} | {h['image_size']} | {h['from_step']}→{h['to_step']} | "
                     f"{h['images']} | {minutes:.1f} | {h['images'] / max(minutes * 60, 1e-9):.1f} | "
                     f"{'' if val is None else f'{val:.4f}'} | "
                     f"{'' if colourful is None else f'{colourful:.1f} ({truth:.1f})'} |")
    final_phase = stages[-1][1]["phase"] if stages else None
    weights = [p["losses"] for p in recipe["phases"] if p["name"] == final_phase]
    batches = sorted({(stage.on_gpu, h["batch_size"]) for stage, h in stages})
    batch = ", ".join(f"{size} on the {'GPU' if gpu else 'CPU'}" for gpu, size in batches) if len(batches) > 1 else \
        str(batches[0][1] if batches else 16)
    lines += ["", "Minutes are CPU-minutes (the process's CPU time, one thread) for a CPU stage and wall-clock minutes "
              "for a GPU stage.", "", f"Batch {batch}. Loss terms and weights of the final stage "
              f"({final_phase}): `{json.dumps(weights[0] if weights else {})}`; each stage's own settings "
              "(`--loss-weight`, `--lr`, `--d-lr`) are in its command under Reproduce, the recipe's in "
              "`train/recipes.py`.", ""]
    if weights and "l1_rebalanced" in weights[0]:
        lines[-1:-1] = ["", "`l1_rebalanced` is L1 with each pixel weighted by the rarity of its true colour (Zhang et al. "
                        "2016, section 2.2; `train/losses.py`), with the colour prior mixed with a uniform one at "
                        f"{training['config']['rebalance_mix']:g} (`--rebalance-mix`): neither paper uses it; "
                        "it lifts the L1 regression's desaturated colours (`train/plan.py` says by how much)."]
    if training["config"].get("encoder_init") == "imagenet":
        lines[-1:-1] = ["", "The encoder starts from torchvision's ImageNet ResNet-18 (IMAGENET1K_V1, BSD-3-Clause; "
                        "`--encoder-init imagenet`, `train/imagenet_init.py`)."]
    if weights and "perceptual" in weights[0]:
        lines[-1:-1] = ["", "`perceptual` is the relative distance between the frozen ImageNet ResNet-18's layer1-layer3 "
                        "features of the colour result and of the photo (Johnson et al. 2016; `train/losses.py`): "
                        "neither paper uses it."]
    if get_recipe(network).adversarial and final_phase == "pretrain":  # (the saved recipe lists the phases run)
        lines[-1:-1] = ["", "**Pre-trained only**: the recipe's adversarial phase has not run on these weights yet; "
                        "they are the generator after its pre-training."]
    if metrics:
        lines += ["## Validation metrics (val split, 256 x 256, `python -m train.evaluate`)", "",
                  "| model | Δ Colourful ↓ | FID ↓ | LPIPS ↓ | PSNR ↑ | SSIM ↑ | Colourfulness |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for name in [*models, "grayscale", "ground_truth"]:
            if name in metrics:
                r = metrics[name]
                cells = [_metric_cell(r.get(field, ""), decimals) for field, _, decimals in evaluate.COLUMNS]
                lines.append(f"| {name} | {' | '.join(cells)} |")
        lines += ["", "## Examples", "",
                  "Grey input, the six models and the ground truth on the first val photos (`train.evaluate "
                  "--examples 8`; docs/training.md discusses them):", "",
                  "![grey input, the six models and the ground truth](../../results/examples.png)", ""]
    lines += ["## Reproduce", "", "From the repository root, on the colorize256 data next to it (`../shared/data`); "
              "the step counts are the ones this run reached, so the commands repeat it step for step:", "",
              "```bash"]
    if network == "paracolorizer_fg":
        lines.append(shlex.join(PROPOSALS_COMMAND).replace("{root}", "runs"))
    for stage, h in stages:
        lines.append(shlex.join(stage_command(network, stage, "runs", steps=h["to_step"])))
    lines += [f"mkdir -p assets/weights/{network} && cp runs/{PLAN[network][-1].run}/{network}/"
              f"{{config.json,model.safetensors}} assets/weights/{network}/", "```", ""]
    return "\n".join(lines)


def summary(root: Path, networks: list[str]) -> str:
    """The spend table (docs/training.md) of what the plan spent per network, from the runs' ``history.jsonl``."""
    lines = ["| network | stages (size: steps) | images seen | CPU-minutes | GPU-minutes |", "|---|---|---:|---:|---:|"]
    total = total_gpu = 0.0
    for network in networks:
        rows = _stage_rows(network, root)
        stages = " · ".join(f"{stage.name}: {h['to_step'] - h['from_step']:,}" for stage, h in rows)
        minutes = sum(stage_minutes(stage, h) for stage, h in rows if not stage.on_gpu)
        gpu = sum(stage_minutes(stage, h) for stage, h in rows if stage.on_gpu)
        total, total_gpu = total + minutes, total_gpu + gpu
        gpu_cell = f"{gpu:.1f}" if gpu else ""
        lines.append(f"| `{network}` | {stages} | {sum(h['images'] for _, h in rows):,} | {minutes:.0f} | {gpu_cell} |")
    lines.append(f"| all | | | {total:.0f} ({total / 60:.1f} CPU-hours) | {total_gpu:.1f} |")
    return "\n".join(lines)


def ship(root: Path, eval_dir: Path | None, dest: Path, networks: list[str]) -> None:
    for network in networks:
        source = root / PLAN[network][-1].run / network
        target = dest / network
        target.mkdir(parents=True, exist_ok=True)
        for name in ("config.json", "model.safetensors"):
            shutil.copy2(source / name, target / name)
        (target / "README.md").write_text(model_card(network, root, eval_dir, dest))
        print(f"shipped {network} -> {target}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m train.plan", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("show", help="print every stage's command and budget")
    r = sub.add_parser("run", help="run networks' stages in order")
    r.add_argument("networks", nargs="+", choices=list(PLAN))
    r.add_argument("--root", default="runs")
    r.add_argument("--scale", type=float, default=1.0, help="multiply every budget (e.g. 0.5 on a faster machine)")
    s = sub.add_parser("ship", help="copy each network's final weights to DEST with a model card")
    s.add_argument("--root", default="runs")
    s.add_argument("--eval", default=None, help="a train.evaluate output folder (metrics.csv) for the cards")
    s.add_argument("--dest", default=str(REPO / "assets" / "weights"))
    s.add_argument("--networks", nargs="+", choices=list(PLAN), default=list(PLAN))
    m = sub.add_parser("summary", help="print the spend table of the stages run, from the runs' history")
    m.add_argument("--root", default="runs")
    m.add_argument("--networks", nargs="+", choices=list(PLAN), default=list(PLAN))
    args = p.parse_args(argv)
    if args.command == "show":
        show()
    elif args.command == "summary":
        print(summary(Path(args.root), args.networks))
    elif args.command == "run":
        run(args.networks, args.root, args.scale)
    else:
        ship(Path(args.root), Path(args.eval) if args.eval else None, Path(args.dest), args.networks)


if __name__ == "__main__":
    main()
