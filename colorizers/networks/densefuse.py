"""``paracolorizer_fusion``: the DenseFuse network (Li & Wu 2019) as ParaColorizer III-C adapts it to colour."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin

from ..registry import register_network

FUSION_STRATEGIES = ("addition", "l1_norm")


def _conv_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True))


class DenseBlock(nn.Module):
    """Three 3x3 conv layers, each fed the concatenation of all earlier outputs (DenseFuse's dense block)."""

    def __init__(self, cin: int, growth: int, layers: int = 3):
        super().__init__()
        self.layers = nn.ModuleList([_conv_relu(cin + i * growth, growth) for i in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.cat([x, layer(x)], dim=1)
        return x


def fuse_features(features: list[torch.Tensor], strategy: str = "l1_norm", radius: int = 1) -> torch.Tensor:
    """DenseFuse's fusion layer (Li & Wu, section III-B).

    - ``addition``: f = sum_i phi_i.
    - ``l1_norm``: activity C_i = ||phi_i(x, y)||_1 over channels, averaged over a (2r+1)^2 window;
      weights w_i = C_i / sum_k C_k; f = sum_i w_i phi_i.
    """
    if strategy == "addition":
        return torch.stack(features).sum(0)
    if strategy == "l1_norm":
        k = 2 * radius + 1
        activity = [F.avg_pool2d(f.abs().sum(1, keepdim=True), k, 1, radius, count_include_pad=False) for f in features]
        total = torch.stack(activity).sum(0).clamp_min(1e-8)
        return sum(f * (a / total) for f, a in zip(features, activity))
    raise ValueError(f"unknown fusion strategy {strategy!r}; choose one of {FUSION_STRATEGIES}")


@register_network("paracolorizer_fusion")
class DenseFuse(nn.Module, PyTorchModelHubMixin, library_name="colorizers", tags=["image-fusion"], license="mit"):
    """Encoder (conv 16 + 3-layer dense block, growth 16 -> 64 channels) and decoder (4 convs: 64, 32, 16, 3).

    Trained as an auto-encoder on colour images (RGB in [0, 1]; MSE + lambda * (1 - SSIM), ParaColorizer III-C);
    at test time ``fuse`` encodes the foreground and background colourings, fuses the features with
    ``strategy`` and decodes (Fig. 10).
    """

    def __init__(self, channels: int = 3, width: int = 16, strategy: str = "l1_norm"):
        super().__init__()
        if strategy not in FUSION_STRATEGIES:
            raise ValueError(f"unknown fusion strategy {strategy!r}; choose one of {FUSION_STRATEGIES}")
        self.strategy = strategy
        self.encoder = nn.Sequential(_conv_relu(channels, width), DenseBlock(width, width, 3))
        c = 4 * width
        self.decoder = nn.Sequential(
            _conv_relu(c, c), _conv_relu(c, c // 2), _conv_relu(c // 2, c // 4), nn.Conv2d(c // 4, channels, 3, padding=1)
        )

    def encode(self, rgb: torch.Tensor) -> torch.Tensor:
        return self.encoder(rgb)

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        return self.decoder(features)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        """Reconstruct the input (training)."""
        return self.decode(self.encode(rgb))

    def fuse(self, images: list[torch.Tensor], strategy: str | None = None) -> torch.Tensor:
        """Fuse several RGB images of the same size into one (inference), clamped to [0, 1]."""
        feats = [self.encode(x) for x in images]
        return self.decode(fuse_features(feats, strategy or self.strategy)).clamp(0.0, 1.0)
