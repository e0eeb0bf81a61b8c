"""One training recipe per network, as plain data, from the two papers.

A recipe is a list of phases run one after the other on the same generator. Each phase names the
generator's loss terms and their weights (``"gan"`` makes the phase adversarial and brings in the PatchGAN
discriminator), the optimizer, and its share of the run's steps. ``engine.py`` turns the names into losses:

- ``l1``: mean |ab - ab_hat| in normalised ab units (ab / 110), DTU eq. 1 / 7, ParaColorizer L_L1;
- ``l1_rebalanced``: the same with each pixel weighted by the rarity of its true colour (Zhang et al. 2016,
  section 2.2; ``losses.RebalancedL1``), in no paper's recipe: every colorizer lists it at weight 0, and
  ``--loss-weight l1=0 --loss-weight l1_rebalanced=1`` switches a run to it (``=100`` in place of the GANs'
  lambda * L1; a term at weight 0 is not computed);
- ``perceptual``: the relative distance between ImageNet ResNet-18 features of the colour result and of the photo
  (``losses.PerceptualLoss``, Johnson et al. 2016), in no paper's recipe either: every colorizer lists it at
  weight 0, and ``--loss-weight perceptual=W`` adds it;
- ``ce``: cross-entropy of the class logits over labelled images (DTU eq. 2);
- ``gan``: the generator's adversarial term with the recipe's ``gan_mode``;
- ``edge``: the edge-map loss of ParaColorizer III-A (``losses.EdgeLoss``), on the colour images;
- ``mse``, ``ssim``: DenseFuse's pixel and structural terms, on the reconstructed RGB (III-C).

Deviations shared by all recipes (the papers do not give these, or cannot be followed here):
- batch size 32 for every network (DTU and ParaColorizer give none; pix2pix uses 1), constant learning rates
  (no schedule is described);
- every colorizer trains at its ``native_size`` (256; 224 for ``cnn_classifier``); DTU 3.1.3 rescales the
  CNN baseline's input to 224, but the network is fully convolutional and the app runs it at 256;
- the default image set is the colorize256 roles of ``../shared/data/README.md`` (next to the repository):
  ``object`` + ``mixed`` images stand in for COCO / ImageNet, ``scene`` images for Places;
- ``epochs`` are the papers' own counts, the default length of a run; ``--steps`` / ``--epochs`` override.
"""
from __future__ import annotations

from dataclasses import dataclass, field

MAIN_KINDS = ("object", "mixed")      # COCO / ImageNet in the papers
ALL_KINDS = ("object", "mixed", "scene")  # ... plus Places, for the background colorizer


@dataclass(frozen=True)
class Adam:
    lr: float
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass(frozen=True)
class Phase:
    name: str                        # "train" | "pretrain" | "adversarial"
    losses: dict[str, float]         # generator loss term -> weight
    optimizer: Adam                  # the generator's
    share: float = 1.0               # fraction of the run's steps
    discriminator_optimizer: Adam | None = None  # adversarial phases only

    @property
    def adversarial(self) -> bool:
        return "gan" in self.losses


@dataclass(frozen=True)
class Recipe:
    network: str
    paper: str                       # the section the recipe follows
    phases: tuple[Phase, ...]
    image_size: int = 256
    resizable: bool = True           # False: the network takes ``image_size`` only (cnn_classifier)
    input: str = "l"                 # "l": L -> ab colorization; "rgb": RGB auto-encoder (DenseFuse)
    batch_size: int = 32
    epochs: int = 100
    kinds: tuple[str, ...] = MAIN_KINDS  # manifest rows to train on
    gan_mode: str | None = None      # "vanilla" | "lsgan" for recipes with an adversarial phase
    discriminator: dict = field(default_factory=dict)  # PatchDiscriminator config
    min_class_examples: int | None = None  # cnn_classifier: classes with fewer training images are ignored
    uses_proposals: bool = False     # paracolorizer_fg: object-proposal crops join the full images

    @property
    def adversarial(self) -> bool:
        return any(p.adversarial for p in self.phases)

    @property
    def loss_terms(self) -> list[str]:
        """Every generator term of any phase, in first-use order."""
        return list(dict.fromkeys(term for p in self.phases for term in p.losses))


#: The terms every colorizer lists at weight 0, in no paper's recipe: ``--loss-weight TERM=W`` switches them on.
OPTIONAL_TERMS = {"l1_rebalanced": 0.0, "perceptual": 0.0}
PIX2PIX_L1_WEIGHT = 100.0  # lambda of pix2pix (Isola et al.), which DTU 3.3 and ParaColorizer follow
PARACOLORIZER_PRETRAIN = Adam(1e-4, (0.9, 0.999))  # IV-A "Pre-training the Generators"
PARACOLORIZER_ADVERSARIAL = Adam(2e-4, (0.5, 0.999))  # IV-A, generator and discriminator

RECIPES: dict[str, Recipe] = {
    # DTU 3.1.2-3.1.3: L1 loss, Adam at 1e-4, 100 epochs.
    "cnn": Recipe(
        network="cnn", paper="DTU report 3.1",
        phases=(Phase("train", {"l1": 1.0, **OPTIONAL_TERMS}, Adam(1e-4)),),
        epochs=100,
    ),
    # DTU 3.2.2-3.2.3: L1 + sigma * CE with sigma = 1/300, Adam at 5e-5, 224x224 input, 200 epochs (best at
    # the 110th). The CE term reaches only the classification, global and low-level networks because its
    # path (low-level -> global -> classifier) does not pass mid-level, fusion or colorization layers, which
    # is exactly the report's back-propagation rule; no gradient masking is needed.
    # Deviation: labels come from the manifest and only classes with >= 30 training images are learnt (the
    # report trains on one labelled ImageNet subset); other images still train colour through L1.
    "cnn_classifier": Recipe(
        network="cnn_classifier", paper="DTU report 3.2",
        phases=(Phase("train", {"l1": 1.0, **OPTIONAL_TERMS, "ce": 1.0 / 300.0}, Adam(5e-5)),),
        image_size=224, resizable=False, epochs=110, min_class_examples=30,  # 110: the report's best epoch of 200
    ),
    # DTU 3.3.2-3.3.3: conditional PatchGAN with the vanilla (BCE) loss, eq. 6, generator loss cGAN fake
    # loss + lambda * L1 (eq. 8, lambda = 100 as pix2pix), discriminator at a "quite small" learning rate.
    # Deviations: the report trains from scratch for 100 epochs, or fine-tunes COCO-pretrained parameters for
    # 20; here the first quarter of a run pre-trains the generator with L1 alone (it reports the
    # discriminator is fooled after a few epochs anyway), and ``--init`` fine-tunes a pretrained run, skipping
    # pre-training. Learning rates are pix2pix's (2e-4, betas 0.5/0.999) for the generator, a tenth of it for
    # the discriminator (the report gives no numbers).
    "attention_ugan": Recipe(
        network="attention_ugan", paper="DTU report 3.3",
        phases=(
            Phase("pretrain", {"l1": 1.0, **OPTIONAL_TERMS}, Adam(2e-4, (0.5, 0.999)), share=0.25),
            Phase("adversarial", {"gan": 1.0, "l1": PIX2PIX_L1_WEIGHT, **OPTIONAL_TERMS}, Adam(2e-4, (0.5, 0.999)),
                  share=0.75, discriminator_optimizer=Adam(2e-5, (0.5, 0.999))),
        ),
        epochs=100, gan_mode="vanilla",
    ),
    # ParaColorizer III-A and IV-A: generator pre-training (Adam 1e-4, betas 0.9/0.999, 15 epochs; the loss is
    # not stated, L1 here), then 15 adversarial epochs with LSGAN + lambda1 * edge + lambda2 * L1, Adam 2e-4,
    # betas 0.5/0.999 for both networks, on full images and their object-proposal crops (``--proposals``).
    # lambda1 = 1 is the best of Table IV; lambda2 is not given: pix2pix's 100.
    "paracolorizer_fg": Recipe(
        network="paracolorizer_fg", paper="ParaColorizer III-A, IV-A",
        phases=(
            Phase("pretrain", {"l1": 1.0, **OPTIONAL_TERMS}, PARACOLORIZER_PRETRAIN, share=0.5),
            Phase("adversarial", {"gan": 1.0, "edge": 1.0, "l1": PIX2PIX_L1_WEIGHT, **OPTIONAL_TERMS},
                  PARACOLORIZER_ADVERSARIAL, share=0.5, discriminator_optimizer=PARACOLORIZER_ADVERSARIAL),
        ),
        epochs=30, gan_mode="lsgan", uses_proposals=True,
    ),
    # ParaColorizer III-B and IV-A: as the foreground recipe without edge loss and proposals, on the main set
    # with the scene (Places) images appended; lambda is pix2pix's 100.
    "paracolorizer_bg": Recipe(
        network="paracolorizer_bg", paper="ParaColorizer III-B, IV-A",
        phases=(
            Phase("pretrain", {"l1": 1.0, **OPTIONAL_TERMS}, PARACOLORIZER_PRETRAIN, share=0.5),
            Phase("adversarial", {"gan": 1.0, "l1": PIX2PIX_L1_WEIGHT, **OPTIONAL_TERMS}, PARACOLORIZER_ADVERSARIAL,
                  share=0.5, discriminator_optimizer=PARACOLORIZER_ADVERSARIAL),
        ),
        epochs=30, kinds=ALL_KINDS, gan_mode="lsgan",
    ),
    # ParaColorizer III-C and IV-A: DenseFuse auto-encoder on colour images, MSE + lambda * (1 - SSIM), Adam
    # 1e-4 (betas 0.9/0.999), 20 epochs (IV-A; III-C says nine on COCO: we follow the training details). DenseFuse tries lambda in {1, 10, 100, 1000} with a pixel loss that is
    # the Euclidean norm over the whole image; ours is a per-pixel mean in [0, 1] units, orders of magnitude
    # smaller, so the bottom of that range, lambda = 1, already lets the SSIM term lead (1 - SSIM ~ 1e-2 vs.
    # MSE ~ 1e-3 for a good reconstruction) while keeping colour fidelity in the objective.
    "paracolorizer_fusion": Recipe(
        network="paracolorizer_fusion", paper="ParaColorizer III-C, IV-A",
        phases=(Phase("train", {"mse": 1.0, "ssim": 1.0}, Adam(1e-4)),),
        input="rgb", epochs=20,
    ),
}


def get_recipe(network: str) -> Recipe:
    try:
        return RECIPES[network]
    except KeyError:
        raise ValueError(f"unknown network {network!r}; choose one of {', '.join(RECIPES)}") from None
