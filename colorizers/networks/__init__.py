"""One module per network; importing this package registers them all."""
from .attention_unet import AttentionGate, AttentionUNet
from .base import ColorizationNet
from .cnn import CNNBaseline
from .densefuse import FUSION_STRATEGIES, DenseFuse, fuse_features
from .iizuka import LetThereBeColor
from .patchgan import PatchDiscriminator
from .res_unet import ParaColorizerBackground, ParaColorizerForeground, ResUNet, SelfAttention

__all__ = [
    "AttentionGate", "AttentionUNet", "CNNBaseline", "ColorizationNet", "DenseFuse", "FUSION_STRATEGIES",
    "LetThereBeColor", "ParaColorizerBackground", "ParaColorizerForeground", "PatchDiscriminator", "ResUNet",
    "SelfAttention", "fuse_features",
]
