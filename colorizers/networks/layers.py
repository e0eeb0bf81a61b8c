"""Building blocks shared by several networks: conv blocks and a width-configurable ResNet-18 encoder."""
from __future__ import annotations

import torch
import torch.nn as nn
from torchvision.models.resnet import BasicBlock


def conv_bn_relu(cin: int, cout: int, stride: int = 1, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _resnet_layer(cin: int, cout: int, stride: int) -> nn.Sequential:
    downsample = None
    if stride != 1 or cin != cout:
        downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
    return nn.Sequential(BasicBlock(cin, cout, stride, downsample), BasicBlock(cout, cout))


class ResNet18Encoder(nn.Module):
    """ResNet-18 (He et al.) with a 1-channel stem for the L input.

    The children are in torchvision's order (conv1, bn1, relu, maxpool, layer1..layer4), so "cut after the
    sixth child" (DTU report 3.1) is ``num_layers=2``. ``width`` is the channel count of the stem and layer1
    (64 in the original ResNet-18); layer k has ``width * 2**(k-1)`` channels. ``forward`` returns the list of
    features [stem (/2), layer1 (/4), layer2 (/8), ...] used as U-Net skips.
    """

    def __init__(self, in_channels: int = 1, width: int = 64, num_layers: int = 4):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        channels = [width * 2 ** i for i in range(num_layers)]
        cin = width
        for i, cout in enumerate(channels):
            setattr(self, f"layer{i + 1}", _resnet_layer(cin, cout, 1 if i == 0 else 2))
            cin = cout
        self.num_layers = num_layers
        self.channels = [width] + channels  # stem, layer1, ...

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        stem = self.relu(self.bn1(self.conv1(x)))
        feats = [stem]
        x = self.maxpool(stem)
        for i in range(self.num_layers):
            x = getattr(self, f"layer{i + 1}")(x)
            feats.append(x)
        return feats
