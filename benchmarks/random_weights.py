"""Untrained networks for timing only: a weights root of random weights, optionally at other widths.

    python benchmarks/inference.py --random-weights --config paracolorizer_fg.width=64 --config paracolorizer_bg.width=64
    python benchmarks/roofline.py --random-weights --config paracolorizer_fg.width=64 --config paracolorizer_bg.width=64

Speed and multiply-adds depend on a network's shape, not on its weights, so a planned width can be measured before
any network is trained at it. Such weights colour nothing sensibly; the benchmarks say so in their header.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import colorizers


def network_setting(text: str) -> tuple[str, str, object]:
    """``NETWORK.KEY=VALUE`` (an argparse type): VALUE read as JSON where it parses (numbers, true/false), else as a
    string. NETWORK is one of ``colorizers.NETWORK_NAMES``."""
    target, sep, value = text.partition("=")
    network, dot, key = target.partition(".")
    if not sep or not dot or not key:
        raise argparse.ArgumentTypeError(f"expected NETWORK.KEY=VALUE (e.g. paracolorizer_bg.width=64), got {text!r}")
    if network not in colorizers.NETWORK_NAMES:
        raise argparse.ArgumentTypeError(
            f"unknown network {network!r} in {text!r}; choose one of {', '.join(colorizers.NETWORK_NAMES)}")
    try:
        return network, key, json.loads(value)
    except json.JSONDecodeError:
        return network, key, value


def write_timing_weights(root: Path, settings: list[tuple[str, str, object]] = ()) -> str:
    """Every network, untrained (seed 0), saved under ``root`` with ``settings`` (``network_setting`` triples) as
    its config; returns ``root``. An unknown key fails as the network's constructor does."""
    overrides: dict[str, dict] = {}
    for network, key, value in settings:
        overrides.setdefault(network, {})[key] = value
    torch.manual_seed(0)
    for name in colorizers.NETWORK_NAMES:
        colorizers.build_model(name, **overrides.get(name, {})).save_pretrained(root / name)
    return str(root)


def describe(settings: list[tuple[str, str, object]]) -> str:
    """The header line of a benchmark run on random weights."""
    shapes = ", ".join(f"{network}.{key}={value}" for network, key, value in settings) or "default widths"
    return f"RANDOM weights (untrained; {shapes}): timings only, no quality meaning"
