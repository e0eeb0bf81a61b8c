"""The one orchestrator: a photo through prepare -> the networks -> finish, for any set of models.

Every colorization of a photo goes through ``colorize_models``: the app's Compare tab and ``/colorize`` endpoint and
the batch tool with the models chosen, ``Colorizer.colorize`` with its one model (a single model is a comparison
of one). The steps are ``pipeline``'s, after richzhang/colorization's ``util`` (``preprocess_img`` /
``postprocess_tens``): the networks run at their native size and their a,b are recombined with the photo's
full-resolution L. Each step runs once:

1. prepare, once per photo: its full-resolution L (``image_to_l``), shared by every model;
2. the networks, once each: each model predicts a,b at its native size (``predict_native_ab``). A ParaColorizer
   among the models runs one ``ParaColorizer.predict_all`` pass (section III-C, Fig. 10), which also supplies the
   results of those foreground/background models that are its very generators, so neither generator runs twice;
3. finish, once per model: its native-size a,b up-sampled and recombined with the full-resolution L
   (``finish_image``, in bands, one model at a time, which bounds memory on large photos).

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
    grey: Image.Image | None  # the lightness every model was given, as a grey image (None when not asked for)
    results: dict[str, ModelResult]  # in the order the models were asked for
    convert_seconds: float  # decoding the image to L, once for all models
    seconds: float  # the whole colorization, wall clock

    @property
    def shares_paracolorizer_pass(self) -> bool:
        """Whether a foreground/background result really came from ParaColorizer's pass (it does only when that
        model is the very network ParaColorizer holds, as ``load_colorizers`` arranges)."""
        return any(result.from_shared_pass for result in self.results.values())


@dataclass(frozen=True)
class _Prediction:
    """A model's output from the network step: its native-size a,b and the time they took."""

    ab: torch.Tensor  # (1, 2, S, S) float32 on the CPU
    seconds: float
    from_shared_pass: bool = False


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
    """``ParaColorizer.predict_all`` as one a,b predictor for the network step: the foreground, background and
    fused a,b stacked as six channels, so resizing L to the native size is done once for all three.
    ``generators`` holds each generator's network and, after ``predict_ab``, its own time."""

    def __init__(self, model: ParaColorizer, device: str | torch.device):
        self.native_size = model.native_size
        self.generators = (_TimedGenerator(model.foreground, device), _TimedGenerator(model.background, device))
        self._model = ParaColorizer(*self.generators, model.fusion, model.strategy)

    def predict_ab(self, l: torch.Tensor) -> torch.Tensor:
        predictions = self._model.predict_all(l)
        return torch.cat([predictions[name] for name in PARACOLORIZER_OUTPUTS], dim=1)


def _paracolorizer_pass(name: str, para: Colorizer, l_full: torch.Tensor,
                        models: dict[str, Colorizer]) -> dict[str, _Prediction]:
    """ParaColorizer ``name`` and, from the same pass, each of ``models`` that is one of its generators: the very
    network ParaColorizer holds (as with ``load_colorizers``, which loads each network once), in its precision."""
    shared_pass = _SharedParaColorizerPass(para.model, para.device)
    start = time.perf_counter()
    ab_all = predict_native_ab(shared_pass, l_full, para.device, para.precision)
    *generators_ab, fused_ab = ab_all.split(2, dim=1)  # in PARACOLORIZER_OUTPUTS' order
    predictions = {name: _Prediction(fused_ab, time.perf_counter() - start)}
    for generator, ab in zip(shared_pass.generators, generators_ab):
        predictions.update((other, _Prediction(ab, generator.seconds, from_shared_pass=True))
                           for other, colorizer in models.items()
                           if colorizer.model is generator.net and colorizer.precision == para.precision)
    return predictions


def _run_networks(l_full: torch.Tensor, models: dict[str, Colorizer]) -> dict[str, _Prediction]:
    """Step 2: every model's native-size a,b, each network run once (ParaColorizer's pass first, since it also
    serves its generators' models)."""
    predictions: dict[str, _Prediction] = {}
    for name, colorizer in models.items():
        if isinstance(colorizer.model, ParaColorizer) and name not in predictions:
            predictions.update(_paracolorizer_pass(name, colorizer, l_full, models))
    for name, colorizer in models.items():
        if name not in predictions:
            start = time.perf_counter()
            ab = predict_native_ab(colorizer.model, l_full, colorizer.device, colorizer.precision)
            predictions[name] = _Prediction(ab, time.perf_counter() - start)
    return predictions


def _finish_all(l_full: torch.Tensor, predictions: dict[str, _Prediction]) -> dict[str, ModelResult]:
    """Step 3: each model's a,b on the photo's L, its time added to the model's own (``finish_image`` works in
    bands, so no full-size float a,b exist, for any number of models)."""
    results = {}
    for name, prediction in predictions.items():
        start = time.perf_counter()
        image = finish_image(l_full, prediction.ab)
        results[name] = ModelResult(image, prediction.seconds + time.perf_counter() - start,
                                    prediction.from_shared_pass)
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
def colorize_models(image: Image.Image, models: dict[str, Colorizer], *, grey: bool = True) -> Comparison:
    """Colorize ``image`` with each of ``models``: prepared once, each network run once (ParaColorizer's
    generators serving the foreground/background models too), each result finished once. ``grey``: also return
    the lightness the models were given as a grey image (``Comparison.grey``; ``None`` without it)."""
    begin = time.perf_counter()
    l_full = image_to_l(image)
    grey_image = _grey_image(l_full) if grey else None
    convert_seconds = time.perf_counter() - begin
    predictions = _run_networks(l_full, models)
    results = _finish_all(l_full, {name: predictions[name] for name in models})
    return Comparison(grey_image, results, convert_seconds, time.perf_counter() - begin)
