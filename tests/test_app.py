"""The app's Compare tab and ``/colorize`` API, served in-process and called through gradio_client, and the batch
CLI. Random-initialised weights: these test plumbing (sizes, lightness kept, files, errors), not colours."""
from __future__ import annotations

import io
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

import colorizers
from colorizers import compare
from colorizers.__main__ import main as cli_main
from colorizers.color import rgb_to_l
from tests.helpers import free_port, write_random_weights

import app

MAX_PIXELS = 1_000_000
#: The module's server lacks paracolorizer_bg's weights, so that model and the fused ParaColorizer are unavailable.
MISSING = {"paracolorizer_bg", "paracolorizer"}


def lightness(image: Image.Image) -> np.ndarray:
    return rgb_to_l(colorizers.image_to_tensor(image))[0, 0].numpy()


@pytest.fixture(scope="module")
def partial_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("partial-weights")
    write_random_weights(root, [n for n in colorizers.NETWORK_NAMES if n != "paracolorizer_bg"])
    return str(root), *colorizers.load_colorizers(source=str(root))


@pytest.fixture(scope="module")
def server(app_env, partial_models):
    root, available, unavailable = partial_models
    demo = app.build_demo(available, unavailable, app.Settings(max_pixels=MAX_PIXELS, weights=root))
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(), quiet=True)
    try:
        yield demo, Client(url, verbose=False)
    finally:
        demo.close()


@pytest.fixture(scope="module")
def all_models(random_weights_root):
    available, unavailable = colorizers.load_colorizers(source=random_weights_root)
    assert not unavailable
    return available


@pytest.fixture
def photo_file(photo, tmp_path):
    """A real photo, not square (so width and height cannot be swapped unnoticed), saved losslessly."""
    path = tmp_path / "astronaut.png"
    photo.crop((0, 0, 512, 384)).save(path)
    return path


def write_bytes(path, data: bytes):
    path.write_bytes(data)
    return path


def save_image(image: Image.Image, path):
    image.save(path)
    return path


def jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def png_claiming_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels: a decompression bomb as PIL sees it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


# ------------------------------------------------------------------------------------------------ the API

@pytest.mark.parametrize("model", ["cnn_classifier", "paracolorizer_fg"])
def test_colorize_endpoint_returns_the_photo_size_with_its_lightness(server, photo_file, model):
    _, client = server
    result = Image.open(client.predict(handle_file(str(photo_file)), model, api_name="/colorize"))
    source = Image.open(photo_file)
    assert result.size == source.size
    assert result.mode == "RGB"
    assert np.abs(lightness(result) - lightness(source)).mean() < 1.0
    chroma = np.asarray(result.convert("RGB"), dtype=float)
    assert chroma.std(axis=2).mean() > 1.0  # colour was added (random weights still predict some a,b)


def test_missing_weights_are_listed_with_the_reason_and_the_others_still_work(server, partial_models, photo_file):
    demo, client = server
    status = next(c["props"]["value"] for c in demo.config["components"]
                  if c["props"].get("elem_id") == "model-status")
    root = partial_models[0]
    assert f"(weights: `{Path(root).name}`)" in status and root not in status  # no server path for visitors
    for name in colorizers.MODEL_NAMES:
        line = next(line for line in status.splitlines() if colorizers.MODEL_TITLES[name] in line)
        if name in MISSING:
            assert "unavailable" in line and "no weights for 'paracolorizer_bg'" in line
        else:
            assert "ready" in line
    with pytest.raises(AppError, match="unavailable: no weights for 'paracolorizer_bg'"):
        client.predict(handle_file(str(photo_file)), "paracolorizer", api_name="/colorize")
    assert Image.open(client.predict(handle_file(str(photo_file)), "cnn", api_name="/colorize")).size == (512, 384)


def test_only_colorize_is_public_api(server):
    _, client = server
    assert set(client.view_api(print_info=False, return_format="dict")["named_endpoints"]) == {"/colorize"}


@pytest.mark.parametrize("make_file, message", [
    (lambda d: write_bytes(d / "notes.jpg", b"these are not the pixels you are looking for"),
     "notes.jpg is not an image this app can read"),
    (lambda d: write_bytes(d / "cut.jpg", jpeg_bytes()[:2000]), "cut.jpg could not be decoded"),
    (lambda d: save_image(Image.new("L", (1200, 1000)), d / "big.png"),
     r"big.png is 1200×1000 = 1,200,000 pixels; the limit is 1,000,000 pixels \(1 megapixels\)"),
    (lambda d: write_bytes(d / "bomb.png", png_claiming_size(30_000, 30_000)), "bomb.png is far too large"),
])
def test_bad_uploads_are_refused_with_a_clear_message(server, tmp_path, make_file, message):
    _, client = server
    with pytest.raises(AppError, match=message):
        client.predict(handle_file(str(make_file(tmp_path))), "cnn", api_name="/colorize")


def test_no_upload_is_refused_with_a_clear_message(server):
    _, client = server
    with pytest.raises(AppError, match="No photo yet"):
        client.predict(None, "cnn", api_name="/colorize")


# ------------------------------------------------------------------------------------------------ Compare

def test_compare_gives_one_result_per_selected_model_and_a_zip_of_them(all_models, photo_file, tmp_path):
    names = ["attention_ugan", "paracolorizer", "paracolorizer_bg", "cnn"]
    comparison, files = app.run_comparison(str(photo_file), names, all_models, app.Settings(), str(tmp_path))
    assert list(comparison.results) == names == list(files.results)
    source = Image.open(photo_file)
    for name in names:
        saved = Image.open(files.results[name])
        assert saved.size == source.size
        assert np.array_equal(np.asarray(saved), np.asarray(comparison.results[name].image))
        assert comparison.results[name].seconds > 0
    assert np.abs(lightness(Image.open(files.grey)) - lightness(source)).mean() < 1.0
    with zipfile.ZipFile(files.zip) as zf:
        # the astronaut is a colour photo, so the zip also holds its reference metrics (tests/test_reference.py)
        assert sorted(zf.namelist()) == sorted([*(f"astronaut-{key}.png" for key in ["grey-input", *names]),
                                                "metrics.csv"])
        for name in names:
            assert zf.read(f"astronaut-{name}.png") == open(files.results[name], "rb").read()
    assert comparison.shares_paracolorizer_pass
    assert "foreground and background generators run once" in app._summary(comparison)


def test_shared_paracolorizer_pass_runs_each_generator_once_and_matches_each_model_alone(all_models, photo):
    """fg, bg and ParaColorizer come from one predict_all pass in a comparison; each must equal its own run."""
    family = {name: all_models[name] for name in compare.PARACOLORIZER_OUTPUTS}
    calls = []
    hooks = [all_models[name].model.register_forward_hook(lambda *_, name=name: calls.append(name))
             for name in compare.PARACOLORIZER_GENERATORS]
    try:
        comparison = compare.colorize_models(photo, family)
    finally:
        for hook in hooks:
            hook.remove()
    assert sorted(calls) == ["paracolorizer_bg", "paracolorizer_fg"]  # each generator ran once
    assert comparison.shares_paracolorizer_pass
    for name, colorizer in family.items():
        alone = np.asarray(colorizer.colorize(photo), dtype=int)
        assert np.abs(np.asarray(comparison.results[name].image, dtype=int) - alone).max() <= 1, name


def test_a_model_failing_mid_request_gives_a_message_not_a_traceback(all_models, photo_file, tmp_path):
    class OutOfMemory:
        native_size = 256

        def predict_ab(self, l):
            raise RuntimeError("CPU out of memory while allocating 9 GB")

    models = {**all_models, "cnn": colorizers.Colorizer("cnn", OutOfMemory())}
    with pytest.raises(app.gr.Error, match="could not be colorized .RuntimeError: CPU out of memory"):
        app.run_comparison(str(photo_file), ["cnn", "paracolorizer"], models, app.Settings(), str(tmp_path))


def test_separately_loaded_generators_run_alone_and_the_summary_says_nothing_of_sharing(all_models, photo,
                                                                                        random_weights_root):
    separate = colorizers.load_colorizer("paracolorizer_fg", source=random_weights_root)  # not ParaColorizer's own
    comparison = compare.colorize_models(photo, {"paracolorizer": all_models["paracolorizer"],
                                                 "paracolorizer_fg": separate})
    assert not comparison.shares_paracolorizer_pass
    assert "run once" not in app._summary(comparison)


def test_compare_refuses_an_empty_selection(all_models, photo_file, tmp_path):
    with pytest.raises(app.gr.Error, match="No model selected"):
        app.run_comparison(str(photo_file), [], all_models, app.Settings(), str(tmp_path))


def test_settings_from_env_rejects_nonsense():
    assert app.Settings.from_env({"COLORIZERS_MAX_PIXELS": "2000000"}).max_pixels == 2_000_000
    with pytest.raises(ValueError, match="COLORIZERS_CONCURRENCY must be a positive whole number"):
        app.Settings.from_env({"COLORIZERS_CONCURRENCY": "0"})


def test_app_starts_and_explains_when_no_weights_exist(app_env, tmp_path):
    available, unavailable = colorizers.load_colorizers(source=str(tmp_path))
    assert not available and set(unavailable) == set(colorizers.MODEL_NAMES)
    demo = app.build_demo(available, unavailable, app.Settings(weights=str(tmp_path)))
    status = next(c["props"]["value"] for c in demo.config["components"]
                  if c["props"].get("elem_id") == "model-status")
    assert "No model can run yet" in status and status.count("**unavailable**") == 6


# ------------------------------------------------------------------------------------------------ batch CLI

def test_cli_colorizes_a_folder_skips_a_broken_file_and_fails_at_the_end(random_weights_root, photo, tmp_path, capsys):
    inputs = tmp_path / "in"
    (inputs / "sub").mkdir(parents=True)
    photo.save(inputs / "astronaut.jpg")
    photo.crop((0, 0, 300, 200)).convert("L").save(inputs / "sub" / "grey.png")
    (inputs / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (inputs / "notes.txt").write_text("not an image extension: ignored")
    out = tmp_path / "out"

    status = cli_main([str(inputs), "--model", "cnn", "--model", "paracolorizer", "--out", str(out),
                       "--weights", random_weights_root])

    captured = capsys.readouterr()
    assert status == 1
    assert "broken.jpg" in captured.err and "cannot read it as an image" in captured.err
    assert "colorized 2 of 3 image(s) with 2 model(s)" in captured.out
    for model in ("cnn", "paracolorizer"):
        assert Image.open(out / model / "astronaut.png").size == (512, 512)
        assert Image.open(out / model / "sub" / "grey.png").size == (300, 200)
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == ["astronaut.png"] * 2 + ["grey.png"] * 2


def test_cli_stops_before_work_when_a_model_has_no_weights(photo, tmp_path, capsys):
    photo.save(tmp_path / "a.png")
    status = cli_main([str(tmp_path / "a.png"), "--model", "all", "--out", str(tmp_path / "out"),
                       "--weights", str(tmp_path / "empty")])
    assert status == 2
    assert "model cnn is unavailable: no weights for 'cnn'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_cached_result_is_written_once_and_appears_whole(tmp_path, monkeypatch):
    """Identical results (two visitors, the same photo and model) share one cache path: the second save must not
    replace or rewrite the file another download may be reading, and a new file appears only complete (written
    beside it, then renamed into place)."""
    import pathlib
    first = pathlib.Path(app.save_bytes_to_cache(b"\x89PNG result", "photo-cnn.png", str(tmp_path)))
    inode = first.stat().st_ino
    writes = []
    original_write = pathlib.Path.write_bytes
    monkeypatch.setattr(pathlib.Path, "write_bytes", lambda self, data: writes.append(self) or original_write(self, data))
    assert app.save_bytes_to_cache(b"\x89PNG result", "photo-cnn.png", str(tmp_path)) == str(first)
    assert first.stat().st_ino == inode and first.read_bytes() == b"\x89PNG result"  # the same file, untouched
    other = app.save_bytes_to_cache(b"\x89PNG other", "photo-cnn.png", str(tmp_path))
    assert other != str(first) and pathlib.Path(other).read_bytes() == b"\x89PNG other"
    assert writes and all(p.name.endswith(".part") and p.parent == tmp_path for p in writes)  # never in place
    assert not list(tmp_path.rglob("*.part"))
