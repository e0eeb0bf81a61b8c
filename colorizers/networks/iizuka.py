"""``cnn_classifier``: "Let there be Color!" (Iizuka et al. 2016) as the DTU report builds it (section 3.2)."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..registry import register_network
from .base import ColorizationNet
from .layers import conv_bn_relu


@register_network("cnn_classifier")
class LetThereBeColor(ColorizationNet):
    """Joint colorization and classification network with a fixed 224x224 input (DTU 3.2, Fig. 2).

    With ``w = width`` (64 in the paper, which gives the report's 512/256 channel counts):
    - low-level features: 6 3x3 convs, stride 2 on the 1st, 3rd and 5th (no max-pooling) -> 8w x 28 x 28;
    - mid-level features: 2 convs, 8w -> 8w -> 4w at 28 x 28;
    - global features: 4 convs (stride 2, 1, 2, 1) -> 8w x 7 x 7, then FC 16w, FC 8w (fed to the
      classification network) and a third FC 4w (the global vector fed to the fusion layer);
    - classification network: FC 4w, FC ``num_classes`` (logits);
    - fusion layer: the global vector broadcast to 28 x 28, concatenated with the mid-level map, 1x1 conv to 4w;
    - colorization network: conv 2w, up x2, conv w, conv w, up x2, conv w/2, conv 2 + sigmoid, up x2 (nearest).

    ``forward`` returns ``(ab_norm, class_logits)``; the sigmoid output in [0, 1] is mapped to the normalised
    ab range [-1, 1] (choice: the report does not say how it scales its sigmoid output). Every conv has batch
    normalisation and ReLU except the last, as in Iizuka et al.
    """

    native_size = 224

    def __init__(self, width: int = 32, num_classes: int = 112, class_names: list[str] | None = None):
        super().__init__()
        w = width
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.class_names = list(class_names) if class_names is not None else None
        self.low_level = nn.Sequential(
            conv_bn_relu(1, w, 2), conv_bn_relu(w, 2 * w), conv_bn_relu(2 * w, 2 * w, 2),
            conv_bn_relu(2 * w, 4 * w), conv_bn_relu(4 * w, 4 * w, 2), conv_bn_relu(4 * w, 8 * w),
        )
        self.mid_level = nn.Sequential(conv_bn_relu(8 * w, 8 * w), conv_bn_relu(8 * w, 4 * w))
        self.global_convs = nn.Sequential(
            conv_bn_relu(8 * w, 8 * w, 2), conv_bn_relu(8 * w, 8 * w),
            conv_bn_relu(8 * w, 8 * w, 2), conv_bn_relu(8 * w, 8 * w),
        )
        self.global_fc = nn.Sequential(
            nn.Flatten(), nn.Linear(8 * w * 7 * 7, 16 * w), nn.ReLU(inplace=True),
            nn.Linear(16 * w, 8 * w), nn.ReLU(inplace=True),
        )
        self.global_to_fusion = nn.Sequential(nn.Linear(8 * w, 4 * w), nn.ReLU(inplace=True))
        self.classifier = nn.Sequential(nn.Linear(8 * w, 4 * w), nn.ReLU(inplace=True), nn.Linear(4 * w, num_classes))
        self.fusion = nn.Sequential(nn.Conv2d(8 * w, 4 * w, 1), nn.ReLU(inplace=True))
        self.colorization = nn.Sequential(
            conv_bn_relu(4 * w, 2 * w), nn.Upsample(scale_factor=2, mode="nearest"),
            conv_bn_relu(2 * w, w), conv_bn_relu(w, w), nn.Upsample(scale_factor=2, mode="nearest"),
            conv_bn_relu(w, w // 2),
            nn.Conv2d(w // 2, 2, 3, padding=1), nn.Sigmoid(), nn.Upsample(scale_factor=2, mode="nearest"),
        )

    def forward(self, l_norm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if l_norm.shape[-2:] != (224, 224):
            raise ValueError(f"cnn_classifier takes 224x224 input, got {tuple(l_norm.shape[-2:])}")
        low = self.low_level(l_norm)
        mid = self.mid_level(low)
        global_hidden = self.global_fc(self.global_convs(low))
        logits = self.classifier(global_hidden)
        g = self.global_to_fusion(global_hidden)[:, :, None, None].expand(-1, -1, *mid.shape[-2:])
        fused = self.fusion(torch.cat([mid, g], dim=1))
        ab01 = self.colorization(fused)
        return ab01 * 2.0 - 1.0, logits
