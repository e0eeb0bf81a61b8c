"""The one orchestrator, ``colorizers.compare.colorize_models``: a photo is prepared once, each network runs once
and each model's result is finished once, whether it comes from the Compare tab, the batch tool or
``Colorizer.colorize`` (a comparison of one model); and a model gives the same pixels alone as in a comparison.
Random-initialised weights."""
from __future__ import annotations

import numpy as np
import pytest

import colorizers
from colorizers import compare
from colorizers.__main__ import main as cli_main


@pytest.fixture(scope="module")
def models(random_weights_root):
    return colorizers.load_colorizers(source=random_weights_root)[0]  # all six: every network is there


@pytest.fixture
def steps(monkeypatch):
    """How often the orchestrator calls each step: prepare (the photo's L), a network, finish (a result)."""
    calls = dict.fromkeys(("prepare", "network", "finish"), 0)

    def counted(step, function):
        def count(*args, **kwargs):
            calls[step] += 1
            return function(*args, **kwargs)
        return count

    for step, name in (("prepare", "image_to_l"), ("network", "predict_native_ab"), ("finish", "finish_image")):
        monkeypatch.setattr(compare, name, counted(step, getattr(compare, name)))
    return calls


@pytest.fixture
def forward_calls(models):
    """Each network's forward passes: the five networks the models run (ParaColorizer's generators are the
    foreground/background models' own)."""
    networks = {name: c.model for name, c in models.items() if name != "paracolorizer"}
    assert models["paracolorizer"].model.foreground is networks["paracolorizer_fg"]
    calls = dict.fromkeys(networks, 0)
    hooks = [net.register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
             for name, net in networks.items()]
    yield calls
    for hook in hooks:
        hook.remove()


def test_the_compare_tab_prepares_the_photo_once_and_finishes_each_result_once(models, steps, forward_calls,
                                                                                photo, tmp_path):
    import app  # the Compare button's own work, ``run_comparison``

    path = tmp_path / "photo.png"
    photo.crop((0, 0, 512, 384)).save(path)
    comparison, _ = app.run_comparison(str(path), list(colorizers.MODEL_NAMES), models, app.Settings(),
                                       str(tmp_path))
    assert list(comparison.results) == list(colorizers.MODEL_NAMES)
    # three single models and one ParaColorizer pass that serves the foreground and background models too
    assert steps == {"prepare": 1, "network": 4, "finish": 6}
    assert set(forward_calls.values()) == {1}, forward_calls


def test_the_batch_tool_prepares_each_photo_once(models, steps, random_weights_root, photo, tmp_path):
    for i in range(2):
        photo.resize((64 + i, 48)).save(tmp_path / f"photo{i}.png")
    out = tmp_path / "out"
    assert cli_main([str(tmp_path / "photo0.png"), str(tmp_path / "photo1.png"), "--model", "all",
                     "--weights", random_weights_root, "--out", str(out)]) == 0
    assert steps == {"prepare": 2, "network": 8, "finish": 12}


@pytest.mark.parametrize("name", colorizers.MODEL_NAMES)
def test_a_single_model_is_a_comparison_of_one(models, steps, forward_calls, name, photo):
    image = models[name].colorize(photo)
    assert image.size == photo.size
    assert steps == {"prepare": 1, "network": 1, "finish": 1}
    ran = {"paracolorizer_fg", "paracolorizer_bg"} if name == "paracolorizer" else {name}
    assert forward_calls == {net: int(net in ran) for net in forward_calls}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_each_model_gives_the_same_pixels_alone_as_in_the_compare_path(random_weights_root, photo, precision):
    models, _ = colorizers.load_colorizers(source=random_weights_root, precision=precision)
    odd = photo.crop((3, 5, 380, 258))  # not square, odd sides: the up-sampling's bands do not divide evenly
    comparison = compare.colorize_models(odd, models)
    assert comparison.shares_paracolorizer_pass
    for name, colorizer in models.items():
        alone = colorizer.colorize(odd)
        assert np.array_equal(np.asarray(alone), np.asarray(comparison.results[name].image)), name
    assert compare.colorize_models(odd, models, grey=False).grey is None
