"""``paracolorizer``: the full ParaColorizer testing pipeline (section III-C, Fig. 10)."""
from __future__ import annotations

import torch
import torch.nn as nn

from .color import lab_to_rgb, rgb_to_lab
from .networks.base import ColorizationNet
from .networks.densefuse import DenseFuse


def colourings(l: torch.Tensor, foreground: ColorizationNet, background: ColorizationNet
               ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The two generators' a,b for L (float32) and their colour images (RGB in [0, 1], converted in float32
    outside autocast): what the fusion step, or Table V's overlay, combines."""
    ab = [foreground.predict_ab(l).float(), background.predict_ab(l).float()]
    with torch.autocast(l.device.type, enabled=False):
        rgb = [lab_to_rgb(torch.cat([l.float(), x], dim=1)) for x in ab]
    return ab, rgb


class ParaColorizer(nn.Module):
    """The foreground (G1) and background (G2) generators colour the same L in parallel; the DenseFuse
    encoder encodes both colour results, its fusion layer merges the features and its decoder produces the
    fused colour image, whose a,b are the prediction (the pipeline puts the input's own L back).
    No object detector is needed at test time (section VI).

    Under bf16 autocast (``precision.py``) only the three networks run in bf16: the Lab/RGB conversions between
    them are float32, outside autocast, as everywhere else in the pipeline.
    """

    native_size = 256

    def __init__(self, foreground: ColorizationNet, background: ColorizationNet, fusion: DenseFuse,
                 strategy: str | None = None):
        super().__init__()
        self.foreground = foreground
        self.background = background
        self.fusion = fusion
        self.strategy = strategy

    def predict_all(self, l: torch.Tensor) -> dict[str, torch.Tensor]:
        """ab of the foreground, background and fused results for L (B, 1, 256, 256) in [0, 100]."""
        (ab_fg, ab_bg), rgb = colourings(l, self.foreground, self.background)
        fused = self.fusion.fuse(rgb, self.strategy).float()
        with torch.autocast(l.device.type, enabled=False):
            ab_fused = rgb_to_lab(fused)[:, 1:]
        return {"paracolorizer_fg": ab_fg, "paracolorizer_bg": ab_bg, "paracolorizer": ab_fused}

    def predict_ab(self, l: torch.Tensor) -> torch.Tensor:
        return self.predict_all(l)["paracolorizer"]


class WeightedOverlay(nn.Module):
    """The baseline ParaColorizer's fusion network is compared with in section V-C (Table V): the foreground and
    background colourings overlaid as ``alpha * foreground + (1 - alpha) * background`` (RGB), no fusion network.
    ``alpha`` 0 is the background result alone, 1 the foreground's. For ``train.evaluate --overlay``; not an app
    model."""

    native_size = 256

    def __init__(self, foreground: ColorizationNet, background: ColorizationNet, alpha: float):
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"the overlay weight alpha must be in [0, 1], got {alpha}")
        self.foreground = foreground
        self.background = background
        self.alpha = alpha

    def predict_ab(self, l: torch.Tensor) -> torch.Tensor:
        _, (rgb_fg, rgb_bg) = colourings(l, self.foreground, self.background)
        with torch.autocast(l.device.type, enabled=False):
            return rgb_to_lab(self.alpha * rgb_fg + (1.0 - self.alpha) * rgb_bg)[:, 1:]
