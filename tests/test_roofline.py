"""The roofline benchmark's arithmetic: the multiply-add count a latency floor is divided from."""
import argparse
import math

import pytest
import torch
import torch.nn as nn

import colorizers
from benchmarks.roofline import conv_peak, model_multiply_adds, multiply_adds


def test_multiply_adds_count_convolutions_and_linear_layers():
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
    x = torch.rand(2, 1, 8, 8)
    expected = 2 * (8 * 8 * 4 * 1 * 9 + 4 * 8 * 8 * 10)  # batch 2: conv outputs x 9 taps, linear in x out
    assert multiply_adds(lambda: net(x)) == expected


def test_paracolorizer_counts_both_generators_and_the_fusion(random_weights_root):
    models, _ = colorizers.load_colorizers(["paracolorizer_fg", "paracolorizer_bg", "paracolorizer"],
                                           source=random_weights_root, precision="fp32")
    parts = [model_multiply_adds(models[name]) for name in ("paracolorizer_fg", "paracolorizer_bg")]
    whole = model_multiply_adds(models["paracolorizer"])
    assert whole > sum(parts) > 0  # the DenseFuse step adds its encoder (twice) and decoder


def test_conv_peak_is_a_rate():
    rate = conv_peak(torch.float32, repeats=1, shapes=((8, 8, 16),))
    assert math.isfinite(rate) and rate > 0


def test_a_network_setting_names_the_network_the_key_and_a_json_value():
    from benchmarks.random_weights import network_setting
    assert network_setting("paracolorizer_bg.width=64") == ("paracolorizer_bg", "width", 64)
    assert network_setting("attention_ugan.base_width=16") == ("attention_ugan", "base_width", 16)
    for bad in ("width=64", "paracolorizer_bg.width", "nonet.width=64", ".width=64"):
        with pytest.raises(argparse.ArgumentTypeError):
            network_setting(bad)


def test_random_weights_at_another_width_are_counted_at_that_width(capsys, monkeypatch):
    """``--random-weights --config`` builds the networks with the setting, so the planned width is what gets
    counted (and timed): the background generator at width 64 does about four times the multiply-adds of the
    foreground generator at the default 32 (twice the channels in and out; the foreground's attention is small)."""
    from benchmarks import roofline
    monkeypatch.setattr(roofline, "conv_peak", lambda dtype, repeats: 1e9)  # the rate is not what is tested here
    assert roofline.main(["--threads", "1", "--repeats", "1", "--random-weights",
                          "--config", "paracolorizer_bg.width=64"]) == 0
    out = capsys.readouterr().out
    assert "RANDOM weights (untrained; paracolorizer_bg.width=64)" in out
    rows = {line.split("|")[1].strip(): float(line.split("|")[2]) for line in out.splitlines()
            if line.startswith("| paracolorizer")}
    assert 3.5 < rows["paracolorizer_bg"] / rows["paracolorizer_fg"] < 4.5


def test_a_network_setting_needs_random_weights():
    from benchmarks import roofline
    with pytest.raises(SystemExit):
        roofline.main(["--config", "paracolorizer_bg.width=64"])
