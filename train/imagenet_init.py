"""Optional ImageNet initialisation of the ResNet-18 encoders (``python -m train ... --encoder-init imagenet``).

The papers' encoders are ImageNet-pretrained. ``../shared/weights/resnet18_imagenet_partial.safetensors`` next to
the repository (``DEFAULT_RESNET18``; see ``../shared/weights/README.md``) holds torchvision's ImageNet ResNet-18
(IMAGENET1K_V1) with every BatchNorm folded into its convolution, in torchvision's key names, through ``layer3``
(``layer4``'s 3x3 convolutions are missing). Our ``ResNet18Encoder`` keeps torchvision's module names, so the
file maps onto it name for name, except for the stem, and only where the widths are torchvision's:

- ``cnn`` (conv1 .. layer2) is covered fully, at its default width 64;
- ``paracolorizer_fg`` / ``paracolorizer_bg`` get conv1 .. layer3 (``layer4`` and the decoder stay random), but
  only at ``width=64`` (``--config width=64``). Their default width is 32, which no ImageNet tensor fits; at 64
  a Res-UNet has 23.9 M parameters (47.9 MB in fp16) instead of 6.0 M (12.0 MB), and about 4x the compute;
- other networks have no ResNet-18 encoder: asking for the option there is an error.

**Grey stem.** torchvision's ``conv1`` (weight ``W``, 64 x 3 x 7 x 7) takes ImageNet-normalised RGB,
``(x_c - mean_c) / std_c``. For a grey image ``x`` in [0, 1] on all three channels that is a 1-channel conv with
weight ``w_x = sum_c W[:, c] / std_c`` plus the constant ``-sum_{c,k} W[:, c, k] mean_c / std_c`` per output
channel. Our networks take ``l = L / 50 - 1`` (CIE lightness L in [0, 100]), and the grey intensity used for it
is ``x = L / 100 = (l + 1) / 2``, so the weight becomes ``w_x / 2`` and the constant gains ``sum_k w_x[:, k] / 2``;
``conv1`` has no bias, and behind it the folded BN is the identity plus a bias, so the constant goes into
``bn1``'s bias. This is exact for the network it defines: our encoder on ``l`` equals the folded torchvision
network on the grey RGB image ``x = (l + 1) / 2``, where the zero padding of ``l`` is grey 0.5 (torchvision pads
its normalised input with zeros, i.e. with the ImageNet mean colour, a grey of about 0.45: the only difference,
within 3 pixels of the border of the input).

*The approximation* is ``x = L / 100``: ImageNet saw sRGB values, and the sRGB grey of lightness L is not linear
in L (L = 53.4 for x = 0.5). Over [0, 100] ``L / 100`` exceeds that grey's sRGB value by 0.021 on average and at
most 0.034 (at mid-grey), i.e. at most 0.15 in ImageNet-normalised units, a small global brightness shift. The
exact mapping is non-linear and cannot be folded into a convolution; fine-tuning absorbs the difference.

**BatchNorm for training.** Each BN of the file is stored as identity-plus-bias (weight 1, bias = folded bias,
running mean 0, running var 1 - eps), which in eval mode reproduces the folded network, but in train mode
normalises by batch statistics and no longer does. So the BNs are re-expanded from data
(:func:`expand_batchnorms`): the calibration images (a seeded random subset of the training images,
``DEFAULT_CALIBRATION_IMAGES``, converted to normalised L exactly as ``Trainer.prepare`` does) run through the
encoder in eval mode; for each BN the per-channel mean ``m`` and (biased) variance ``v`` of its input over all of
them give weight ``sqrt(v + eps)``, bias ``folded bias + m``, running mean ``m``, running var ``v``. Eval mode is
then unchanged (still the folded network on any input), and train mode on the calibration images as one batch
reproduces it too; on other batches train mode differs only by how far their statistics are from ``m``, ``v``.

The weights are torchvision's (BSD-3-Clause, trained on ImageNet): name torchvision as their source in the model
card of a network trained with this option. Measured (``../shared/weights/README.md``): ``cnn`` at 128 x 128, 7
CPU minutes of L1 training, validation L1 0.0850 with this initialisation vs 0.0841 from random; keep it where
it measurably helps.
"""
from __future__ import annotations

import inspect
import os
from pathlib import Path

import torch
import torch.nn as nn

from colorizers.color import normalize_l, rgb_to_lab
from colorizers.networks.layers import ResNet18Encoder
from colorizers.registry import network_class

#: Shared helper weights next to the repository (as ``train.proposals.DEFAULT_DETECTOR``).
SHARED_WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights"
#: ``$COLORIZERS_RESNET18`` names the file elsewhere (a machine without ``../shared``, e.g. ``python -m train.gpu``).
RESNET18_ENV = "COLORIZERS_RESNET18"
DEFAULT_RESNET18 = Path(os.environ.get(RESNET18_ENV) or SHARED_WEIGHTS / "resnet18_imagenet_partial.safetensors")
#: ``--encoder-init`` choices.
ENCODER_INITS = ("none", "imagenet")
#: The networks with a ResNet-18 encoder (``model.encoder``).
IMAGENET_NETWORKS = ("cnn", "paracolorizer_fg", "paracolorizer_bg")
IMAGENET_WIDTH = 64     # torchvision's ResNet-18 stem / layer1 channels
IMAGENET_LAYERS = 3     # the file has layer1 .. layer3 complete
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_CALIBRATION_IMAGES = 256


def _width_of(network: str, model_config: dict) -> int:
    if "width" in model_config:
        return int(model_config["width"])
    return inspect.signature(network_class(network)).parameters["width"].default


def check_encoder_init(network: str, encoder_init: str, model_config: dict | None = None, *,
                       init: str | None = None, path: str | Path | None = None) -> None:
    """Raise a clear error unless ``encoder_init`` can be applied to a new ``network`` with ``model_config``
    (cheap: nothing is built or loaded; the weights file only has to exist)."""
    if encoder_init not in ENCODER_INITS:
        raise ValueError(f"--encoder-init must be one of {', '.join(ENCODER_INITS)}, got {encoder_init!r}")
    if encoder_init == "none":
        return
    if network not in IMAGENET_NETWORKS:
        raise ValueError(f"--encoder-init imagenet: {network} has no ResNet-18 encoder; it applies to "
                         f"{', '.join(IMAGENET_NETWORKS)}")
    if init:
        raise ValueError("--encoder-init and --init both give the starting weights; drop one of them")
    width = _width_of(network, model_config or {})
    if width != IMAGENET_WIDTH:
        raise ValueError(
            f"--encoder-init imagenet needs torchvision's ResNet-18 widths (width={IMAGENET_WIDTH}); {network} has "
            f"width={width}. Pass --config width={IMAGENET_WIDTH} (for the Res-UNets: 23.9 M parameters, 48 MB "
            "in fp16, ~4x the compute of the default width 32)")
    path = Path(path if path is not None else DEFAULT_RESNET18)
    if not path.is_file():
        raise FileNotFoundError(f"--encoder-init imagenet: no ImageNet ResNet-18 weights at {path} "
                                "(resnet18_imagenet_partial.safetensors of ../shared/weights)")


def load_imagenet_resnet18(path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The folded torchvision ResNet-18 state dict (float32, torchvision key names)."""
    from safetensors.torch import load_file

    path = Path(path if path is not None else DEFAULT_RESNET18)
    if not path.is_file():
        raise FileNotFoundError(f"no ImageNet ResNet-18 weights at {path}")
    return {name: t.float() if t.is_floating_point() else t for name, t in load_file(str(path)).items()}


def grey_stem(conv1_weight: torch.Tensor, bn1_bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision's RGB ``conv1`` weight (C, 3, k, k) and folded ``bn1`` bias -> the 1-channel weight (C, 1, k, k)
    and ``bn1`` bias for input ``l = L / 50 - 1`` read as grey ``x = (l + 1) / 2`` (see the module docstring)."""
    w = conv1_weight.double()
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64).view(1, 3, 1, 1)
    w_x = (w / std).sum(1, keepdim=True)                 # grey x on all three channels
    const_x = -(w * mean / std).sum((1, 2, 3))           # the normalisation's offset
    w_l = w_x / 2.0                                       # x = (l + 1) / 2
    const_l = const_x + w_x.sum((1, 2, 3)) / 2.0
    return w_l.to(conv1_weight.dtype), (bn1_bias.double() + const_l).to(bn1_bias.dtype)


def _check_encoder(encoder: nn.Module) -> int:
    """The number of residual stages to take from the file; an error for an encoder the file does not fit."""
    if not isinstance(encoder, ResNet18Encoder):
        raise ValueError(f"ImageNet initialisation needs a ResNet18Encoder, got {type(encoder).__name__}")
    if encoder.channels[0] != IMAGENET_WIDTH or encoder.conv1.in_channels != 1:
        raise ValueError(f"ImageNet initialisation needs a 1-channel ResNet18Encoder of width {IMAGENET_WIDTH}, "
                         f"got width {encoder.channels[0]} with {encoder.conv1.in_channels} input channel(s)")
    return min(encoder.num_layers, IMAGENET_LAYERS)


def imagenet_batchnorms(encoder: ResNet18Encoder) -> dict[str, nn.BatchNorm2d]:
    """The BNs of the encoder's ImageNet part (the stem's and those of layer1 .. layer3 as far as it goes)."""
    num_layers = _check_encoder(encoder)
    return {name: module for name, module in encoder.named_modules()
            if isinstance(module, nn.BatchNorm2d) and _in_imagenet_part(name, num_layers)}


def _in_imagenet_part(name: str, num_layers: int) -> bool:
    top = name.split(".")[0]
    return top in ("conv1", "bn1") or top in {f"layer{i}" for i in range(1, num_layers + 1)}


@torch.no_grad()
def load_imagenet_encoder(encoder: ResNet18Encoder, weights: dict[str, torch.Tensor] | None = None) -> list[str]:
    """Copy the folded ImageNet weights into ``encoder`` (stem mapped to grey L, BNs as identity-plus-bias): in
    eval mode it then equals the folded torchvision network on the grey image. Returns the names set."""
    num_layers = _check_encoder(encoder)
    weights = load_imagenet_resnet18() if weights is None else weights
    own = encoder.state_dict()
    new = {name: t for name, t in weights.items() if _in_imagenet_part(name, num_layers)}
    new["conv1.weight"], new["bn1.bias"] = grey_stem(weights["conv1.weight"], weights["bn1.bias"])
    missing = sorted(name for name in own if _in_imagenet_part(name, num_layers) and name not in new)
    unknown = sorted(set(new) - set(own))
    if missing or unknown:
        raise ValueError(f"the ImageNet ResNet-18 does not match the encoder: missing {missing[:4]}, "
                         f"unexpected {unknown[:4]}")
    for name, t in new.items():
        if own[name].shape != t.shape:
            raise ValueError(f"ImageNet ResNet-18 {name}: shape {tuple(t.shape)}, the encoder's {tuple(own[name].shape)}")
        own[name].copy_(t)
    return sorted(new)


def _forward_imagenet_part(encoder: ResNet18Encoder, x: torch.Tensor, num_layers: int) -> None:
    x = encoder.maxpool(encoder.relu(encoder.bn1(encoder.conv1(x))))
    for i in range(num_layers):
        x = getattr(encoder, f"layer{i + 1}")(x)


@torch.no_grad()
def expand_batchnorms(encoder: ResNet18Encoder, l_norm: torch.Tensor, batch_size: int = 32) -> None:
    """Re-expand the folded (identity-plus-bias) BNs of the ImageNet part from data, so that train mode on
    ``l_norm`` (N, 1, H, W) as one batch reproduces eval mode, and eval mode is unchanged.

    The encoder runs in eval mode, ``batch_size`` images at a time on its own device; each BN's per-channel input
    mean and biased variance over all of ``l_norm`` (combined in float64) become its statistics.
    """
    num_layers = _check_encoder(encoder)
    batchnorms = imagenet_batchnorms(encoder)
    stats = {name: [0, torch.zeros(bn.num_features, dtype=torch.float64),
                    torch.zeros(bn.num_features, dtype=torch.float64)] for name, bn in batchnorms.items()}

    def hook(name):
        def record(module, inputs):
            x = inputs[0].float()
            var, mean = torch.var_mean(x, dim=(0, 2, 3), unbiased=False)
            n = x.numel() // x.shape[1]
            count, total_mean, total_m2 = stats[name]
            mean, var = mean.double().cpu(), var.double().cpu()
            delta = mean - total_mean  # Chan et al.'s pairwise combination of means and sums of squares
            stats[name] = [count + n, total_mean + delta * n / (count + n),
                           total_m2 + var * n + delta ** 2 * count * n / (count + n)]
        return record

    handles = [bn.register_forward_pre_hook(hook(name)) for name, bn in batchnorms.items()]
    was_training = encoder.training
    device = encoder.conv1.weight.device
    try:
        encoder.eval()
        for start in range(0, len(l_norm), batch_size):
            _forward_imagenet_part(encoder, l_norm[start:start + batch_size].to(device, torch.float32), num_layers)
    finally:
        for handle in handles:
            handle.remove()
        encoder.train(was_training)
    for name, bn in batchnorms.items():
        count, mean, m2 = stats[name]
        var = m2 / count
        bn.weight.copy_((var + bn.eps).sqrt().to(bn.weight))
        bn.bias.add_(mean.to(bn.bias))
        bn.running_mean.copy_(mean.to(bn.running_mean))
        bn.running_var.copy_(var.to(bn.running_var))
        bn.num_batches_tracked.zero_()


def calibration_l_norm(images: torch.Tensor, count: int = DEFAULT_CALIBRATION_IMAGES, seed: int = 0,
                       chunk: int = 64) -> torch.Tensor:
    """Normalised L (N, 1, H, W) of a seeded random subset of ``count`` of the uint8 RGB ``images`` (all of them
    when fewer), converted as ``Trainer.prepare`` does (``rgb_to_lab``, then ``normalize_l``). The global RNG is
    left alone, so a run's random stream is the same with and without ImageNet initialisation."""
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:count]
    order = order.sort().values  # read a memory-mapped cache front to back
    return torch.cat([normalize_l(rgb_to_lab(images[order[i:i + chunk]].float() / 255.0)[:, :1])
                      for i in range(0, len(order), chunk)])


def init_encoder_from_imagenet(encoder: ResNet18Encoder, l_norm: torch.Tensor, *, path: str | Path | None = None,
                               device: str | torch.device | None = None, batch_size: int = 32) -> list[str]:
    """ImageNet initialisation of ``encoder`` (a model's ``.encoder``): the folded weights with the grey stem
    (:func:`load_imagenet_encoder`), then the BNs re-expanded on the calibration images ``l_norm``
    (:func:`expand_batchnorms`, on ``device`` when given; the encoder goes back to where it was). Returns the
    names of the tensors taken from the file."""
    names = load_imagenet_encoder(encoder, load_imagenet_resnet18(path))
    home = encoder.conv1.weight.device
    if device is not None:
        encoder.to(device)
    try:
        expand_batchnorms(encoder, l_norm, batch_size=batch_size)
    finally:
        encoder.to(home)
    return names


__all__ = [
    "DEFAULT_CALIBRATION_IMAGES", "DEFAULT_RESNET18", "ENCODER_INITS", "IMAGENET_NETWORKS", "IMAGENET_WIDTH",
    "calibration_l_norm", "check_encoder_init", "expand_batchnorms", "grey_stem", "imagenet_batchnorms",
    "init_encoder_from_imagenet", "load_imagenet_encoder", "load_imagenet_resnet18",
]
