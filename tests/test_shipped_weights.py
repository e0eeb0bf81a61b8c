"""The trained weights that ship in ``assets/weights``: every network is there, within the budget, with a model
card, and every model colours real photographs (scikit-image's samples, made here) while keeping their L.

These are the only tests that run the trained networks; a network missing from ``assets/weights`` fails them."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

import colorizers
from colorizers.color import rgb_to_lab
from colorizers.pipeline import image_to_tensor

WEIGHTS = colorizers.BUNDLED_WEIGHTS
BUDGET_MB = 250
#: Real photographs without a download: scikit-image's samples, greyed here (so the model sees only L).
PHOTOS = {"astronaut": skdata.astronaut, "coffee": skdata.coffee, "chelsea": skdata.chelsea, "rocket": skdata.rocket}
#: Mean Lab chroma a coloured result must clearly exceed. A grey image has 0; the val photos' ground truth averages
#: about 20 and the trained models 9-17 on them; 3 is far above the in-gamut rounding of a grey image (< 0.5).
MIN_MEAN_CHROMA = 3.0


@pytest.fixture(scope="module")
def shipped():
    available, unavailable = colorizers.load_colorizers(source=str(WEIGHTS))
    return available, unavailable


@pytest.mark.parametrize("network", colorizers.NETWORK_NAMES)
def test_every_network_ships_with_weights_config_and_model_card(network):
    folder = WEIGHTS / network
    for name in ("config.json", "model.safetensors", "README.md"):
        assert (folder / name).is_file(), f"assets/weights/{network}/{name} is missing"
    card = (folder / "README.md").read_text()
    for section in ("## Training stages", "## Validation metrics", "## Examples", "## Reproduce", "python -m train "):
        assert section in card, f"the model card of {network} lacks {section!r}"
    assert (folder / "../../results/examples.png").resolve().is_file()  # the grid the card shows
    json.loads((folder / "config.json").read_text())


def test_shipped_weights_fit_the_budget():
    total = sum(p.stat().st_size for p in WEIGHTS.glob("*/model.safetensors"))
    assert total <= BUDGET_MB * 1e6, f"{total / 1e6:.1f} MB of weights ship; the budget is {BUDGET_MB} MB"


def test_all_six_models_load(shipped):
    available, unavailable = shipped
    assert not unavailable, f"unavailable: {unavailable}"
    assert set(available) == set(colorizers.MODEL_NAMES)


@pytest.mark.parametrize("model", colorizers.MODEL_NAMES)
def test_each_model_colours_real_photos_and_keeps_their_lightness(shipped, model):
    colorizer = shipped[0][model]
    chromas = []
    for name, photo in PHOTOS.items():
        grey = Image.fromarray(photo()).convert("L").resize((320, 240), Image.BICUBIC)
        out = colorizer.colorize(grey)
        assert out.size == grey.size and out.mode == "RGB"
        lab = rgb_to_lab(image_to_tensor(out))
        l_in = rgb_to_lab(image_to_tensor(grey))[:, :1]
        # L kept: 8-bit rounding of the output allows about half a level of L
        assert (lab[:, :1] - l_in).abs().mean() < 0.5, f"{model} changed the lightness of {name}"
        chromas.append(float(torch.hypot(lab[:, 1], lab[:, 2]).mean()))
    grey_chroma = float(torch.hypot(*rgb_to_lab(image_to_tensor(grey))[0, 1:]).mean())
    assert grey_chroma < 0.5
    assert np.mean(chromas) > MIN_MEAN_CHROMA, (
        f"{model}: mean chroma {np.mean(chromas):.2f} on scikit-image's photos, per photo "
        f"{dict(zip(PHOTOS, np.round(chromas, 2)))}: barely coloured")


@pytest.mark.parametrize("network", ["paracolorizer_bg", "paracolorizer_fg"])
def test_the_paracolorizer_generators_ship_at_the_papers_width_with_their_imagenet_encoder_named(network):
    """Since 1.0.0 (background) and 1.1.0 (foreground) ParaColorizer's generators are the paper's Res-UNet at
    torchvision's widths (width 64, 23.9 M parameters), their encoders started from ImageNet: the card names the
    source of those weights and says the adversarial phase is still to come."""
    net = colorizers.load_network(network, WEIGHTS)
    assert net.encoder.conv1.out_channels == 64
    assert 23.5e6 < sum(p.numel() for p in net.parameters()) < 24.5e6
    card = (WEIGHTS / network / "README.md").read_text()
    assert "torchvision's ImageNet ResNet-18" in card and "Pre-trained only" in card
