"""colorizers: the six colorization models of the DTU report and ParaColorizer behind one Lab pipeline.

Public API::

    import colorizers
    colorizers.MODEL_NAMES                       # the six model names, in display order
    net = colorizers.build_model("attention_ugan")   # an untrained, Hub-mixin network
    net.save_pretrained("weights/attention_ugan")
    c = colorizers.load_colorizer("paracolorizer", source="weights")   # or "owner/repo@rev"
    colour = c.colorize(PIL.Image.open("photo.jpg"))
"""
from __future__ import annotations

import os

import torch

from . import networks as _networks  # noqa: F401  (registers the networks)
from .paracolorizer import ParaColorizer
from .pipeline import Colorizer, image_to_rgb_array, image_to_tensor, tensor_to_image
from .precision import PRECISION_ENV, PRECISIONS, memory_format, resolve_precision
from .registry import NETWORKS, build_model, network_class
from .weights import (BUNDLED_WEIGHTS, WEIGHTS_ENV, MissingWeightsError, default_source, is_connection_failure,
                      load_network, network_dir)

MODEL_NAMES = ("cnn", "cnn_classifier", "attention_ugan", "paracolorizer_fg", "paracolorizer_bg", "paracolorizer")
NETWORK_NAMES = ("cnn", "cnn_classifier", "attention_ugan", "paracolorizer_fg", "paracolorizer_bg", "paracolorizer_fusion")

MODEL_TITLES = {
    "cnn": "CNN baseline (DTU 3.1)",
    "cnn_classifier": "CNN + classifier, Let there be Color! (DTU 3.2)",
    "attention_ugan": "Attention UGAN (DTU 3.3)",
    "paracolorizer_fg": "ParaColorizer foreground GAN (III-A)",
    "paracolorizer_bg": "ParaColorizer background GAN (III-B)",
    "paracolorizer": "ParaColorizer, DenseFuse-fused (III-C)",
}

#: The networks whose weights each model needs.
MODEL_NETWORKS = {name: (name,) for name in MODEL_NAMES[:-1]}
MODEL_NETWORKS["paracolorizer"] = ("paracolorizer_fg", "paracolorizer_bg", "paracolorizer_fusion")


def _check_name(name: str) -> None:
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")


def _load_network(network: str, source, device: str, precision: str) -> torch.nn.Module:
    """``load_network``, in ``precision``'s memory format: channels-last for bf16. The weights stay float32
    parameters; autocast does the bf16 arithmetic at run time."""
    return load_network(network, source, device).to(memory_format=memory_format(precision))


def _assemble(name: str, nets: dict, device: str, precision: str) -> Colorizer:
    if name == "paracolorizer":
        model = ParaColorizer(nets["paracolorizer_fg"], nets["paracolorizer_bg"], nets["paracolorizer_fusion"])
    else:
        model = nets[name]
    return Colorizer(name, model, device, precision)


def load_colorizer(name: str, source: str | os.PathLike | None = None, device: str = "cpu",
                   precision: str | None = None) -> Colorizer:
    """A trained model behind the pipeline. ``source``: a weights root (local folder, or Hub repo id with an
    optional ``@revision``); default: ``$COLORIZERS_WEIGHTS`` or the bundled ``assets/weights``.
    ``precision``: ``"auto"`` (bf16 where ``device`` does it natively), ``"bf16"`` or ``"fp32"``; default
    ``$COLORIZERS_PRECISION`` or ``"auto"``. Raises ``MissingWeightsError`` naming what is missing."""
    _check_name(name)
    precision = resolve_precision(precision, device)
    nets = {n: _load_network(n, source, device, precision) for n in MODEL_NETWORKS[name]}
    return _assemble(name, nets, device, precision)


def _one_line(err: Exception) -> str:
    """A reason short enough for a status list (state-dict mismatches run to kilobytes)."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    text = first if isinstance(err, MissingWeightsError) else f"{type(err).__name__}: {first}"
    return text if len(text) <= 300 else text[:297] + "..."


def load_colorizers(names=MODEL_NAMES, source=None, device: str = "cpu",
                    precision: str | None = None) -> tuple[dict[str, Colorizer], dict[str, str]]:
    """Load several models at once, each network once (``paracolorizer`` shares fg/bg with the single models),
    all in one precision (``precision`` as in ``load_colorizer``, resolved once for ``device``).

    Returns ``(available, unavailable)``: name -> Colorizer, and name -> a one-line reason it could not be
    loaded. Any failure to load a network (missing, corrupt or mismatched weights, a bad config) makes the
    models that need it unavailable and nothing else.
    """
    for name in names:
        _check_name(name)
    precision = resolve_precision(precision, device)  # a bad setting fails here, before any loading
    networks: dict[str, object] = {}  # network -> the loaded module, or the error that loading it raised
    unreachable: Exception | None = None  # a Hub that could not be reached is not asked again for each network
    for net in dict.fromkeys(n for name in names for n in MODEL_NETWORKS[name]):
        if unreachable is not None:
            networks[net] = MissingWeightsError(f"no weights for {net!r}: not fetched, since {unreachable}")
            continue
        try:
            networks[net] = _load_network(net, source, device, precision)
        except Exception as err:  # noqa: BLE001 - any broken checkpoint must not take the other models down
            networks[net] = err
            if isinstance(err, MissingWeightsError) and is_connection_failure(err):
                unreachable = err
    available: dict[str, Colorizer] = {}
    unavailable: dict[str, str] = {}
    for name in names:
        errors = [networks[net] for net in MODEL_NETWORKS[name] if isinstance(networks[net], Exception)]
        if errors:
            unavailable[name] = "; ".join(_one_line(err) for err in errors)
        else:
            available[name] = _assemble(name, networks, device, precision)
    return available, unavailable


__all__ = [
    "BUNDLED_WEIGHTS", "Colorizer", "MODEL_NAMES", "MODEL_NETWORKS", "MODEL_TITLES", "MissingWeightsError",
    "NETWORKS", "NETWORK_NAMES", "PRECISIONS", "PRECISION_ENV", "ParaColorizer", "WEIGHTS_ENV", "build_model",
    "default_source", "image_to_rgb_array", "image_to_tensor", "load_colorizer", "load_colorizers", "load_network",
    "network_class", "network_dir", "resolve_precision", "tensor_to_image",
]
