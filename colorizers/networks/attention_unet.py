"""``attention_ugan``: the Attention U-Net generator of the DTU report (section 3.3, Oktay et al. [14])."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..registry import register_network
from .base import ColorizationNet


def double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class AttentionGate(nn.Module):
    """The attention gate of DTU equations 4 and 5.

    q_att = psi^T(ReLU(W_x^T x + W_g^T g + b_g)) + b_psi,  alpha = sigmoid(q_att),  x_hat = alpha * x.
    W_x (F_l -> F_int, no bias), W_g (F_g -> F_int, bias b_g) and psi (F_int -> 1, bias b_psi) are 1x1
    convolutions; g (the up-sampled decoder signal) and x (the skip) have the same spatial size.
    """

    def __init__(self, f_g: int, f_l: int, f_int: int):
        super().__init__()
        self.w_x = nn.Conv2d(f_l, f_int, 1, bias=False)
        self.w_g = nn.Conv2d(f_g, f_int, 1, bias=True)
        self.psi = nn.Conv2d(f_int, 1, 1, bias=True)
        self.relu = nn.ReLU(inplace=True)

    def coefficients(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """alpha, shape (B, 1, H, W), in (0, 1)."""
        return torch.sigmoid(self.psi(self.relu(self.w_x(x) + self.w_g(g))))

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return x * self.coefficients(x, g)


class AttentionUpBlock(nn.Module):
    """Up-sample the decoder signal, gate the skip with it, concatenate, two convolutions (DTU 3.3.1)."""

    def __init__(self, cin: int, cskip: int, cout: int):
        super().__init__()
        self.up = nn.Sequential(
            nn.Upsample(scale_factor=2), nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        )
        self.gate = AttentionGate(f_g=cout, f_l=cskip, f_int=max(cskip // 2, 1))
        self.conv = double_conv(cskip + cout, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        g = self.up(x)
        return self.conv(torch.cat([self.gate(skip, g), g], dim=1))


@register_network("attention_ugan")
class AttentionUNet(ColorizationNet):
    """Attention U-Net: 5 levels of double convolutions with max-pooling (widths f, 2f, 4f, 8f, 16f), and a
    decoder whose every skip passes an attention gate before concatenation. 1 -> 2 channels, tanh output,
    256x256 in (fully convolutional; sizes divisible by 16). ``base_width`` f is 64 in Oktay et al.
    Trained with the PatchGAN of ``patchgan.py`` (DTU 3.3).
    """

    native_size = 256

    def __init__(self, base_width: int = 32):
        super().__init__()
        f = [base_width * 2 ** i for i in range(5)]
        self.enc = nn.ModuleList([double_conv(1, f[0])] + [double_conv(f[i - 1], f[i]) for i in range(1, 5)])
        self.pool = nn.MaxPool2d(2)
        self.dec = nn.ModuleList([AttentionUpBlock(f[i], f[i - 1], f[i - 1]) for i in range(4, 0, -1)])
        self.out = nn.Sequential(nn.Conv2d(f[0], 2, 1), nn.Tanh())

    def forward(self, l_norm: torch.Tensor) -> torch.Tensor:
        skips = []
        x = l_norm
        for i, block in enumerate(self.enc):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for block in self.dec:
            x = block(x, skips.pop())
        return self.out(x)
