"""Inference precision: ``auto`` picks bf16 only where the device does it natively, ``fp32``/``bf16`` force it, and
bf16 (autocast + channels-last) changes the colours only by rounding while the output keeps the input's L exactly.
Random-initialised weights (``save_pretrained``): these test plumbing and numerics, not colour quality."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.color import rgb2lab

import colorizers
from colorizers import precision as prec
from colorizers.__main__ import main as cli_main
from colorizers.__main__ import parse_args
from colorizers.color import rgb_to_l
from colorizers.pipeline import image_to_rgb_array

import app

#: Mean absolute RGB difference (in 8-bit levels) allowed between the bf16 and float32 results of one model.
#: Measured on this project's Zen 4 CPU (AVX512-BF16, torch 2.14) with the test widths and a 160x120 astronaut:
#: 0.006-0.07 per model, no pixel more than 1 level apart; the default widths on a 451x300 ``chelsea`` gave up to 0.16.
#: The bound leaves room for other CPUs' and PyTorch versions' bf16 kernels.
MAX_MEAN_RGB_DIFFERENCE = 1.0


@pytest.fixture
def fresh_probe():
    """``cpu_has_native_bf16`` caches its answer; tests that fake the CPU start and end with an empty cache."""
    prec.cpu_has_native_bf16.cache_clear()
    yield
    prec.cpu_has_native_bf16.cache_clear()


@pytest.fixture(scope="module")
def both(random_weights_root):
    """The six models from the same weights, once per precision."""
    loaded = {}
    for precision in ("fp32", "bf16"):
        available, unavailable = colorizers.load_colorizers(source=random_weights_root, precision=precision)
        assert not unavailable
        loaded[precision] = available
    return loaded


@pytest.fixture
def small_photo(photo):
    return photo.resize((160, 120))  # not square, so width and height cannot be swapped unnoticed


def lightness(image) -> np.ndarray:
    return rgb2lab(image_to_rgb_array(image))[..., 0]


# ------------------------------------------------------------------------------------------------ the setting

@pytest.mark.parametrize("native", [True, False])
def test_auto_is_bf16_exactly_when_the_cpu_does_bf16_natively(monkeypatch, native):
    monkeypatch.setattr(prec, "cpu_has_native_bf16", lambda: native)
    assert prec.resolve_precision("auto", "cpu") == ("bf16" if native else "fp32")
    assert prec.resolve_precision("fp32", "cpu") == "fp32"  # forced, even on a bf16 CPU
    assert prec.resolve_precision("bf16", "cpu") == "bf16"  # forced, even where it is emulated


@pytest.mark.parametrize("flags, native", [({"fpu", "avx512f", "avx512_bf16"}, True), ({"fpu", "amx_bf16"}, True),
                                           ({"fpu", "avx2", "avx512f"}, False), (set(), False)])
def test_without_torchs_probe_the_cpuinfo_flags_decide(monkeypatch, fresh_probe, flags, native):
    monkeypatch.setattr(torch._C, "_cpu", None, raising=False)  # no PyTorch CPU probe: /proc/cpuinfo's flags
    monkeypatch.setattr(prec, "_cpuinfo_flags", lambda: flags)
    assert prec.cpu_has_native_bf16() is native
    assert prec.resolve_precision("auto", "cpu") == ("bf16" if native else "fp32")


def test_a_bad_precision_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"precision must be one of auto, bf16, fp32, got 'fp16'"):
        prec.resolve_precision("fp16", "cpu")


def test_the_environment_variable_is_the_default(monkeypatch, random_weights_root):
    monkeypatch.setattr(prec, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setenv(prec.PRECISION_ENV, " FP32 ")
    assert prec.resolve_precision(None, "cpu") == "fp32"
    assert colorizers.load_colorizer("cnn", source=random_weights_root).precision == "fp32"
    assert prec.resolve_precision("bf16", "cpu") == "bf16"  # an explicit argument wins over the variable
    monkeypatch.delenv(prec.PRECISION_ENV)
    assert prec.resolve_precision(None, "cpu") == "bf16"  # unset: auto
    monkeypatch.setenv(prec.PRECISION_ENV, "half")
    with pytest.raises(ValueError, match="got 'half'"):
        colorizers.load_colorizers(["cnn"], source=random_weights_root)


def test_the_app_refuses_a_bad_setting_at_start_up_and_shows_the_precision(monkeypatch, both):
    assert app.Settings.from_env({"COLORIZERS_PRECISION": "bf16"}).precision == "bf16"
    assert app.Settings.from_env({}).precision == "auto"
    with pytest.raises(ValueError, match="COLORIZERS_PRECISION must be one of auto, bf16, fp32, got 'fast'"):
        app.Settings.from_env({"COLORIZERS_PRECISION": "fast"})
    monkeypatch.setenv("COLORIZERS_PRECISION", "fast")
    with pytest.raises(SystemExit, match="error: COLORIZERS_PRECISION must be one of"):
        app.main()  # a one-line message before anything loads, not a traceback
    assert "running on `cpu` in `bf16`" in app.model_status(both["bf16"], {}, None)
    assert "running on `cpu` in `fp32`" in app.model_status(both["fp32"], {}, None)


# ------------------------------------------------------------------------------------------------ the pipeline

def test_bf16_networks_are_channels_last_with_float32_weights_and_run_in_bf16(both):
    for precision, models in both.items():
        net = models["cnn"].model
        # a convolution weight with several input channels and a 3x3 kernel: its layout is unambiguous
        weight = next(p for p in net.parameters() if p.dim() == 4 and p.shape[1] > 1 and p.shape[2] > 1)
        assert weight.dtype == torch.float32
        assert weight.is_contiguous(memory_format=torch.channels_last) == (precision == "bf16")
        assert weight.is_contiguous() == (precision == "fp32")
        dtypes = []
        conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
        hook = conv.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
        try:
            rgb = models["cnn"].colorize_l(torch.rand(1, 1, 40, 30) * 100)
        finally:
            hook.remove()
        assert dtypes == [torch.bfloat16 if precision == "bf16" else torch.float32]
        assert rgb.dtype == torch.float32  # the network's output is float32 again before anything else


def test_bf16_and_fp32_give_the_same_size_the_input_l_and_close_colours(both, small_photo):
    l_in = rgb_to_l(colorizers.image_to_tensor(small_photo))
    results = {}
    for precision, models in both.items():
        for name, colorizer in models.items():
            out = colorizer.colorize(small_photo)
            assert out.mode == "RGB" and out.size == small_photo.size, (name, precision)
            assert np.abs(lightness(out) - lightness(small_photo)).mean() < 0.5, (name, precision)  # 8-bit rounding
            assert (rgb_to_l(colorizer.colorize_l(l_in)) - l_in).abs().max() < 0.01, (name, precision)  # float L
            results[name, precision] = np.asarray(out, dtype=float)
    for name in colorizers.MODEL_NAMES:
        difference = np.abs(results[name, "bf16"] - results[name, "fp32"])
        assert difference.mean() < MAX_MEAN_RGB_DIFFERENCE, (name, difference.mean())
        assert np.percentile(difference, 99) <= 2, name
    assert any(results[name, "fp32"].std(axis=2).mean() > 1.0 for name in colorizers.MODEL_NAMES)  # not grey


# ------------------------------------------------------------------------------------------------ batch CLI

def test_cli_precision_flag_is_used_and_bad_values_are_refused(random_weights_root, small_photo, tmp_path, capsys,
                                                               monkeypatch):
    small_photo.save(tmp_path / "a.png")
    status = cli_main([str(tmp_path / "a.png"), "--model", "cnn", "--out", str(tmp_path / "out"),
                       "--weights", random_weights_root, "--precision", "fp32"])
    assert status == 0 and "(cnn; cpu, fp32)" in capsys.readouterr().out
    assert parse_args(["a.png", "--model", "cnn", "--out", "o", "--precision", "bf16"]).precision == "bf16"
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["a.png", "--model", "cnn", "--out", "o", "--precision", "fp16"])
    assert exit_info.value.code == 2 and "invalid choice: 'fp16'" in capsys.readouterr().err
    monkeypatch.setenv("COLORIZERS_PRECISION", "half")
    with pytest.raises(SystemExit):
        parse_args(["a.png", "--model", "cnn", "--out", "o"])
    assert "$COLORIZERS_PRECISION: precision must be one of auto, bf16, fp32, got 'half'" in capsys.readouterr().err
