"""Colorize one photo with several models at once: the comparison the app and the batch tool share.

The photo is converted to L once for all models. When ``paracolorizer`` is among the models, one
``ParaColorizer.predict_all`` pass (section III-C, Fig. 10) also supplies the foreground and background
generators' results, so neither generator runs twice. Each model still goes through the one pipeline
(``predict_native_ab``, then ``finish_image``: up-sampling and recombination in bands, one model at a time).

Times: each generator's time is its own prediction plus putting its colours on the photo; ParaColorizer's time is
the whole shared pass (both generators and the DenseFuse fusion step) plus its own finishing.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .color import l_to_gray
from .paracolorizer import ParaColorizer
from .pipeline import Colorizer, finish_image, image_to_l, predict_native_ab

PARACOLORIZER_GENERATORS = ("paracolorizer_fg", "paracolorizer_bg")
#: The outputs of ParaColorizer.predict_all, in the order the shared pass stacks them.
PARACOLORIZER_OUTPUTS = (*PARACOLORIZER_GENERATORS, "paracolorizer")


@dataclass(frozen=True)
class ModelResult:
    image: Image.Image
    seconds: float  # this model's own time (see the module docstring for the ParaColorizer family)
    from_shared_pass: bool = False  # a generator result taken from ParaColorizer's pass rather than run alone


@dataclass(frozen=True)
class Comparison:
    grey: Image.Image  # the lightness every model was given, as a grey image
    results: dict[str, ModelResult]  # in the order the models were asked for
    convert_seconds: float  # decoding the image to L, once for all models
    seconds: float  # the whole colorization, wall clock

    @property
    def shares_paracolorizer_pass(self) -> bool:
        """Whether a foreground/background result really came from ParaColorizer's pass (it does only when that
        model is the very network ParaColorizer holds, as ``load_colorizers`` arranges)."""
        return any(result.from_shared_pass for result in self.results.values())


def _synchronize(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class _TimedGenerator:
    """Stands in for one of ParaColorizer's generators inside ``predict_all`` and times its prediction."""

    def __init__(self, net, device: str | torch.device):
        self.net, self.device, self.seconds = net, device, 0.0

    def predict_ab(self, l: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        ab = self.net.predict_ab(l)
        _synchronize(self.device)
        self.seconds = time.perf_counter() - start
        return ab


class _SharedParaColorizerPass:
    """``ParaColorizer.predict_all`` as one a,b predictor for the pipeline: the foreground, background and fused
    a,b stacked as six channels, so the pipeline's resizing to and from the native size applies to all three.
    ``generator_seconds`` holds each generator's own time after ``predict_ab``."""

    def __init__(self, model: ParaColorizer, device: str | torch.device):
        self.native_size = model.native_size
        self.generators = dict(zip(PARACOLORIZER_GENERATORS, (_TimedGenerator(model.foreground, device),
                                                              _TimedGenerator(model.background, device))))
        self._model = ParaColorizer(*self.generators.values(), model.fusion, model.strategy)

    def predict_ab(self, l: torch.Tensor) -> torch.Tensor:
        predictions = self._model.predict_all(l)
        return torch.cat([predictions[name] for name in PARACOLORIZER_OUTPUTS], dim=1)

    @property
    def generator_seconds(self) -> dict[str, float]:
        return {name: generator.seconds for name, generator in self.generators.items()}


def _finish(l_full: torch.Tensor, ab_small: torch.Tensor, seconds_so_far: float,
            from_shared_pass: bool = False) -> ModelResult:
    """Up-sample a model's native-size a,b and recombine them with the photo's L, timing this on top of the
    model's own time. One model's full-resolution a,b exist at a time, which bounds memory on large photos."""
    start = time.perf_counter()
    image = finish_image(l_full, ab_small)  # up-sampled and recombined in bands: no full-size float a,b
    return ModelResult(image, seconds_so_far + time.perf_counter() - start, from_shared_pass)


def _paracolorizer_family(para: Colorizer, l_full: torch.Tensor, models: dict[str, Colorizer]) -> dict[str, ModelResult]:
    """ParaColorizer and, from the same pass, those of its own generators that ``models`` asks for."""
    shared_pass = _SharedParaColorizerPass(para.model, para.device)
    start = time.perf_counter()
    ab_all = predict_native_ab(shared_pass, l_full, para.device, para.precision)
    pass_seconds = time.perf_counter() - start
    ab = dict(zip(PARACOLORIZER_OUTPUTS, ab_all.split(2, dim=1)))
    # A generator's own model can take its result from this pass when it is the very network ParaColorizer holds
    # (as with load_colorizers, which loads each network once) and runs in the same precision.
    wanted = [name for name, generator in shared_pass.generators.items()
              if name in models and models[name].model is generator.net and models[name].precision == para.precision]
    seconds = shared_pass.generator_seconds
    results = {name: _finish(l_full, ab[name], seconds[name], from_shared_pass=True) for name in wanted}
    results["paracolorizer"] = _finish(l_full, ab["paracolorizer"], pass_seconds)
    return results


def _grey_image(l_full: torch.Tensor, band_pixels: int = 1 << 18) -> Image.Image:
    """The lightness as an 8-bit grey image, converted in bands of rows (no full-size float temporaries)."""
    height, width = l_full.shape[-2:]
    grey = np.empty((height, width), dtype=np.uint8)
    rows = max(1, band_pixels // max(width, 1))
    for top in range(0, height, rows):
        grey[top:top + rows] = (l_to_gray(l_full[..., top:top + rows, :])[0, 0].numpy() * 255.0 + 0.5).astype(np.uint8)
    return Image.fromarray(grey, "L")


@torch.inference_mode()
def colorize_models(image: Image.Image, models: dict[str, Colorizer]) -> Comparison:
    """Colorize ``image`` with each of ``models``: the image is converted to L once, and when ParaColorizer is
    among them its generators' predictions serve the foreground/background models too (computed once)."""
    begin = time.perf_counter()
    l_full = image_to_l(image)
    grey = _grey_image(l_full)
    convert_seconds = time.perf_counter() - begin

    results = _paracolorizer_family(models["paracolorizer"], l_full, models) if "paracolorizer" in models else {}
    for name, colorizer in models.items():
        if name not in results:
            start = time.perf_counter()
            ab_small = predict_native_ab(colorizer.model, l_full, colorizer.device, colorizer.precision)
            results[name] = _finish(l_full, ab_small, time.perf_counter() - start)
    ordered = {name: results[name] for name in models}
    return Comparison(grey, ordered, convert_seconds, time.perf_counter() - begin)
