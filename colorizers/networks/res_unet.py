"""``paracolorizer_fg`` and ``paracolorizer_bg``: ParaColorizer's Res-UNet generators (sections III-A, III-B)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..registry import register_network
from .base import ColorizationNet
from .layers import ResNet18Encoder, conv_bn_relu


class SelfAttention(nn.Module):
    """SAGAN self-attention (Zhang et al. 2019), ParaColorizer's long-range block (III-A, ablation V-A-3).

    query/key are 1x1 convs to C/8 channels, value a 1x1 conv to C; attention = softmax(q k^T) over all
    positions (unscaled, as SAGAN); out = x + gamma * attention(v), gamma initialised to 0 so the block
    starts as the identity. Spectral normalisation is left out (choice: it is a discriminator-side
    stabiliser in SAGAN and the generator is pre-trained with L1 here).
    """

    def __init__(self, channels: int):
        super().__init__()
        inner = max(channels // 8, 1)
        self.query = nn.Conv2d(channels, inner, 1)
        self.key = nn.Conv2d(channels, inner, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.query(x).flatten(2).transpose(1, 2)  # (B, N, C/8)
        k = self.key(x).flatten(2).transpose(1, 2)
        v = self.value(x).flatten(2).transpose(1, 2)  # (B, N, C)
        out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None], scale=1.0)[:, 0]
        return x + self.gamma * out.transpose(1, 2).reshape(b, c, h, w)


class UpBlock(nn.Module):
    """U-Net decoder step: x2 nearest up-sampling of the decoder signal, concatenation with the skip, two convs."""

    def __init__(self, cin: int, cskip: int, cout: int, self_attention: bool = False):
        super().__init__()
        self.conv = nn.Sequential(conv_bn_relu(cin + cskip, cout), conv_bn_relu(cout, cout))
        self.attention = SelfAttention(cout) if self_attention else nn.Identity()

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
        return self.attention(self.conv(torch.cat([x, skip], dim=1)))


class ResUNet(ColorizationNet):
    """Res-UNet: a ResNet-18 encoder (1-channel stem) and a U-Net decoder with skips from the stem and the four
    residual stages, as in the Pix2Pix-style generator of ParaColorizer III-A (after fastai's DynamicUnet).
    The last step up-samples to the input size and concatenates the input L before the output conv; tanh
    output. With ``self_attention`` a SAGAN block follows the decoder stage at 1/8 resolution (32x32 for a
    256x256 input), where fastai's self-attention U-Net places it.

    Choice: the paper's encoder is ImageNet-pretrained; here it starts from random initialisation by default and
    the generator pre-training (IV-A) does that work. Training with ``--encoder-init imagenet`` and ``width=64``
    (torchvision's widths; the default 32 fits no ImageNet tensor) takes conv1 .. layer3 from torchvision's
    ImageNet ResNet-18 instead (``train/imagenet_init.py``; layer4, whose 3x3 weights are not available here,
    stays random).
    """

    native_size = 256
    self_attention: bool = False

    def __init__(self, width: int = 32):
        super().__init__()
        self.encoder = ResNet18Encoder(in_channels=1, width=width, num_layers=4)
        c_stem, c1, c2, c3, c4 = self.encoder.channels
        self.middle = nn.Sequential(conv_bn_relu(c4, 2 * c4), conv_bn_relu(2 * c4, c4))
        self.up4 = UpBlock(c4, c3, c3)
        self.up3 = UpBlock(c3, c2, c2, self_attention=self.self_attention)
        self.up2 = UpBlock(c2, c1, c1)
        self.up1 = UpBlock(c1, c_stem, c_stem)
        self.final = nn.Sequential(
            conv_bn_relu(c_stem + 1, c_stem), conv_bn_relu(c_stem, c_stem), nn.Conv2d(c_stem, 2, 1), nn.Tanh()
        )

    def forward(self, l_norm: torch.Tensor) -> torch.Tensor:
        stem, f1, f2, f3, f4 = self.encoder(l_norm)
        x = self.middle(f4)
        x = self.up4(x, f3)
        x = self.up3(x, f2)
        x = self.up2(x, f1)
        x = self.up1(x, stem)
        x = F.interpolate(x, size=l_norm.shape[-2:], mode="nearest")
        return self.final(torch.cat([x, l_norm], dim=1))


@register_network("paracolorizer_fg")
class ParaColorizerForeground(ResUNet):
    """Foreground generator G1 (ParaColorizer III-A): the Res-UNet with self-attention."""

    self_attention = True


@register_network("paracolorizer_bg")
class ParaColorizerBackground(ResUNet):
    """Background generator G2 (ParaColorizer III-B): the same Res-UNet without self-attention."""

    self_attention = False
