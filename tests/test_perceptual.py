"""``losses.PerceptualLoss`` (ImageNet ResNet-18 features, ``--loss-weight perceptual=W``): the features are
torchvision's, the term is zero only for identical images, its network never trains, and a run with the term
trains and logs it. Random weights of torchvision's shapes stand in for the ImageNet file."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from skimage import data as skdata

from train import engine
from train.engine import LOSSES_CSV, TRAINING_CONFIG, TrainingConfig, read_loss_log, train
from train.imagenet_init import IMAGENET_MEAN, IMAGENET_STD
from train.losses import PerceptualLoss

pytestmark = pytest.mark.usefixtures("one_thread")


def random_torchvision_resnet18(seed: int = 0) -> torchvision.models.ResNet:
    """torchvision's ResNet-18 with random weights and random BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    net = torchvision.models.resnet18(weights=None)
    for bn in (m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 1.5)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.2, 0.2)
    return net.eval()


@pytest.fixture(scope="module")
def resnet() -> torchvision.models.ResNet:
    return random_torchvision_resnet18()


@pytest.fixture(scope="module")
def loss(resnet) -> PerceptualLoss:
    return PerceptualLoss(resnet.state_dict())


def photos(size: int = 64) -> torch.Tensor:
    images = [skdata.astronaut(), skdata.coffee(), skdata.chelsea()]
    return torch.stack([torch.from_numpy(np.array(Image.fromarray(p).resize((size, size))))
                        for p in images]).permute(0, 3, 1, 2).float() / 255.0


def test_features_are_torchvisions_layer1_to_layer3_on_imagenet_normalised_rgb(resnet, loss):
    rgb = photos()
    x = (rgb - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        y = resnet.maxpool(resnet.relu(resnet.bn1(resnet.conv1(x))))
        expected = []
        for layer in (resnet.layer1, resnet.layer2, resnet.layer3):
            y = layer(y)
            expected.append(y)
        ours = loss.features(rgb)
    assert len(ours) == 3
    for a, b in zip(ours, expected):
        assert a.shape == b.shape
        assert (a - b).abs().max() <= 1e-4 * b.abs().max()


def test_zero_for_identical_images_and_larger_the_further_the_colours_are(loss):
    rgb = photos()
    grey = rgb.mean(1, keepdim=True).expand_as(rgb)
    assert float(loss(rgb, rgb)) == pytest.approx(0.0, abs=1e-6)
    half = float(loss(0.5 * rgb + 0.5 * grey, rgb))
    assert 0 < half < float(loss(grey, rgb))


def test_gradients_reach_the_colours_but_never_the_feature_network(loss):
    before = {k: v.clone() for k, v in loss.state_dict().items()}
    prediction = photos().mean(1, keepdim=True).expand(-1, 3, -1, -1).clone().requires_grad_(True)
    loss.train()  # what a trainer's .train() would do: the folded network must stay in eval mode
    assert not loss.encoder.training
    value = loss(prediction, photos())
    value.backward()
    assert prediction.grad is not None and prediction.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in loss.parameters())
    assert all(torch.equal(v, before[k]) for k, v in loss.state_dict().items())


def test_weights_without_a_layer_are_refused(resnet):
    partial = {k: v for k, v in resnet.state_dict().items() if not k.startswith("layer3.")}
    with pytest.raises(ValueError, match="lack"):
        PerceptualLoss(partial)


def test_a_run_with_the_term_trains_on_it_and_a_run_without_never_loads_the_network(photo_folder, tmp_path,
                                                                                      monkeypatch, resnet):
    loaded = []
    monkeypatch.setattr(engine, "load_imagenet_resnet18", lambda: loaded.append(1) or resnet.state_dict())
    data = [str(photo_folder)]
    common = dict(steps=2, batch_size=2, image_size=32, model_config={"width": 8}, pretrain_share=1.0,
                  device="cpu", num_threads=1, cache=None, log_every=1, val_data=data, max_val_images=4, split=None)
    out = train(TrainingConfig("paracolorizer_bg", data, str(tmp_path / "with"),
                               loss_weights={"perceptual": 0.5}, **common))
    assert loaded == [1]
    rows = read_loss_log(out / LOSSES_CSV)
    steps = [r for r in rows if r["phase"] != "val"]
    assert len(steps) == 2
    for r in steps:
        assert float(r["g_perceptual"]) > 0
        assert float(r["g_total"]) == pytest.approx(float(r["g_l1"]) + 0.5 * float(r["g_perceptual"]), rel=1e-4)
    assert float([r for r in rows if r["phase"] == "val"][-1]["val_perceptual"]) > 0
    assert (json.loads((out / TRAINING_CONFIG).read_text())["recipe"]["phases"][0]["losses"]
            == {"l1": 1.0, "perceptual": 0.5})
    out = train(TrainingConfig("paracolorizer_bg", data, str(tmp_path / "without"), **common))
    assert loaded == [1]  # weight 0 (every recipe's default): no term, no ResNet-18 needed
    assert all("g_perceptual" not in r for r in read_loss_log(out / LOSSES_CSV))
