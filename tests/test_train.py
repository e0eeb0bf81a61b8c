"""Training on CPU: every network learns on a tiny generated image set and exports weights the app loads;
resume, --init, the CLI and the object-proposal tools."""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.helpers import SMALL_CONFIGS
from PIL import Image
from safetensors import safe_open
from skimage import data as skdata

import colorizers
from train.__main__ import main, parse_args
from train.data import read_images
from train.engine import (CHECKPOINT, CURVES_PNG, LOSSES_CSV, TRAINING_CONFIG, InMemoryBatches, TrainingConfig,
                          build_generator, class_indices, export, frequent_classes, needs_host_copy, read_loss_log,
                          resolve_recipe, train)
from train import metrics, proposals
from train.losses import IGNORE_LABEL
from train.proposals import Detector, Detections, decode, grid_and_strides, propose, read_proposal_crops, square_crop_box

SIZE = 32  # every fully convolutional network works at 32x32 (cnn_classifier is fixed at 224)
PHOTOS = [skdata.astronaut, skdata.coffee, skdata.chelsea, skdata.rocket]
ROWS = [("cat", "object"), ("cat", "mixed"), ("cup", "object"), ("cup", "scene")]  # label, kind per photo
OVERFIT_STEPS = 16
PRETRAIN_STEPS = 8  # pretrain_share 0.5 below


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def mini_set(tmp_path_factory) -> Path:
    """Four scikit-image photos at 64x64 as a folder, and as a colorize256-style tar + manifest."""
    root = tmp_path_factory.mktemp("mini")
    (root / "folder").mkdir()
    with tarfile.open(root / "train-00.tar", "w") as tar:
        for i, photo in enumerate(PHOTOS):
            image = Image.fromarray(photo()).convert("RGB").resize((64, 64), Image.BICUBIC)
            image.save(root / "folder" / f"{i}.png")
            buf = io.BytesIO()
            image.save(buf, "WEBP", lossless=True)
            info = tarfile.TarInfo(f"train/{i:05d}.webp")
            info.size = buf.tell()
            tar.addfile(info, io.BytesIO(buf.getvalue()))
    with open(root / "manifest.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "split", "shard", "source", "label", "kind", "orig_w", "orig_h", "chroma"])
        for i, (label, kind) in enumerate(ROWS):
            writer.writerow([f"train/{i:05d}.webp", "train", "train-00.tar", "skimage", label, kind, 64, 64, 30])
    return root


def small_run(network: str, data: list[str], out: Path, **overrides) -> TrainingConfig:
    """A CPU run at small width and size, logging every step (cnn_classifier, fixed at 224x224, at width 4
    to stay cheap; its classes come from the data). Learning rates above the recipes' let a few
    steps show the loss falling (DenseFuse's decoder, with no output activation, needs the most)."""
    classifier = network == "cnn_classifier"
    settings = dict(
        steps=OVERFIT_STEPS, batch_size=4, image_size=224 if classifier else SIZE,
        lr=3e-3 if network == "paracolorizer_fusion" else 1e-3,
        model_config={"width": 4} if classifier else SMALL_CONFIGS[network],
        discriminator_config={"ndf": 8}, pretrain_share=0.5, min_class_examples=2, log_every=1, device="cpu",
        num_threads=1,
    )
    settings.update(overrides)
    return TrainingConfig(network, data, str(out), **settings)


@pytest.fixture(scope="module")
def proposals_file(mini_set, tmp_path_factory) -> Path:
    """A proposals .npz made by ``propose`` with a stand-in detector (one box per image)."""
    class OneBox:
        def detect(self, image):
            return Detections(np.array([[8, 16, 40, 48]], np.float32), np.array([0.9], np.float32), np.array([0]))

    images = read_images([str(mini_set / "folder")], size=64)
    path = tmp_path_factory.mktemp("proposals") / "proposals.npz"
    np.savez(path, **propose(images, OneBox(), size=64, max_per_image=1, min_box_size=8))
    return path


@pytest.fixture(scope="module")
def trained(mini_set, proposals_file, tmp_path_factory) -> Path:
    """All six networks trained into one weights root, from the manifest (labels, kinds) and the proposals."""
    root = tmp_path_factory.mktemp("weights")
    for network in colorizers.NETWORK_NAMES:
        extra = {"paracolorizer_fg": {"proposals": str(proposals_file)},
                 # every kind, for two classes of two images; CE at full weight so a few steps show it fall
                 "cnn_classifier": {"kinds": ["object", "mixed", "scene"], "loss_weights": {"ce": 1.0}}}.get(network, {})
        train(small_run(network, [str(mini_set / "manifest.csv")], root, **extra))
    return root


@pytest.mark.parametrize("network", colorizers.NETWORK_NAMES)
def test_loss_falls_when_overfitting_a_few_images(trained, network):
    rows = [r for r in read_loss_log(trained / network / LOSSES_CSV) if r["phase"] != "val"]
    assert [int(r["step"]) for r in rows] == list(range(1, OVERFIT_STEPS + 1))
    term = "g_total" if network == "paracolorizer_fusion" else "g_l1"  # l1 runs through both GAN phases
    losses = [float(r[term]) for r in rows]
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    assert last < 0.8 * first, f"{network}: {term} went from {first:.4f} to {last:.4f}"
    if network in ("attention_ugan", "paracolorizer_fg", "paracolorizer_bg"):
        assert [r["phase"] for r in rows] == ["pretrain"] * PRETRAIN_STEPS + ["adversarial"] * PRETRAIN_STEPS
        assert all(r["d_real"] and r["d_fake"] for r in rows[PRETRAIN_STEPS:]) and not rows[0]["d_real"]
    for name in ("config.json", "model.safetensors", TRAINING_CONFIG, CHECKPOINT, CURVES_PNG):
        assert (trained / network / name).is_file()


@pytest.mark.parametrize("model", colorizers.MODEL_NAMES)
def test_exported_weights_load_and_colorize(trained, model):
    colorizer = colorizers.load_colorizer(model, source=trained)
    out = colorizer.colorize(Image.fromarray(skdata.coffee()).convert("L").resize((48, 40)))
    assert out.size == (48, 40) and out.mode == "RGB"


@pytest.mark.parametrize("network", colorizers.NETWORK_NAMES)
def test_exported_weights_are_fp16_and_the_checkpoint_full_precision(trained, network):
    with safe_open(trained / network / "model.safetensors", "pt") as f:
        exported = {key: f.get_tensor(key) for key in f.keys()}
    assert {t.dtype for t in exported.values() if t.is_floating_point()} == {torch.float16}
    checkpoint = torch.load(trained / network / CHECKPOINT, weights_only=False)["generator"]
    assert {t.dtype for t in checkpoint.values() if t.is_floating_point()} == {torch.float32}
    assert exported.keys() == checkpoint.keys()
    loaded = colorizers.load_network(network, trained).state_dict()  # cast back into the float32 network
    for key, value in checkpoint.items():
        assert loaded[key].dtype == value.dtype
        torch.testing.assert_close(loaded[key], value.to(torch.float16).to(value.dtype), msg=key)


def test_export_dtype_float32_keeps_full_precision(tmp_path):
    net = colorizers.build_model("cnn", **SMALL_CONFIGS["cnn"])
    export(net, tmp_path / "cnn", "float32")
    with safe_open(tmp_path / "cnn" / "model.safetensors", "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys() if f.get_tensor(k).is_floating_point()} == {torch.float32}
    for key, value in colorizers.load_network("cnn", tmp_path).state_dict().items():
        torch.testing.assert_close(value, net.state_dict()[key], rtol=0, atol=0)
    with pytest.raises(ValueError, match="export dtype"):
        export(net, tmp_path / "x", "bfloat16")
    with torch.no_grad():
        next(net.parameters()).fill_(1e6)  # beyond fp16's 65504: an error, not inf in the shipped file
    with pytest.raises(ValueError, match="float16 range"):
        export(net, tmp_path / "big", "float16")
    assert parse_args(["cnn", "--data", "x", "--out", "y"]).export_dtype == "float16"
    assert parse_args(["cnn", "--data", "x", "--out", "y", "--export-dtype", "float32"]).export_dtype == "float32"


def test_classifier_learns_the_frequent_classes_and_stores_them(trained):
    config = json.loads((trained / "cnn_classifier" / "config.json").read_text())
    assert config["class_names"] == ["cat", "cup"] and config["num_classes"] == 2
    rows = read_loss_log(trained / "cnn_classifier" / LOSSES_CSV)
    assert np.mean([float(r["g_ce"]) for r in rows[-3:]]) < np.mean([float(r["g_ce"]) for r in rows[:3]])


def test_rare_and_unknown_classes_are_left_out_of_the_classifier():
    labels = ["cat", None, "cat", "cup", "dog", "dog"]
    classes = frequent_classes(labels, min_examples=2)
    assert classes == ["cat", "dog"]
    assert class_indices(labels, classes).tolist() == [0, IGNORE_LABEL, 0, IGNORE_LABEL, 1, 1]


def test_foreground_trains_on_images_and_crops_background_on_scenes_too(trained):
    fg = json.loads((trained / "paracolorizer_fg" / TRAINING_CONFIG).read_text())
    bg = json.loads((trained / "paracolorizer_bg" / TRAINING_CONFIG).read_text())
    assert fg["num_images"] == 3 + 4  # object + mixed photos, plus one crop per photo
    assert bg["num_images"] == 4      # every kind, scenes included


def test_only_a_host_resident_set_is_copied_to_the_training_device():
    """The first GPU training run failed on this: a set placed on ``cuda`` lives on ``cuda:0``, and comparing the two
    devices sent every GPU batch to ``pin_memory``, which refuses GPU tensors."""
    cuda, cuda0, cpu = torch.device("cuda"), torch.device("cuda:0"), torch.device("cpu")
    assert not needs_host_copy(cuda0, cuda)
    assert not needs_host_copy(cuda0, cuda0)
    assert not needs_host_copy(cpu, cpu)
    assert needs_host_copy(cpu, cuda) and needs_host_copy(cpu, cuda0)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))])
def test_batches_come_on_the_training_device_as_floats(device):
    images = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8)
    batches = InMemoryBatches(images, torch.zeros(10, dtype=torch.long), 4, torch.device(device), seed=0)
    rgb, labels = batches.next()
    assert rgb.device.type == labels.device.type == device
    assert rgb.shape == (4, 3, 8, 8) and rgb.dtype == torch.float32
    assert 0.0 <= float(rgb.min()) and float(rgb.max()) <= 1.0


def test_resume_continues_from_the_saved_step_exactly(mini_set, tmp_path):
    data = [str(mini_set / "folder")]
    straight = train(small_run("cnn", data, tmp_path / "straight", steps=6))
    train(small_run("cnn", data, tmp_path / "split", steps=3))
    resumed = train(small_run("cnn", data, tmp_path / "split", steps=6, resume=True))
    assert json.loads((resumed / TRAINING_CONFIG).read_text())["resumed_from_step"] == 3
    assert [int(r["step"]) for r in read_loss_log(resumed / LOSSES_CSV)] == [1, 2, 3, 4, 5, 6]
    assert torch.load(resumed / CHECKPOINT, weights_only=False)["step"] == 6
    a = colorizers.load_network("cnn", straight.parent).state_dict()
    b = colorizers.load_network("cnn", resumed.parent).state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=f"resumed run differs in {key}")


def test_resume_of_a_gan_restores_the_discriminator_phase(mini_set, tmp_path):
    data = [str(mini_set / "folder")]
    train(small_run("attention_ugan", data, tmp_path, steps=4))
    d_before = torch.load(tmp_path / "attention_ugan" / CHECKPOINT, weights_only=False)["discriminator"]
    train(small_run("attention_ugan", data, tmp_path, steps=6, resume=True, pretrain_share=0.25))
    state = torch.load(tmp_path / "attention_ugan" / CHECKPOINT, weights_only=False)
    assert state["step"] == 6 and state["phase"] == "adversarial"
    rows = read_loss_log(tmp_path / "attention_ugan" / LOSSES_CSV)
    assert [r["phase"] for r in rows] == ["pretrain", "pretrain", "adversarial", "adversarial", "adversarial", "adversarial"]
    key = "model.0.weight"
    assert not torch.equal(d_before[key], state["discriminator"][key])  # it went on training the same D


def test_a_resumed_run_takes_its_own_learning_rates(mini_set, tmp_path):
    """``--resume --lr X --d-lr Y`` trains on at X and Y, not at the checkpoint's rates (the optimizer state alone
    would restore those); the moments still come from the checkpoint."""
    data = [str(mini_set / "folder")]
    train(small_run("attention_ugan", data, tmp_path, steps=4, pretrain_share=0.25, lr=1e-3, discriminator_lr=1e-3))
    moments = torch.load(tmp_path / "attention_ugan" / CHECKPOINT, weights_only=False)["generator_optimizer"]["state"]
    train(small_run("attention_ugan", data, tmp_path, steps=5, resume=True, pretrain_share=0.25, lr=2e-4,
                    discriminator_lr=3e-5))
    state = torch.load(tmp_path / "attention_ugan" / CHECKPOINT, weights_only=False)
    assert [g["lr"] for g in state["generator_optimizer"]["param_groups"]] == [2e-4]
    assert [g["lr"] for g in state["discriminator_optimizer"]["param_groups"]] == [3e-5]
    assert state["generator_optimizer"]["state"][0]["step"] == moments[0]["step"] + 1  # the moments went on


def test_resume_without_checkpoint_is_a_clear_error(mini_set, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(small_run("cnn", [str(mini_set / "folder")], tmp_path, resume=True))


def test_init_fine_tunes_a_trained_generator_without_pretraining(mini_set, trained, tmp_path):
    out = train(small_run("attention_ugan", [str(mini_set / "folder")], tmp_path, steps=2, model_config={},
                          init=str(trained)))
    assert [r["phase"] for r in read_loss_log(out / LOSSES_CSV)] == ["adversarial", "adversarial"]
    config = json.loads((out / "config.json").read_text())
    assert config == json.loads((trained / "attention_ugan" / "config.json").read_text())


def test_validation_reports_the_colourfulness_of_outputs_and_truth(mini_set, tmp_path):
    """A colorizer's validation rows carry the mean colourfulness of its colours and of the held-out truth (what
    shows a GAN drifting grey or garish); the truth's is the metric of the validation images themselves."""
    from colorizers.metrics import colourfulness
    from train.data import read_images
    data = [str(mini_set / "folder")]
    out = train(small_run("cnn", data, tmp_path, steps=2, val_data=data, split=None, max_val_images=4))
    val = [r for r in read_loss_log(out / LOSSES_CSV) if r["phase"] == "val"][-1]
    images = read_images(data, split="val", size=SIZE, max_images=4).images.float() / 255.0
    assert float(val["val_colourfulness_truth"]) == pytest.approx(float(colourfulness(images).mean()), rel=1e-4)
    assert float(val["val_colourfulness"]) >= 0 and float(val["val_l1"]) > 0


def test_a_cnn_trains_on_the_rebalanced_l1_and_still_reports_plain_l1(mini_set, tmp_path):
    """``--loss-weight l1=0 --loss-weight l1_rebalanced=1`` trains a CNN baseline on the rebalanced L1 alone:
    plain L1 is then not computed in the step but still reported in validation; a recipe whose every term is
    switched off is refused."""
    data = [str(mini_set / "folder")]
    out = train(small_run("cnn", data, tmp_path, steps=3, val_data=data, split=None, max_val_images=4,
                          loss_weights={"l1": 0.0, "l1_rebalanced": 1.0}))
    rows = read_loss_log(out / LOSSES_CSV)
    steps = [r for r in rows if r["phase"] != "val"]
    assert all(float(r["g_l1_rebalanced"]) > 0 and "g_l1" not in r for r in steps)
    val = [r for r in rows if r["phase"] == "val"][-1]
    assert float(val["val_l1"]) > 0 and float(val["val_l1_rebalanced"]) > 0
    assert float(val["val_l1_rebalanced"]) != pytest.approx(float(val["val_l1"]), rel=1e-3)  # really re-weighted
    with pytest.raises(ValueError, match="weight 0"):
        train(small_run("cnn", data, tmp_path / "none", steps=1, split=None, loss_weights={"l1": 0.0}))


def test_a_gan_takes_the_rebalanced_l1_in_place_of_its_lambda_l1(mini_set, tmp_path):
    """The GAN recipes list ``l1_rebalanced`` at weight 0 too: ``l1=0, l1_rebalanced=100`` makes the adversarial
    generator loss gan + 100 * rebalanced L1 (plan's ``REBALANCED_GAN``), with the discriminator still training."""
    data = [str(mini_set / "folder")]
    out = train(small_run("paracolorizer_bg", data, tmp_path, steps=2, pretrain_share=0.0, split=None,
                          loss_weights={"l1": 0.0, "l1_rebalanced": 100.0}))
    steps = read_loss_log(out / LOSSES_CSV)
    assert [r["phase"] for r in steps] == ["adversarial", "adversarial"]
    for r in steps:
        assert "g_l1" not in r and float(r["d_real"]) > 0
        assert float(r["g_total"]) == pytest.approx(float(r["g_gan"]) + 100 * float(r["g_l1_rebalanced"]), rel=1e-4)
    saved = json.loads((out / TRAINING_CONFIG).read_text())
    assert saved["recipe"]["phases"][-1]["losses"] == {"gan": 1.0, "l1_rebalanced": 100.0}


def test_cli_trains_with_validation_and_reports_errors(mini_set, tmp_path, capsys):
    args = ["paracolorizer_fusion", "--data", str(mini_set / "folder"), "--out", str(tmp_path), "--steps", "2",
            "--size", "32", "--config", "width=4", "--batch-size", "2", "--val-data", str(mini_set / "folder"),
            "--loss-weight", "ssim=10", "--log-every", "1", "--threads", "1"]
    main(args)
    rows = read_loss_log(tmp_path / "paracolorizer_fusion" / LOSSES_CSV)
    assert [r["phase"] for r in rows] == ["train", "train", "val"] and float(rows[-1]["val_ssim"]) > 0
    saved = json.loads((tmp_path / "paracolorizer_fusion" / TRAINING_CONFIG).read_text())
    assert saved["recipe"]["phases"][0]["losses"] == {"mse": 1.0, "ssim": 10}
    assert saved["model_config"]["width"] == 4
    with pytest.raises(SystemExit, match="does not exist"):
        main(["cnn", "--data", str(tmp_path / "missing"), "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="no loss term"):
        main(["cnn", "--data", str(mini_set / "folder"), "--out", str(tmp_path), "--loss-weight", "edge=1"])
    with pytest.raises(SystemExit, match="224x224 images only"):
        main(["cnn_classifier", "--data", str(mini_set / "folder"), "--out", str(tmp_path), "--size", "64"])
    with pytest.raises(SystemExit):
        main(["transformer", "--data", str(mini_set / "folder"), "--out", str(tmp_path)])
    assert "invalid choice: 'transformer'" in capsys.readouterr().err


def test_classifier_without_labels_is_a_clear_error(mini_set, tmp_path):
    with pytest.raises(ValueError, match="needs labelled images"):
        train(small_run("cnn_classifier", [str(mini_set / "folder")], tmp_path))


# ---------------------------------------------------------------------------------------------------------
# Object proposals

def test_decode_thresholds_scales_and_suppresses_per_class():
    grid, stride = grid_and_strides()
    output = np.zeros((len(grid), 85), np.float32)

    def put(row, cx_offset, log_w, objectness, cls, prob):
        output[row, :4] = [cx_offset, cx_offset, log_w, log_w]
        output[row, 4] = objectness
        output[row, 5 + cls] = prob

    first = 5 * 52 + 10  # stride-8 cell x=10, y=5
    put(first, 0.5, np.log(4.0), 0.9, 3, 0.8)         # box centred (84, 44), 32 x 32, score 0.72
    put(first + 1, 0.5, np.log(4.0), 0.9, 3, 0.5)     # same class, 8 px right: suppressed by NMS
    put(first + 52, 0.5, np.log(4.0), 0.9, 7, 0.6)    # other class, 8 px down: kept
    put(2704 + 3, 0.0, 0.0, 0.2, 1, 0.9)              # score 0.18: below the threshold
    found = decode(output, score_threshold=0.3, nms_threshold=0.45)
    assert found.classes.tolist() == [3, 7]
    np.testing.assert_allclose(found.scores, [0.72, 0.54], rtol=1e-6)
    np.testing.assert_allclose(found.boxes[0], [68, 28, 100, 60])
    np.testing.assert_allclose(found.boxes[1], [68, 36, 100, 68])


def test_square_crop_box_keeps_aspect_inside_the_image():
    assert square_crop_box(np.array([10, 20, 30, 60]), 100, 100) == (0, 20, 40, 60)
    assert square_crop_box(np.array([80, 0, 100, 10]), 100, 50) == (80, 0, 100, 20)
    assert square_crop_box(np.array([0, 0, 100, 40]), 100, 50) == (25, 0, 75, 50)


def test_propose_cuts_the_detected_region(proposals_file):
    crops = read_proposal_crops(str(proposals_file), size=64)
    assert crops.images.shape == (4, 3, 64, 64) and crops.kinds == ["proposal"] * 4
    with np.load(proposals_file) as archive:
        assert archive["crop_boxes"].tolist() == [[8, 16, 40, 48]] * 4
        assert archive["image_names"].tolist() == ["0.png", "1.png", "2.png", "3.png"]
    photo = np.asarray(Image.fromarray(PHOTOS[0]()).convert("RGB").resize((64, 64), Image.BICUBIC)).astype(float)
    region = photo[16:48, 8:40].mean((0, 1))
    assert np.abs(crops.images[0].float().mean((1, 2)).numpy() - region).max() < 3


class BoxesOfSides:
    """A stand-in detector: square boxes of the given sides at the image's top-left, best first."""

    def __init__(self, sides):
        self.sides = sides

    def detect(self, image):
        boxes = np.array([[0, 0, side, side] for side in self.sides], np.float32)
        return Detections(boxes, np.linspace(0.9, 0.5, len(self.sides)).astype(np.float32), np.zeros(len(self.sides)))


def test_boxes_under_the_minimum_size_are_dropped(mini_set, tmp_path, monkeypatch):
    images = read_images([str(mini_set / "folder")], size=128)
    # 128 px images: the 40 px box would be up-sampled 6.4x to a 256 crop, the 64 px one 4x (the default's limit)
    kept = propose(images, BoxesOfSides([40, 64, 100]), size=256, max_per_image=3)
    assert kept["boxes"][:, 2].tolist() == [64, 100] * len(images)
    assert propose(images, BoxesOfSides([40, 64]), max_per_image=3, min_box_size=32)["boxes"].shape == (8, 4)
    with pytest.raises(ValueError, match="at least 1 pixel"):
        propose(images, BoxesOfSides([40]), min_box_size=0)
    # the CLI option reaches propose (and --image-size the images detection runs on)
    monkeypatch.setattr(proposals, "Detector", lambda *args: BoxesOfSides([40, 64, 100]))
    proposals.main(["--data", str(mini_set / "folder"), "--out", str(tmp_path / "p.npz"), "--image-size", "128",
                    "--size", "64", "--max-per-image", "3", "--min-box-size", "80"])
    with np.load(tmp_path / "p.npz") as archive:
        assert archive["boxes"][:, 2].tolist() == [100] * 4 and archive["crops"].shape == (4, 3, 64, 64)


def test_default_detector_is_in_the_shared_weights_next_to_the_repository():
    """Found relative to the checkout (as the LPIPS backbone), not at one machine's absolute path."""
    repo = Path(proposals.__file__).resolve().parents[1]
    assert proposals.DEFAULT_DETECTOR == repo.parent / "shared" / "weights" / "yolox_nano.onnx"
    assert proposals.DEFAULT_DETECTOR.parent == metrics.DEFAULT_LPIPS_BACKBONE.parent


def test_real_detector_runs_on_a_letterboxed_image():
    if not proposals.DEFAULT_DETECTOR.is_file():
        pytest.skip(f"the YOLOX-nano ONNX file is not at {proposals.DEFAULT_DETECTOR}")
    detector = Detector()
    image = np.asarray(Image.fromarray(skdata.astronaut()).resize((150, 100)))
    output, ratio = detector.raw_output(image)
    assert output.shape == (3549, 85) and ratio == pytest.approx(416 / 150)
    found = detector.detect(image)
    assert ((found.boxes >= 0) & (found.boxes <= [150, 100, 150, 100])).all()


# ---------------------------------------------------------------------------------------------------------
# Time-boxed runs, a change of image size on resume, precision

@pytest.fixture
def clock_of_steps(monkeypatch):
    """The engine's clock reads 10 s per optimisation step taken, so a time budget ends after a known step."""
    from train import engine
    steps = {"n": 0}
    step = engine.Trainer.step

    def counted_step(self, *args):
        steps["n"] += 1
        return step(self, *args)

    monkeypatch.setattr(engine.Trainer, "step", counted_step)
    monkeypatch.setattr(engine.time, "monotonic", lambda: 10.0 * steps["n"])
    monkeypatch.setattr(engine.time, "process_time", lambda: 10.0 * steps["n"])  # the CPU-time budget's clock
    return steps


def test_a_run_stopped_by_its_time_budget_is_loadable_and_resumes_to_the_same_weights(mini_set, tmp_path,
                                                                                      clock_of_steps, capsys):
    data = [str(mini_set / "folder")]
    straight = train(small_run("paracolorizer_bg", data, tmp_path / "straight", steps=6))
    boxed = train(small_run("paracolorizer_bg", data, tmp_path / "boxed", steps=6, minutes=0.5))  # 30 s: 3 steps
    report = capsys.readouterr()
    assert "stopped by the 0.5-minute budget (--resume continues) at step 3/6" in report.out + report.err
    assert torch.load(boxed / CHECKPOINT, weights_only=False)["step"] == 3
    rows = read_loss_log(boxed / LOSSES_CSV)
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert colorizers.load_colorizer("paracolorizer_bg", source=boxed.parent).colorize(
        Image.fromarray(skdata.coffee()).resize((40, 30))).size == (40, 30)  # the export is there and loads
    resumed = train(small_run("paracolorizer_bg", data, tmp_path / "boxed", steps=6, resume=True))
    assert [r["phase"] for r in read_loss_log(resumed / LOSSES_CSV)] == ["pretrain"] * 3 + ["adversarial"] * 3
    a = colorizers.load_network("paracolorizer_bg", straight.parent).state_dict()
    b = colorizers.load_network("paracolorizer_bg", resumed.parent).state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=f"resumed run differs in {key}")


def test_a_cpu_time_budget_stops_a_run_as_a_wall_clock_budget_does(mini_set, tmp_path, clock_of_steps, capsys):
    """``--cpu-minutes``: the process's CPU time (10 s per step here) ends the run after a known step, with a
    checkpoint, a loadable export and a history line; runs sharing the cores get equal work this way."""
    boxed = train(small_run("cnn", [str(mini_set / "folder")], tmp_path, steps=6, cpu_minutes=0.5))
    report = capsys.readouterr()
    assert "stopped by the 0.5 CPU-minute budget (--resume continues) at step 3/6" in report.out + report.err
    assert torch.load(boxed / CHECKPOINT, weights_only=False)["step"] == 3
    history = json.loads((boxed / "history.jsonl").read_text().splitlines()[-1])
    assert history["stopped_by_budget"] and history["to_step"] == 3 and history["cpu_minutes"] == 0.5
    assert parse_args(["cnn", "--data", "x", "--out", "y", "--cpu-minutes", "90"]).cpu_minutes == 90
    with pytest.raises(ValueError, match="--cpu-minutes must be positive"):
        train(small_run("cnn", [str(mini_set / "folder")], tmp_path / "zero", cpu_minutes=0))


def encoder_state(generator_state: dict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in generator_state.items() if k.startswith("encoder.")}


def test_a_frozen_encoder_is_unchanged_until_released_then_trains(mini_set, tmp_path):
    """``--freeze-encoder-steps``: the encoder's weights and BatchNorm statistics stay exactly as they started
    while the decoder trains; after the warm-up, the encoder trains too (also across ``--resume``)."""
    data = [str(mini_set / "folder")]
    config = small_run("paracolorizer_bg", data, tmp_path / "run", steps=2, pretrain_share=1.0,
                       freeze_encoder_steps=2, export_dtype="float32")
    torch.manual_seed(config.seed)  # the engine seeds before building the generator, so this is its start
    initial = build_generator(config, resolve_recipe(config), read_images(data, size=SIZE, cache=None), None)
    initial = {k: v.clone() for k, v in initial.state_dict().items()}
    frozen = torch.load(train(config) / CHECKPOINT, weights_only=False)["generator"]
    for key, value in encoder_state(initial).items():
        assert torch.equal(frozen[key], value), f"{key} changed while the encoder was frozen"
    decoder = [k for k in initial if not k.startswith("encoder.") and initial[k].is_floating_point()]
    assert any(not torch.equal(frozen[k], initial[k]) for k in decoder), "the decoder did not train"

    released = train(dataclasses.replace(config, steps=4, resume=True))
    after = torch.load(released / CHECKPOINT, weights_only=False)["generator"]
    changed = [k for k, v in encoder_state(initial).items() if not torch.equal(after[k], v)]
    assert any(k.endswith("conv1.weight") for k in changed) and any(k.endswith("running_mean") for k in changed)
    history = [json.loads(line) for line in (released / "history.jsonl").read_text().splitlines()]
    assert [h["frozen_encoder_steps"] for h in history] == [2, 0]


def test_freezing_needs_a_resnet18_encoder(mini_set, tmp_path):
    with pytest.raises(ValueError, match="attention_ugan has no ResNet-18 encoder"):
        train(small_run("attention_ugan", [str(mini_set / "folder")], tmp_path, freeze_encoder_steps=2))
    assert parse_args(["cnn", "--data", "x", "--out", "y", "--freeze-encoder-steps", "5"]).freeze_encoder_steps == 5


def test_kill_stops_a_run_cleanly_after_its_step(mini_set, tmp_path, monkeypatch, capsys):
    """SIGTERM (``kill PID``) mid-run: the run ends after that step with a checkpoint, an export and a history line,
    as a spent budget does, and the process's own SIGTERM handler is back afterwards."""
    import signal
    from train import engine
    calls = {"n": 0}
    step = engine.Trainer.step

    def step_then_signal(self, *args):
        calls["n"] += 1
        result = step(self, *args)
        if calls["n"] == 2:
            signal.raise_signal(signal.SIGTERM)  # the handler runs in this (main) thread, at once
        return result

    monkeypatch.setattr(engine.Trainer, "step", step_then_signal)
    before = signal.getsignal(signal.SIGTERM)
    out = train(small_run("cnn", [str(mini_set / "folder")], tmp_path, steps=6))
    assert signal.getsignal(signal.SIGTERM) is before
    report = capsys.readouterr()
    assert "stopped on request (--resume continues) at step 2/6" in report.out + report.err
    assert torch.load(out / CHECKPOINT, weights_only=False)["step"] == 2
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert history[-1]["to_step"] == 2 and history[-1]["stopped_on_request"] and not history[-1]["stopped_by_budget"]
    assert history[-1]["cpu_minutes"] >= 0  # the process's CPU time, for the model cards
    colorizers.load_network("cnn", tmp_path)  # the export is there and loads


def test_a_run_at_a_small_size_continues_at_the_native_size(mini_set, tmp_path):
    data = [str(mini_set / "folder")]
    train(small_run("cnn", data, tmp_path, steps=3, image_size=32))
    before = colorizers.load_network("cnn", tmp_path).state_dict()
    out = train(small_run("cnn", data, tmp_path, steps=6, image_size=64, resume=True))
    saved = json.loads((out / TRAINING_CONFIG).read_text())
    assert saved["recipe"]["image_size"] == 64 and saved["resumed_from_step"] == 3
    assert [int(r["step"]) for r in read_loss_log(out / LOSSES_CSV)] == [1, 2, 3, 4, 5, 6]
    assert torch.load(out / CHECKPOINT, weights_only=False)["step"] == 6
    after = colorizers.load_network("cnn", tmp_path).state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it trained on at 64x64


def test_training_precision_bf16_only_where_native(monkeypatch):
    from colorizers import precision
    from train.engine import Trainer, resolve_recipe
    recipe = resolve_recipe(TrainingConfig("cnn", [], ""))

    def trainer(setting):
        return Trainer(recipe, colorizers.build_model("cnn", width=8), torch.device("cpu"), precision=setting)

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert trainer("auto").precision == "fp32" and trainer("auto").memory_format == torch.contiguous_format
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    bf16 = trainer("auto")
    assert bf16.precision == "bf16" and bf16.memory_format == torch.channels_last
    assert trainer("fp32").precision == "fp32"
    rgb = torch.rand(2, 3, 32, 32)
    batch = bf16.prepare(rgb, torch.full((2,), IGNORE_LABEL))
    assert bf16.predict(batch).ab_norm.dtype == torch.bfloat16 and batch.ab_norm.dtype == torch.float32
    assert parse_args(["cnn", "--data", "x", "--out", "y", "--no-amp"]).precision == "fp32"
    assert parse_args(["cnn", "--data", "x", "--out", "y", "--precision", "bf16"]).precision == "bf16"
    assert parse_args(["cnn", "--data", "x", "--out", "y"]).precision == "auto"


# ---------------------------------------------------------------------------------------------------------
# The training plan and the model cards

def test_plan_stages_are_runnable_train_commands():
    from train import plan
    assert set(plan.PLAN) == set(colorizers.NETWORK_NAMES)
    for network, stages in plan.PLAN.items():
        for stage in stages:
            command = plan.stage_command(network, stage, "runs")
            config = parse_args(command[3:])  # python -m train NETWORK ...
            assert config.network == network and config.minutes == stage.minutes and config.out.startswith("runs/")
            assert "{root}" not in " ".join(command)
            exact = parse_args(plan.stage_command(network, stage, "runs", steps=1234)[3:])
            assert exact.steps == 1234 and exact.minutes is None
        # every stage after the first continues an earlier one: --init of a finished run or --resume of its own
        for stage in stages[1:]:
            config = parse_args(plan.stage_command(network, stage, "R")[3:])
            assert config.resume or (config.init and config.init.startswith("R/"))


def test_ship_copies_the_final_weights_and_writes_a_model_card(mini_set, tmp_path, monkeypatch):
    from train import plan
    stages = (plan.Stage("train 32", "cnn", ("--size", "32", "--steps", "100000"), 1.0),
              plan.Stage("train 64", "cnn", ("--size", "64", "--steps", "100000", "--resume"), 1.0))
    monkeypatch.setattr(plan, "PLAN", {"cnn": stages})
    root, data = tmp_path / "runs", [str(mini_set / "folder")]
    train(small_run("cnn", data, root / "cnn", steps=3, image_size=32))
    train(small_run("cnn", data, root / "cnn", steps=5, image_size=64, resume=True))
    dest = tmp_path / "weights"
    plan.ship(root, None, dest, ["cnn"])
    assert colorizers.load_network("cnn", dest) is not None
    card = (dest / "cnn" / "README.md").read_text()
    assert "| train 32 | CPU | train | 32 | 0→3 | 12 |" in card and "| train 64 | CPU | train | 64 | 3→5 | 8 |" in card
    assert "--size 32 --steps 3 --out runs/cnn" in card and "--size 64 --steps 5 --resume --out runs/cnn" in card
    table = plan.summary(root, ["cnn"])  # the spend table (docs/training.md), from the same history
    assert "| `cnn` | train 32: 3 · train 64: 2 | 20 |" in table and "CPU-hours" in table.splitlines()[-1]


def test_a_gpu_stage_runs_with_the_gpu_settings_and_counts_gpu_minutes(mini_set, tmp_path, monkeypatch):
    from train import plan
    gpu = plan.Stage("train 64 on the GPU", "cnn_gpu", ("--init", "{root}/cnn", "--size", "64", "--steps", "100000"),
                     1.0, device="cuda")
    command = plan.stage_command("cnn", gpu, "runs", steps=7)
    config = parse_args(command[3:])
    assert config.device == "cuda" and config.batch_size == 32 and config.steps == 7 and config.init == "runs/cnn"
    stages = (plan.Stage("train 32", "cnn", ("--size", "32", "--steps", "100000"), 1.0), gpu)
    monkeypatch.setattr(plan, "PLAN", {"cnn": stages})
    root, data = tmp_path / "runs", [str(mini_set / "folder")]
    train(small_run("cnn", data, root / "cnn", steps=3, image_size=32))
    train(small_run("cnn", data, root / "cnn_gpu", steps=2, image_size=64, init=str(root / "cnn"),
                    model_config={}))  # (here on the CPU)
    history = root / "cnn_gpu" / "cnn" / "history.jsonl"  # as a GPU run records it: wall minutes, little CPU time
    line = json.loads(history.read_text())
    history.write_text(json.dumps({**line, "minutes": 6.0, "cpu_minutes": 1.5}) + "\n")
    plan.ship(root, None, tmp_path / "weights", ["cnn"])
    card = (tmp_path / "weights" / "cnn" / "README.md").read_text()
    assert "| train 64 on the GPU | GPU | train | 64 | 0→2 | 8 | 6.0 |" in card and "NVIDIA H200" in card
    assert "--device cuda" in card and "--init runs/cnn" in card
    table = plan.summary(root, ["cnn"])
    assert "| `cnn` | train 32: 3 · train 64 on the GPU: 2 | 20 |" in table
    cpu_total = plan.stage_cpu_minutes(json.loads((root / "cnn" / "cnn" / "history.jsonl").read_text()))
    assert table.splitlines()[-1].endswith("| 6.0 |") and f"| {cpu_total:.0f} (" in table.splitlines()[-1]
