"""python -m train.evaluate end to end on a tiny generated image folder, with random-initialised weights.

The weights are random (plumbing only): these tests check the files, rows and bookkeeping, never the numbers'
quality."""
from __future__ import annotations

import csv
import io
import math
import tarfile

import numpy as np
import pytest
from PIL import Image
from skimage import data

import colorizers
from colorizers.color import gray_to_rgb_from_l, rgb_to_l
from tests.helpers import random_image, write_random_weights
from train import evaluate, metrics
from train.data import read_images

SIZE = 48


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    Image.fromarray(data.astronaut()[::4, ::4]).save(folder / "astronaut.png")
    random_image(60, 50, seed=3).save(folder / "random.png")
    return folder


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    """A colorize256-style manifest: three training and two validation photos in one tar shard."""
    root = tmp_path_factory.mktemp("manifest")
    rows = [("train/0.png", "train", "object"), ("train/1.png", "train", "scene"), ("train/2.png", "train", "mixed"),
            ("val/0.png", "val", "object"), ("val/1.png", "val", "scene")]
    with tarfile.open(root / "shard-00.tar", "w") as tar:
        for i, (file, _, _) in enumerate(rows):
            buf = io.BytesIO()
            random_image(SIZE, SIZE, seed=10 + i).save(buf, "PNG")
            info = tarfile.TarInfo(file)
            info.size = buf.tell()
            tar.addfile(info, io.BytesIO(buf.getvalue()))
    with open(root / "manifest.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "split", "shard", "source", "label", "kind"])
        writer.writerows([file, split, "shard-00.tar", "test", "", kind] for file, split, kind in rows)
    return root / "manifest.csv"


def test_a_manifest_is_scored_on_its_val_split_unless_asked_otherwise(manifest, tmp_path):
    weights = write_random_weights(tmp_path / "weights", networks=("cnn",))

    def run(*extra):
        out = tmp_path / f"eval{len(list(tmp_path.iterdir()))}"
        evaluate.main(["--data", str(manifest), "--weights", weights, "--out", str(out), "--size", str(SIZE),
                       "--models", "cnn", "--examples", "0", *extra])
        return _read_csv(out / "metrics.csv")["cnn"]["images"], (out / "metrics.md").read_text()

    images, table = run()  # never the training images by default
    assert images == "2" and "manifest split val" in table
    images, table = run("--kind", "scene")
    assert images == "1" and "manifest split val, kinds scene" in table
    assert run("--split", "train", "--kind", "object,mixed")[0] == "2"
    assert run("--split", "all")[0] == "5"


def test_folders_have_no_split_and_bad_filters_are_usage_errors(image_folder, manifest, tmp_path, capsys):
    weights = write_random_weights(tmp_path / "weights", networks=("cnn",))
    out = tmp_path / "eval"
    evaluate.main(["--data", str(image_folder), "--weights", weights, "--out", str(out), "--size", str(SIZE),
                   "--models", "cnn", "--examples", "0"])
    assert _read_csv(out / "metrics.csv")["cnn"]["images"] == "2"  # the whole folder
    assert "split" not in (out / "metrics.md").read_text().split("Data:")[1].split("\n")[0]
    with pytest.raises(SystemExit):
        evaluate.main(["--data", str(manifest), "--weights", weights, "--out", str(out), "--kind", "people"])
    assert "unknown kind" in capsys.readouterr().err


def _read_csv(path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as f:
        return {row["method"]: row for row in csv.DictReader(f)}


def test_evaluate_writes_a_row_per_model_the_floor_and_the_reference(image_folder, random_weights_root, tmp_path):
    out = tmp_path / "eval"
    assert evaluate.main(["--data", str(image_folder), "--weights", random_weights_root, "--out", str(out),
                          "--size", str(SIZE), "--batch-size", "1", "--examples", "2"]) == 0

    rows = _read_csv(out / "metrics.csv")
    assert list(rows) == [evaluate.GRAYSCALE, *colorizers.MODEL_NAMES, evaluate.GROUND_TRUTH]
    # LPIPS needs the AlexNet backbone from ../shared (there in CI); without it the column must say n/a
    has_backbone = metrics.DEFAULT_LPIPS_BACKBONE.is_file()
    fields = [field for field, _, _ in evaluate.COLUMNS if has_backbone or field != "lpips"]
    for name in [evaluate.GRAYSCALE, *colorizers.MODEL_NAMES]:
        assert rows[name]["images"] == "2"
        values = {field: float(rows[name][field]) for field in fields}
        assert all(math.isfinite(v) for v in values.values()), (name, values)
        assert 0 < values["ssim"] <= 1 and values["fid"] > 0
        assert values["lpips"] >= 0 if has_backbone else rows[name]["lpips"] == evaluate.NOT_AVAILABLE
    truth = rows[evaluate.GROUND_TRUTH]
    assert {truth[f] for f in fields if f != "colourfulness"} == {evaluate.NOT_AVAILABLE}

    # the floor row is the grey image with the ground truth's L, scored in batches of 1 and averaged over images
    images = read_images([str(image_folder)], size=SIZE).images.float() / 255.0
    grey = gray_to_rgb_from_l(rgb_to_l(images))
    floor = rows[evaluate.GRAYSCALE]
    assert float(floor["psnr"]) == pytest.approx(metrics.psnr(grey, images).mean().item(), abs=1e-4)
    assert float(floor["ssim"]) == pytest.approx(metrics.ssim(grey, images).mean().item(), abs=1e-5)
    assert float(floor["colourfulness"]) < 0.5
    truth_colour = metrics.colourfulness(images).mean().item()
    assert float(truth["colourfulness"]) == pytest.approx(truth_colour, abs=1e-4)
    assert float(floor["delta_colourfulness"]) == pytest.approx(truth_colour - float(floor["colourfulness"]), abs=1e-3)

    table = (out / "metrics.md").read_text()
    for name in rows:
        assert f"| {evaluate.ROW_TITLES[name]} |" in table
    assert "2 images" in table and str(image_folder) in table and "Unavailable" not in table
    assert "Δ Colourful = |mean colourfulness of the outputs - mean colourfulness of the ground truth|" in table

    with Image.open(out / "examples.png") as grid:
        assert grid.width > grid.height  # 8 columns (grey, six models, truth) by 2 rows


def test_missing_weights_backbone_and_too_few_images_give_notes_not_crashes(image_folder, tmp_path, monkeypatch):
    weights = write_random_weights(tmp_path / "weights", networks=("cnn",))
    monkeypatch.setattr(metrics, "DEFAULT_LPIPS_BACKBONE", tmp_path / "absent.pth")
    out = tmp_path / "eval"
    evaluate.main(["--data", str(image_folder), "--weights", weights, "--out", str(out), "--size", str(SIZE),
                   "--models", "cnn", "attention_ugan", "paracolorizer", "--max-images", "1", "--examples", "1"])

    rows = _read_csv(out / "metrics.csv")
    assert list(rows) == [evaluate.GRAYSCALE, "cnn", evaluate.GROUND_TRUTH]
    assert {row["lpips"] for row in rows.values()} == {evaluate.NOT_AVAILABLE}
    assert {row["fid"] for row in rows.values()} == {evaluate.NOT_AVAILABLE}  # FID needs 2 images
    assert np.isfinite(float(rows["cnn"]["psnr"])) and rows["cnn"]["images"] == "1"
    table = (out / "metrics.md").read_text()
    assert "Unavailable: attention_ugan (" in table and "Unavailable: paracolorizer (" in table
    assert "LPIPS: skipped (n/a)" in table and "FID needs at least 2 images" in table
    assert (out / "examples.png").is_file()


def test_no_model_with_weights_is_an_error(image_folder, tmp_path, capsys):
    with pytest.raises(SystemExit):
        evaluate.main(["--data", str(image_folder), "--weights", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])
    assert "has weights" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_missing_lpips_backbone_that_was_asked_for_is_an_error(image_folder, random_weights_root, tmp_path, capsys):
    with pytest.raises(SystemExit):
        evaluate.main(["--data", str(image_folder), "--weights", random_weights_root, "--out", str(tmp_path / "o"),
                       "--lpips-backbone", str(tmp_path / "absent.pth")])
    assert "--lpips-backbone" in capsys.readouterr().err


def test_overlay_rows_are_table_v_baseline_at_the_given_weights(image_folder, random_weights_root, tmp_path):
    out = tmp_path / "eval"
    assert evaluate.main(["--data", str(image_folder), "--weights", random_weights_root, "--out", str(out),
                          "--size", str(SIZE), "--models", "paracolorizer_fg", "paracolorizer_bg", "paracolorizer",
                          "--overlay", "1", "--overlay", "0", "--overlay", "0.5", "--examples", "1"]) == 0

    rows = _read_csv(out / "metrics.csv")
    overlays = [evaluate.overlay_name(alpha) for alpha in (1, 0, 0.5)]
    assert list(rows) == [evaluate.GRAYSCALE, "paracolorizer_fg", "paracolorizer_bg", "paracolorizer", *overlays,
                          evaluate.GROUND_TRUTH]
    # alpha 1 is the foreground generator's colouring alone, 0 the background's (after an RGB round trip)
    for overlay, part in zip(overlays, ("paracolorizer_fg", "paracolorizer_bg")):
        for field in ("psnr", "ssim", "colourfulness"):
            assert float(rows[overlay][field]) == pytest.approx(float(rows[part][field]), rel=0.01), (overlay, field)
    half = {field: float(rows[overlays[2]][field]) for field in ("psnr", "colourfulness")}
    assert all(math.isfinite(v) for v in half.values())
    assert "| ParaColorizer, weighted overlay α = 0.5 (Table V) |" in (out / "metrics.md").read_text()
    with Image.open(out / "examples.png") as grid:  # grey, the three models, truth: the overlays are rows only
        assert grid.width == pytest.approx(1.9 * 5 * 110, abs=3)


@pytest.mark.parametrize("args, message", [
    (["--overlay", "1.5"], "between 0 and 1"),
    (["--models", "cnn", "--overlay", "0.5"], "include paracolorizer"),
])
def test_bad_overlay_requests_are_usage_errors(image_folder, random_weights_root, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit):
        evaluate.main(["--data", str(image_folder), "--weights", random_weights_root, "--out", str(tmp_path / "o"),
                       *args])
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
