"""``--encoder-init imagenet``: the grey stem reproduces the folded torchvision ResNet-18, the re-expanded BNs make
train mode equal eval mode on the calibration images, the CLI flag and its errors.

The tests that need ``../shared/weights/resnet18_imagenet_partial.safetensors`` skip when it is absent (as the
LPIPS tests do without their AlexNet backbone); the errors are checked without it."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from skimage import data as skdata

import colorizers
from colorizers.color import normalize_l, rgb_to_lab
from colorizers.networks.layers import ResNet18Encoder
from train import imagenet_init
from train.__main__ import parse_args
from train.data import read_images
from train.engine import TRAINING_CONFIG, TrainingConfig, build_generator, resolve_recipe, train
from train.imagenet_init import (IMAGENET_MEAN, IMAGENET_STD, calibration_l_norm, check_encoder_init,
                                 imagenet_batchnorms, init_encoder_from_imagenet, load_imagenet_encoder,
                                 load_imagenet_resnet18)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def weights() -> dict[str, torch.Tensor]:
    if not imagenet_init.DEFAULT_RESNET18.is_file():
        pytest.skip(f"no ImageNet ResNet-18 at {imagenet_init.DEFAULT_RESNET18}")
    return load_imagenet_resnet18()


@pytest.fixture(scope="module")
def folded_torchvision(weights) -> torch.nn.Module:
    """torchvision's ResNet-18 with the file's folded weights (only layer4's four 3x3 convs missing), eval mode."""
    net = torchvision.models.resnet18(weights=None)
    missing, unexpected = net.load_state_dict(weights, strict=False)
    assert not unexpected and sorted(missing) == sorted(f"layer4.{b}.conv{c}.weight" for b in (0, 1) for c in (1, 2))
    return net.eval()


def torchvision_features(net: torch.nn.Module, l_norm: torch.Tensor) -> list[torch.Tensor]:
    """The folded network's [stem, layer1, layer2, layer3] on the grey RGB image x = (l + 1) / 2, ImageNet-normalised;
    the image padded with grey 0.5 as our zero-padded l is (torchvision pads its normalised input with 0)."""
    x = F.pad((l_norm + 1.0) / 2.0, (3, 3, 3, 3), value=0.5).expand(-1, 3, -1, -1)
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    stem = net.relu(net.bn1(F.conv2d(x, net.conv1.weight, stride=2)))
    feats, y = [stem], net.maxpool(stem)
    for layer in (net.layer1, net.layer2, net.layer3):
        y = layer(y)
        feats.append(y)
    return feats


def assert_features_close(ours: list[torch.Tensor], reference: list[torch.Tensor], rtol: float = 1e-4) -> None:
    assert len(ours) == len(reference)
    for i, (a, b) in enumerate(zip(ours, reference)):
        assert a.shape == b.shape, i
        error = (a - b).abs().max().item() / b.abs().max().item()
        assert error < rtol, f"feature {i}: relative error {error:.2e}"


def calibration_images(n: int = 6, size: int = 48) -> torch.Tensor:
    """Normalised L of real photos (scikit-image), as the engine converts training images."""
    photos = [skdata.astronaut(), skdata.coffee(), skdata.chelsea(), skdata.rocket(), skdata.immunohistochemistry(),
              skdata.retina()][:n]
    rgb = torch.stack([torch.from_numpy(np.array(Image.fromarray(p).convert("RGB").resize((size, size))))
                       for p in photos]).permute(0, 3, 1, 2)
    return calibration_l_norm(rgb, count=n)


@pytest.fixture(scope="module")
def res_unet_encoder(weights) -> ResNet18Encoder:
    """A Res-UNet's encoder at width 64 (four stages; the file gives three), ImageNet-initialised."""
    torch.manual_seed(0)
    encoder = ResNet18Encoder(in_channels=1, width=64, num_layers=4)
    layer4 = copy.deepcopy(encoder.layer4.state_dict())
    init_encoder_from_imagenet(encoder, calibration_images())
    for name, t in encoder.layer4.state_dict().items():  # no ImageNet layer4: left as it was
        assert torch.equal(t, layer4[name]), name
    return encoder


# ----------------------------------------------------------------------------------------------------------
# The mapping


def test_grey_stem_reproduces_the_folded_torchvision_network(weights, folded_torchvision):
    torch.manual_seed(1)
    encoder = ResNet18Encoder(in_channels=1, width=64, num_layers=3).eval()
    load_imagenet_encoder(encoder, weights)  # folded BNs, not yet re-expanded
    l_norm = torch.rand(2, 1, 40, 56) * 2 - 1
    with torch.no_grad():
        assert_features_close(encoder(l_norm), torchvision_features(folded_torchvision, l_norm))


def test_after_initialisation_eval_mode_is_the_folded_network_on_any_image(res_unet_encoder, folded_torchvision):
    torch.manual_seed(2)
    l_norm = torch.rand(2, 1, 64, 64) * 2 - 1  # not a calibration image
    with torch.no_grad():
        ours = res_unet_encoder.eval()(l_norm)[:4]  # stem, layer1..3 (layer4 is random)
        assert_features_close(ours, torchvision_features(folded_torchvision, l_norm))


def test_after_initialisation_train_mode_equals_eval_mode_on_the_calibration_batch(res_unet_encoder):
    encoder = copy.deepcopy(res_unet_encoder)
    l_norm = calibration_images()
    bns = imagenet_batchnorms(encoder)
    assert len(bns) == 1 + 4 + 5 + 5  # stem; two blocks of two BNs per stage, layer2 and layer3 a downsample BN ...
    assert all(bn.running_mean.abs().max() > 0 and not torch.allclose(bn.weight, torch.ones_like(bn.weight))
               for bn in bns.values())  # ... all re-expanded
    with torch.no_grad():
        evaluated = encoder.eval()(l_norm)[:4]
        trained = encoder.train()(l_norm)[:4]
    assert_features_close(trained, evaluated, rtol=1e-4)


def test_cnn_encoder_is_fully_covered(weights):
    model = colorizers.build_model("cnn")  # default width 64
    own = model.encoder.state_dict()
    names = load_imagenet_encoder(model.encoder, weights)
    assert sorted(names) == sorted(own)  # every encoder tensor comes from the file
    assert model.encoder.conv1.weight.shape == (64, 1, 7, 7)


def test_calibration_is_seeded_and_leaves_the_global_rng_alone():
    rgb = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8)
    state = torch.get_rng_state()
    a = calibration_l_norm(rgb, count=4, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, calibration_l_norm(rgb, count=4, seed=3)) and a.shape == (4, 1, 8, 8)
    everything = calibration_l_norm(rgb, count=100)
    assert torch.allclose(everything, normalize_l(rgb_to_lab(rgb.float() / 255)[:, :1]))  # Trainer.prepare's L


# ----------------------------------------------------------------------------------------------------------
# The engine and the CLI


def test_cli_flag():
    base = ["cnn", "--data", "x", "--out", "y"]
    assert parse_args(base).encoder_init == "none"
    assert parse_args([*base, "--encoder-init", "imagenet"]).encoder_init == "imagenet"
    with pytest.raises(SystemExit):
        parse_args([*base, "--encoder-init", "coco"])


@pytest.mark.parametrize("network", ["cnn_classifier", "attention_ugan", "paracolorizer_fusion"])
def test_networks_without_a_resnet18_encoder_are_an_error(network):
    with pytest.raises(ValueError, match="no ResNet-18 encoder"):
        resolve_recipe(TrainingConfig(network, [], "", encoder_init="imagenet"))


@pytest.mark.parametrize("network, model_config", [
    ("paracolorizer_fg", {}), ("paracolorizer_bg", {}),  # default width 32
    ("paracolorizer_bg", {"width": 16}), ("cnn", {"width": 32}),
])
def test_widths_other_than_torchvisions_are_an_error(network, model_config):
    with pytest.raises(ValueError, match="width=64"):
        resolve_recipe(TrainingConfig(network, [], "", encoder_init="imagenet", model_config=model_config))


def test_other_errors_and_resume(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="--init"):
        resolve_recipe(TrainingConfig("cnn", [], "", encoder_init="imagenet", init="weights"))
    with pytest.raises(ValueError, match="must be one of"):
        check_encoder_init("cnn", "coco")
    # a resumed run's generator comes from its checkpoint: the option is not checked again
    resolve_recipe(TrainingConfig("paracolorizer_bg", [], "", encoder_init="imagenet", resume=True))
    monkeypatch.setattr(imagenet_init, "DEFAULT_RESNET18", tmp_path / "absent.safetensors")
    with pytest.raises(FileNotFoundError, match="absent.safetensors"):
        resolve_recipe(TrainingConfig("cnn", [], "", encoder_init="imagenet"))
    resolve_recipe(TrainingConfig("cnn", [], ""))  # "none" never needs the file


@pytest.mark.parametrize("network", ["paracolorizer_fg", "paracolorizer_bg"])
def test_engine_builds_an_imagenet_initialised_generator(weights, folded_torchvision, photo_folder, network):
    """Both ParaColorizer generators at width 64: their encoder is torchvision's ImageNet ResNet-18 (conv1 ..
    layer3) on the grey input, layer by layer, in eval mode and in train mode on the calibration images."""
    config = TrainingConfig(network, [str(photo_folder)], "", image_size=32, encoder_init="imagenet",
                            model_config={"width": 64}, device="cpu", num_threads=1)
    recipe = resolve_recipe(config)
    images = read_images(config.data, size=32, cache=None)
    model = build_generator(config, recipe, images, None)
    l_norm = calibration_l_norm(images.images)  # all four: the calibration set
    with torch.no_grad():
        evaluated = model.encoder.eval()(l_norm)[:4]
        assert_features_close(evaluated, torchvision_features(folded_torchvision, l_norm))
        assert_features_close(model.encoder.train()(l_norm)[:4], evaluated)
    bns = imagenet_batchnorms(model.encoder)
    assert all(bn.running_mean.abs().max() > 0 for bn in bns.values())  # re-expanded on the training images


def test_a_run_with_imagenet_init_trains_and_records_it(weights, photo_folder, tmp_path):
    out = train(TrainingConfig("cnn", [str(photo_folder)], str(tmp_path), steps=1, batch_size=2, image_size=32,
                               encoder_init="imagenet", device="cpu", num_threads=1, cache=None, log_every=1))
    assert json.loads((out / TRAINING_CONFIG).read_text())["config"]["encoder_init"] == "imagenet"
    model = colorizers.load_network("cnn", tmp_path)
    reference = ResNet18Encoder(in_channels=1, width=64, num_layers=2)
    load_imagenet_encoder(reference, weights)
    # one Adam step at lr 1e-4 moves each weight by about 1e-4: the stem is still ImageNet's (fp16 export)
    difference = (model.encoder.conv1.weight.float() - reference.conv1.weight).abs().max()
    assert difference < 5e-3 * reference.conv1.weight.abs().max()


@pytest.mark.parametrize("arm", ["a", "b", "c", "b_rebalanced", "b_perceptual", "fg_perceptual", "bg_adversarial",
                                 "cnn_shipped", "cnn_imagenet", "cnn_classifier_shipped"])
def test_every_encoder_experiment_arm_is_a_valid_training_command(arm, tmp_path):
    """``python -m train.encoder_experiment``'s arms, first chunk and resumed: the training CLI takes them for the
    arm's network, the ImageNet arms ask for the ImageNet encoder, the rebalanced arms train on the rebalanced L1
    alone, the ``*_perceptual`` arms add the feature loss to L1 (the foreground's on its object proposals),
    ``bg_adversarial`` runs the adversarial phase from the shipped weights with the feature loss at lambda's ratio,
    and the ``*_shipped`` arms start from the bundled weights."""
    from train import encoder_experiment as experiment
    spec = experiment.ARMS[arm]
    cnn_like = spec.network in ("cnn", "cnn_classifier")
    for resume in (False, True):
        command = experiment.train_command(arm, tmp_path, "data.csv", 15.0, spec.size, 1, resume, [])
        assert command[1:4] == ["-m", "train", spec.network]
        config = parse_args(command[3:])
        assert config.network == spec.network and config.resume == resume
        assert config.image_size == (224 if spec.network == "cnn_classifier" else 128)
        imagenet = arm in ("b", "c", "b_rebalanced", "b_perceptual", "fg_perceptual", "cnn_imagenet")
        assert config.encoder_init == ("imagenet" if imagenet else "none")
        rebalanced = arm == "b_rebalanced" or cnn_like
        perceptual = {"perceptual": float(experiment.PERCEPTUAL_WEIGHT)}
        expected = ({"l1": 0.0, "l1_rebalanced": 1.0} if rebalanced
                    else perceptual if arm.endswith("_perceptual")
                    else {"l1": 0.0, "l1_rebalanced": 300.0, "perceptual": 75.0} if arm == "bg_adversarial" else {})
        assert config.loss_weights == expected
        assert config.rebalance_mix == {"b_rebalanced": 0.8, "bg_adversarial": 0.7}.get(arm, 0.9 if rebalanced else 0.5)
        assert config.cpu_minutes == 15.0 and config.out == str(tmp_path / arm)
        assert (config.proposals == experiment.PROPOSALS) == (arm == "fg_perceptual")
        # the pre-training arms at their recipe's batch (32), the cnn and adversarial arms at the plan's (16)
        assert config.batch_size == (16 if cnn_like or arm == "bg_adversarial" else None)
        # an adversarial arm skips the pre-training phase because it starts from trained weights (--init)
        assert (config.pretrain_share == 1.0) == (arm in ("a", "b", "c", "b_rebalanced", "b_perceptual",
                                                          "fg_perceptual"))
    if arm.endswith("_shipped") or arm == "bg_adversarial":
        assert (experiment.REPO / "assets" / "weights" / spec.network / "model.safetensors").is_file()
        assert config.init == str(experiment.REPO / "assets" / "weights")


def test_encoder_experiment_grid_draws_snapshots_beside_the_shipped_weights(photo_folder, tmp_path, capsys):
    """``grid b/01 shipped``: the grey input, a snapshot, the bundled weights and the truth, one row per val photo;
    a snapshot that is not there, or snapshots of two networks, get a message instead of a figure."""
    import json as _json

    from PIL import Image as PILImage

    from tests.helpers import write_random_weights
    from train import encoder_experiment as experiment

    for arm, network in (("b", "paracolorizer_bg"), ("cnn_shipped", "cnn")):
        snapshot = tmp_path / arm / "snapshots" / "01"
        write_random_weights(snapshot, networks=(network,))
        (snapshot / "progress.json").write_text(_json.dumps(
            {"arm": arm, "chunk": 1, "step": 10, "images": 320, "cpu_minutes": 15.0}))
    png = tmp_path / "grid.png"
    common = ["--out", str(tmp_path), "--data", str(photo_folder), "--rows", "3"]
    experiment.main(["grid", "b/01", "shipped", *common, "--png", str(png)])
    width, height = PILImage.open(png).size
    assert (width, height) == (round(1.9 * 4 * 110), round((1.9 * 3 + 0.6) * 110))  # 4 columns, 3 rows
    assert experiment.snapshot_title(tmp_path, "b/snapshots/01") == "(b) 15 CPU-min, 0.3k images"
    with pytest.raises(SystemExit, match="no snapshot b/snapshots/02"):
        experiment.main(["grid", "b/02", *common, "--png", str(tmp_path / "x.png")])
    with pytest.raises(SystemExit, match="one network"):
        experiment.main(["grid", "b/01", "cnn_shipped/01", *common, "--png", str(tmp_path / "x.png")])
    assert not (tmp_path / "x.png").exists()
