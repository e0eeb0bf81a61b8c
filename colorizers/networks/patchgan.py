"""The PatchGAN discriminator (pix2pix, Isola et al.), used by DTU 3.3 and ParaColorizer III-A/B."""
from __future__ import annotations

import torch
import torch.nn as nn


class PatchDiscriminator(nn.Module):
    """70x70 PatchGAN on the (L, a, b) image: 3 x 256 x 256 -> 1 x 30 x 30 logits.

    C64 (no norm) - C128 - C256 (stride 2) - C512 (stride 1) - 1, 4x4 kernels, BatchNorm and LeakyReLU(0.2)
    (DTU Fig. 4: stacked Conv-BatchNorm-LeakyReLU blocks). Outputs raw logits; ``GANLoss`` in
    ``train/losses.py`` applies the vanilla (BCE) or least-squares objective.
    """

    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1, bias=False),
                nn.BatchNorm2d(ndf * mult), nn.LeakyReLU(0.2, inplace=True),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
        self.model = nn.Sequential(*layers)

    def forward(self, lab_norm: torch.Tensor) -> torch.Tensor:
        """``lab_norm``: normalised L concatenated with normalised ab, (B, 3, H, W)."""
        return self.model(lab_norm)
