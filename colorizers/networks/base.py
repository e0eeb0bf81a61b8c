"""The shared base of every colorization network: Lab normalisation and the Hub mixin.

As in richzhang/colorization's ``BaseColor``, the base owns the normalisation, so each network only maps
normalised L (in [-1, 1]) to normalised ab (in [-1, 1]). ``predict_ab`` is what the pipeline calls.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from huggingface_hub import PyTorchModelHubMixin

from ..color import normalize_l, unnormalize_ab


class ColorizationNet(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="colorizers",
    tags=["image-colorization"],
    license="mit",
):
    """Base class: ``forward(l_norm) -> ab_norm`` at ``native_size``; ``predict_ab(L) -> ab`` in Lab units."""

    native_size: int = 256

    def predict_ab(self, l: torch.Tensor) -> torch.Tensor:
        """L in [0, 100], shape (B, 1, S, S) with S = native_size -> a,b in Lab units, (B, 2, S, S)."""
        out = self(normalize_l(l))
        if isinstance(out, tuple):  # cnn_classifier also returns class logits
            out = out[0]
        return unnormalize_ab(out.float().clamp(-1.0, 1.0))
