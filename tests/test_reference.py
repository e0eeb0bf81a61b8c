"""Reference mode: a colour upload is scored against its own colours with train.metrics' functions, a grey one is
not, and the batch tool writes the same numbers to a CSV. Random-initialised weights: the numbers test plumbing
(the right pairs, at full resolution, through the one implementation of each metric), not the models."""
from __future__ import annotations

import csv
import inspect
import io
import math
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

import colorizers
from colorizers import metrics as app_metrics
from colorizers import reference
from colorizers.__main__ import main as cli_main
from colorizers.color import rgb_to_lab
from colorizers.pipeline import image_to_tensor
from train import metrics

import app

MODELS = ["cnn", "paracolorizer", "attention_ugan"]


@pytest.fixture(scope="module")
def models(random_weights_root):
    available, unavailable = colorizers.load_colorizers(MODELS, source=random_weights_root)
    assert not unavailable
    return available


def tensor(path) -> torch.Tensor:
    return image_to_tensor(Image.open(path))


def expected_scores(result_path, original_path) -> dict[str, float]:
    """What train.metrics says of one result file against the original file."""
    result, original = tensor(result_path), tensor(original_path)
    colour, original_colour = metrics.colourfulness(result).item(), metrics.colourfulness(original).item()
    return {
        "psnr": metrics.psnr(result, original).item(),
        "ssim": metrics.ssim(result, original).item(),
        "colourfulness": colour,
        "original_colourfulness": original_colour,
        "delta_colourfulness": colour - original_colour,
        "chroma_ratio": app_metrics.mean_chroma(result).item() / app_metrics.mean_chroma(original).item(),
    }


def grey_scan(photo: Image.Image, seed: int = 0) -> Image.Image:
    """A black-and-white photo scanned with a faint warm cast, scanner noise and JPEG compression."""
    grey = np.asarray(photo.convert("L"), dtype=np.float32)
    warm = np.stack([grey * 1.04, grey, grey * 0.92], axis=-1)
    noisy = warm + np.random.default_rng(seed).normal(0.0, 3.0, warm.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=85)
    return Image.open(io.BytesIO(buffer.getvalue()))


# ------------------------------------------------------------------------------------------------ metrics

def test_train_metrics_and_the_app_share_one_implementation():
    assert metrics.psnr is app_metrics.psnr
    assert metrics.ssim is app_metrics.ssim
    assert metrics.colourfulness is app_metrics.colourfulness


@pytest.mark.parametrize("height, width", [(37, 53), (64, 11), (11, 90)])
def test_metrics_in_bands_of_rows_equal_the_whole_image(height, width):
    gen = torch.Generator().manual_seed(height)
    a, b = torch.rand(2, 3, height, width, generator=gen), torch.rand(2, 3, height, width, generator=gen)
    for band_pixels in (1, width * 3, width * 7 + 5):  # one row, three rows, uneven bands
        assert torch.allclose(app_metrics.psnr(a, b, band_pixels=band_pixels), app_metrics.psnr(a, b), atol=1e-5)
        assert torch.allclose(app_metrics.ssim(a, b, band_pixels=band_pixels), app_metrics.ssim(a, b), atol=1e-6)
        assert torch.allclose(app_metrics.colourfulness(a, band_pixels=band_pixels), app_metrics.colourfulness(a),
                              atol=1e-4)
        assert torch.allclose(app_metrics.mean_chroma(a, band_pixels=band_pixels), app_metrics.mean_chroma(a),
                              atol=1e-4)


def test_ssim_on_a_very_wide_image_reads_each_pixel_about_once(monkeypatch):
    """On a 65,535 x 244-like shape a band of a quarter megapixel is 4 rows, and each band read the window's 10
    rows of margin too: 3.5 times the work. Tiles read a few per cent more than the image, with the same value."""
    gen = torch.Generator().manual_seed(5)
    a, b = torch.rand(2, 1, 3, 60, 4000, generator=gen)
    whole = app_metrics.ssim(a, b, band_pixels=10 ** 9)
    read = []
    blur = app_metrics._blur_valid

    def counting(x, window):
        read.append(x.shape[-2] * x.shape[-1])
        return blur(x, window)

    monkeypatch.setattr(app_metrics, "_blur_valid", counting)
    banded = app_metrics.ssim(a, b, band_pixels=4000 * 4)  # whole-width bands would be 4 rows
    assert torch.allclose(banded, whole, atol=1e-6)
    assert sum(read) <= 1.2 * 60 * 4000, sum(read) / (60 * 4000)


def test_uint8_images_are_read_as_8bit_srgb():
    """The app scores the 8-bit images themselves (no full-size float copy): same numbers as their float version."""
    gen = torch.Generator().manual_seed(2)
    a8, b8 = (torch.randint(0, 256, (1, 3, 40, 50), generator=gen, dtype=torch.uint8) for _ in range(2))
    a, b = a8.float() / 255.0, b8.float() / 255.0
    assert torch.equal(app_metrics.psnr(a8, b8, band_pixels=500), app_metrics.psnr(a, b, band_pixels=500))
    assert torch.equal(app_metrics.ssim(a8, b8), app_metrics.ssim(a, b))
    assert torch.equal(app_metrics.colourfulness(a8), app_metrics.colourfulness(a))
    assert torch.equal(app_metrics.mean_chroma(a8), app_metrics.mean_chroma(a))
    assert app_metrics.ssim(a8, b8).dtype == torch.float32


def test_chroma_is_lab_chroma():
    images = torch.rand(2, 3, 20, 30, generator=torch.Generator().manual_seed(1))
    lab = rgb_to_lab(images.double())
    chroma = torch.sqrt(lab[:, 1] ** 2 + lab[:, 2] ** 2).flatten(1)
    assert torch.allclose(app_metrics.mean_chroma(images).double(), chroma.mean(dim=1), atol=1e-4)
    assert torch.allclose(app_metrics.chroma_share(images, 30.0), (chroma >= 30.0).double().mean(dim=1))
    assert app_metrics.mean_chroma(images[:, :1].expand(-1, 3, -1, -1)).abs().max() < 0.01  # grey: no chroma


# ------------------------------------------------------------------------------------------ colour or grey

def test_a_colour_photo_counts_as_colour_and_a_grey_one_does_not(photo):
    assert reference.colour_original(photo) is not None
    assert reference.colour_original(photo.convert("L")) is None
    assert reference.colour_original(photo.convert("L").convert("RGB")) is None


def test_a_faintly_tinted_scan_counts_as_grey(photo):
    scan = grey_scan(photo)
    chroma = app_metrics.mean_chroma(image_to_tensor(scan)).item()
    assert 3.0 < chroma < 10.0  # the tint is really there, and faint
    assert reference.colour_original(scan) is None


@pytest.mark.parametrize("share, is_colour", [(0.005, False), (0.02, True)])
def test_the_threshold_is_one_percent_of_pixels_at_chroma_15(share, is_colour):
    """A grey picture with a red patch (chroma about 40) covering ``share`` of it."""
    pixels = np.full((100, 100, 3), 128, np.uint8)
    pixels.reshape(-1, 3)[:int(share * 10_000)] = (190, 110, 110)
    assert (reference.colour_original(Image.fromarray(pixels)) is not None) == is_colour


# ------------------------------------------------------------------------------------------------ the app

@pytest.fixture
def colour_file(photo, tmp_path):
    path = tmp_path / "astronaut.png"
    photo.crop((0, 0, 240, 180)).save(path)
    return path


@pytest.fixture
def grey_file(photo, tmp_path):
    path = tmp_path / "scan.jpg"
    grey_scan(photo.crop((0, 0, 240, 180))).save(path, quality=95)
    return path


def test_a_colour_photos_table_equals_train_metrics_on_the_same_pairs(models, colour_file, tmp_path):
    comparison, files = app.run_comparison(str(colour_file), MODELS, models, app.Settings(), str(tmp_path))
    assert set(files.scores) == set(MODELS)
    assert np.array_equal(np.asarray(Image.open(files.original)), np.asarray(Image.open(colour_file)))
    with zipfile.ZipFile(files.zip) as zf:
        rows = list(csv.DictReader(io.StringIO(zf.read("metrics.csv").decode())))
    assert [row["model"] for row in rows] == MODELS and {row["photo"] for row in rows} == {"astronaut"}
    for row in rows:
        name = row["model"]
        want = expected_scores(files.results[name], colour_file)  # the downloadable PNG against the upload
        for metric, value in want.items():
            assert getattr(files.scores[name], metric) == pytest.approx(value, rel=1e-6, abs=1e-9), (name, metric)
            assert float(row[metric]) == pytest.approx(value, abs=1e-6), (name, metric)
    # not trivial: random networks are far from the original, and differ from one another
    assert all(s.psnr < 40 and s.ssim < 0.999 for s in files.scores.values())
    assert len({round(s.psnr, 4) for s in files.scores.values()}) == len(MODELS)
    assert "This is a colour photo" in app._summary(comparison, scored=True)


def test_the_original_is_read_with_its_exif_orientation_like_the_models_input(models, photo, tmp_path):
    path = tmp_path / "turned.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees to display
    photo.crop((0, 0, 240, 180)).save(path, quality=95, exif=exif)
    _, files = app.run_comparison(str(path), ["cnn"], models, app.Settings(), str(tmp_path))
    upright = ImageOps.exif_transpose(Image.open(path))
    assert upright.size == (180, 240) == Image.open(files.results["cnn"]).size
    assert np.array_equal(np.asarray(Image.open(files.original)), np.asarray(upright.convert("RGB")))
    assert files.scores["cnn"].psnr == pytest.approx(metrics.psnr(tensor(files.results["cnn"]),
                                                                  image_to_tensor(upright)).item(), rel=1e-6)


def test_a_grey_photo_is_not_scored_and_its_zip_has_no_metrics(models, grey_file, tmp_path):
    _, files = app.run_comparison(str(grey_file), MODELS, models, app.Settings(), str(tmp_path))
    assert files.scores is None and files.original is None
    with zipfile.ZipFile(files.zip) as zf:
        assert "metrics.csv" not in zf.namelist()


def test_the_table_sorts_by_the_chosen_metric_and_stars_the_best(models, colour_file, tmp_path):
    _, files = app.run_comparison(str(colour_file), MODELS, models, app.Settings(), str(tmp_path))
    titles = colorizers.MODEL_TITLES
    for metric, _, goal, _ in reference.METRICS:
        lines = reference.table_markdown(files.scores, titles, metric).splitlines()[2:]
        order = [next(name for name in MODELS if line.startswith(f"| {titles[name]} |")) for line in lines]
        values = [getattr(files.scores[name], metric) for name in order]
        distance = {"high": lambda v: -v, "zero": abs, "one": lambda v: abs(math.log(v))}[goal]
        assert [distance(v) for v in values] == sorted(distance(v) for v in values), metric
        column = 1 + reference.METRIC_NAMES.index(metric)
        cells = [[cell.strip() for cell in line.strip("|").split("|")][column] for line in lines]
        starred = [cell for cell in cells if reference.BEST_MARK in cell]
        assert starred == [f"**{reference.format_value(metric, values[0])}** {reference.BEST_MARK}"], metric


def _compare_event(demo):
    """The Compare button's handler, called as Gradio calls it (with a request last, if it asks for one)."""
    handler = next(fn.fn for fn in demo.fns.values() if getattr(fn.fn, "__name__", "") == "compare")
    wants_request = "request" in inspect.signature(handler).parameters
    return lambda *inputs: handler(*inputs, *([None] if wants_request else []))


@pytest.mark.parametrize("which, scored", [("colour", True), ("grey", False)])
def test_the_compare_tab_shows_the_table_and_original_only_for_a_colour_photo(app_env, models, random_weights_root,
                                                                              colour_file, grey_file, which, scored):
    demo = app.build_demo(models, {}, app.Settings(weights=random_weights_root))
    upload = colour_file if which == "colour" else grey_file
    outputs = _compare_event(demo)({"path": str(upload)}, MODELS, "cnn", "ssim")
    slider_choice, slider, summary = outputs[len(MODELS)], outputs[len(MODELS) + 1], outputs[len(MODELS) + 2]
    original, box, table = outputs[-3:]
    assert box.visible is scored and original.visible is scored
    choices = [value for _, value in slider_choice.choices]
    assert (app.ORIGINAL in choices) is scored
    assert ("| Model |" in table) is scored and ("This is a colour photo" in summary) is scored
    if scored:  # sorted by the metric the visitor had picked
        assert table.splitlines()[2].startswith(f"| {colorizers.MODEL_TITLES[reference.ranked(outputs[-4].scores, 'ssim')[0].model]} |")
    assert slider[1].endswith("-cnn.png")


# ------------------------------------------------------------------------------------------------ batch CLI

def test_cli_reference_writes_one_row_per_photo_and_model_plus_the_means(random_weights_root, photo, tmp_path,
                                                                         capsys):
    inputs = tmp_path / "in"
    (inputs / "sub").mkdir(parents=True)
    photo.crop((0, 0, 200, 150)).save(inputs / "astronaut.png")
    photo.crop((100, 200, 260, 320)).save(inputs / "sub" / "detail.png")
    grey_scan(photo.crop((0, 0, 120, 90))).save(inputs / "scan.jpg")
    out = tmp_path / "out"
    models = ["cnn", "paracolorizer"]

    status = cli_main([str(inputs), "--model", "cnn", "--model", "paracolorizer", "--out", str(out),
                       "--weights", random_weights_root, "--reference"])

    assert status == 0
    assert "scored 2 colour photo(s)" in capsys.readouterr().out
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    photos = ["astronaut.png", "sub/detail.png"]
    assert [(r["photo"], r["model"]) for r in rows] == [(p, m) for p in photos for m in models] + \
        [("mean", m) for m in models]
    for row in rows[:4]:
        result = out / row["model"] / row["photo"]
        for metric, value in expected_scores(result, inputs / row["photo"]).items():
            assert float(row[metric]) == pytest.approx(value, abs=1e-6), (row["photo"], row["model"], metric)
    for mean_row in rows[4:]:
        group = [r for r in rows[:4] if r["model"] == mean_row["model"]]
        for metric in ("psnr", "ssim", "delta_colourfulness", "chroma_ratio"):
            assert float(mean_row[metric]) == pytest.approx(np.mean([float(r[metric]) for r in group]), abs=2e-6)
    assert (out / "cnn" / "scan.png").is_file()  # the grey scan is colorized, just not scored
