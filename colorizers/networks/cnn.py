"""``cnn``: the DTU report's CNN baseline (section 3.1, after Melas-Kyriazi [17])."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..registry import register_network
from .base import ColorizationNet
from .layers import ResNet18Encoder, conv_bn_relu


@register_network("cnn")
class CNNBaseline(ColorizationNet):
    """ResNet-18 with a 1-channel stem, cut after its sixth child (conv1, bn1, relu, maxpool, layer1, layer2:
    features at 1/8 resolution), then a head of convolutions and three x2 upsamplings back to the input size,
    ending in 2 channels (a, b). Fully convolutional; run at 256x256 as the report's inputs.

    Choice: [17]'s head has no output activation; we add ``tanh`` so the prediction stays in the normalised
    ab range (the L1 loss of section 3.1.2 is unchanged by it).

    The encoder starts random; training with ``--encoder-init imagenet`` takes all of it (conv1 .. layer2) from
    torchvision's ImageNet ResNet-18 instead (``train/imagenet_init.py``; the default width, 64, is torchvision's).
    """

    native_size = 256

    def __init__(self, width: int = 64):
        super().__init__()
        self.encoder = ResNet18Encoder(in_channels=1, width=width, num_layers=2)
        c = 2 * width  # layer2 channels (128 for ResNet-18)
        self.head = nn.Sequential(
            conv_bn_relu(c, c), nn.Upsample(scale_factor=2),
            conv_bn_relu(c, c // 2), conv_bn_relu(c // 2, c // 2), nn.Upsample(scale_factor=2),
            conv_bn_relu(c // 2, c // 4),
            nn.Conv2d(c // 4, 2, 3, padding=1), nn.Upsample(scale_factor=2),
            nn.Tanh(),
        )

    def forward(self, l_norm: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(l_norm)[-1])
