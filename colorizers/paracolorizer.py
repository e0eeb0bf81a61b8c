"""``paracolorizer``: the full ParaColorizer testing pipeline (section III-C, Fig. 10)."""
from __future__ import annotations

import torch
import torch.nn as nn

from .color import lab_to_rgb, rgb_to_lab
from .networks.base import ColorizationNet
from .networks.densefuse import DenseFuse


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
        ab_fg = self.foreground.predict_ab(l).float()
        ab_bg = self.background.predict_ab(l).float()
        with torch.autocast(l.device.type, enabled=False):
            rgb = [lab_to_rgb(torch.cat([l.float(), ab], dim=1)) for ab in (ab_fg, ab_bg)]
        fused = self.fusion.fuse(rgb, self.strategy).float()
        with torch.autocast(l.device.type, enabled=False):
            ab_fused = rgb_to_lab(fused)[:, 1:]
        return {"paracolorizer_fg": ab_fg, "paracolorizer_bg": ab_bg, "paracolorizer": ab_fused}

    def predict_ab(self, l: torch.Tensor) -> torch.Tensor:
        return self.predict_all(l)["paracolorizer"]
