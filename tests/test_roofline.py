"""The roofline benchmark's arithmetic: the multiply-add count a latency floor is divided from."""
import math

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
