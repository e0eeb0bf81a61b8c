"""A name -> class registry for the trainable networks (timm-style ``create_model``)."""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

NETWORKS: dict[str, type[nn.Module]] = {}


def register_network(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    def wrap(cls: type[nn.Module]) -> type[nn.Module]:
        if name in NETWORKS:
            raise ValueError(f"network {name!r} registered twice")
        NETWORKS[name] = cls
        return cls
    return wrap


def network_class(name: str) -> type[nn.Module]:
    try:
        return NETWORKS[name]
    except KeyError:
        raise ValueError(f"unknown network {name!r}; choose one of {', '.join(NETWORKS)}") from None


def build_model(name: str, **config) -> nn.Module:
    """An untrained network by name, e.g. ``build_model("attention_ugan", base_width=16)``."""
    return network_class(name)(**config)
