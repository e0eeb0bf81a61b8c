"""The Gradio app (Hugging Face Space): six colorization models side by side on one black-and-white photo.

Run ``python app.py`` (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT are honoured). The models load once, at start-up,
from ``$COLORIZERS_WEIGHTS`` or the bundled ``assets/weights``; a model whose weights are missing is listed as
unavailable with the reason and the others still work. Settings come from the environment (see ``Settings``).

Layers, so tests and ``benchmarks/inference.py`` use exactly what the app serves:
``read_image`` (checks an upload) -> ``colorize_models`` (L computed once, ParaColorizer's generators shared) ->
``save_comparison`` (PNG files and a zip in Gradio's cache); ``run_comparison`` is the three together, the
Compare button's work. ``build_demo`` wires them to the UI and the ``/colorize`` API endpoint.
"""
from __future__ import annotations

import io
import os
import re
import time
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import torch
from gradio.processing_utils import save_bytes_to_cache
from PIL import Image, UnidentifiedImageError

import colorizers
from colorizers import Colorizer, ParaColorizer, image_to_tensor, tensor_to_image
from colorizers.color import gray_to_rgb_from_l, rgb_to_l
from colorizers.pipeline import predict_full_resolution_ab, recombine
from colorizers.weights import describe_source

EXAMPLES_DIR = Path(__file__).resolve().parent / "assets" / "examples"
READABLE_FORMATS = "JPEG, PNG, WebP, TIFF, BMP or GIF"
MAX_UPLOAD = "100mb"
PARACOLORIZER_GENERATORS = ("paracolorizer_fg", "paracolorizer_bg")
#: The outputs of ParaColorizer.predict_all, in the order the shared pass stacks them.
PARACOLORIZER_OUTPUTS = (*PARACOLORIZER_GENERATORS, "paracolorizer")
PARACOLORIZER_NOTE = (
    "ParaColorizer's foreground and background generators run once, in one parallel pass that the fused "
    "ParaColorizer result and the foreground/background results share. The foreground and background times are "
    "each generator's own prediction (plus putting its colours on your photo); ParaColorizer's time is that whole "
    "shared pass (both generators and the DenseFuse fusion step) plus its own finishing."
)


def _usable_cpus() -> int:
    """CPUs this process may use: its affinity, capped by a cgroup v2 CPU quota (a Space's share of its host)."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cpus


def _env_int(environ, name: str, default: int) -> int:
    value = environ.get(name, "").strip()
    if not value:
        return default
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{name} must be a positive whole number, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class Settings:
    """The app's settings; ``from_env`` reads them from the environment variables named below."""

    max_pixels: int = 16_000_000  # COLORIZERS_MAX_PIXELS: larger uploads are refused
    concurrency: int = 1          # COLORIZERS_CONCURRENCY: colorization requests running at once
    threads: int = field(default_factory=_usable_cpus)  # COLORIZERS_THREADS: torch CPU threads per request
    device: str = "cpu"           # COLORIZERS_DEVICE: cpu or cuda (default cuda when there is one)
    weights: str | None = None    # weights root; None: colorizers' default ($COLORIZERS_WEIGHTS or the bundled)

    @classmethod
    def from_env(cls, environ=os.environ) -> Settings:
        defaults = cls()
        device = environ.get("COLORIZERS_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
        return cls(
            max_pixels=_env_int(environ, "COLORIZERS_MAX_PIXELS", defaults.max_pixels),
            concurrency=_env_int(environ, "COLORIZERS_CONCURRENCY", defaults.concurrency),
            threads=_env_int(environ, "COLORIZERS_THREADS", defaults.threads),
            device=device,
        )


# ----------------------------------------------------------------------------------------------- checking input

def _refuse(message: str) -> gr.Error:
    """An error for the user's eyes: shown in the app and raised by gradio_client, no traceback in the log."""
    return gr.Error(message, title="Cannot colorize this", print_exception=False)


def read_image(path: str | os.PathLike | None, max_pixels: int) -> Image.Image:
    """The uploaded file as a decoded image, or a ``gr.Error`` saying what is wrong with it: nothing uploaded, not
    an image, damaged, or more than ``max_pixels`` pixels (decompression bombs included)."""
    if not path:
        raise _refuse("No photo yet: upload a black-and-white photo, or pick one of the examples.")
    name = Path(path).name
    limit = f"the limit is {max_pixels / 1e6:g} megapixels. Please upload a smaller version of the photo."
    try:
        with warnings.catch_warnings():
            # PIL warns above MAX_IMAGE_PIXELS and refuses twice that; both mean "too large" here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _refuse(f"{name} is far too large: {limit}") from None
    except UnidentifiedImageError:
        raise _refuse(f"{name} is not an image this app can read. Upload a {READABLE_FORMATS} file.") from None
    except OSError as err:
        raise _refuse(f"{name} could not be opened ({err}).") from None
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise _refuse(f"{name} is {width}×{height} pixels ({width * height / 1e6:.1f} megapixels); {limit}")
    try:
        image.load()
    except (OSError, ValueError, SyntaxError) as err:
        raise _refuse(f"{name} could not be decoded; the file may be damaged or cut short ({err}).") from None
    return image


# -------------------------------------------------------------------------------------------------- colorizing

@dataclass(frozen=True)
class ModelResult:
    image: Image.Image
    seconds: float  # this model's own time (see PARACOLORIZER_NOTE for the ParaColorizer family)


@dataclass(frozen=True)
class Comparison:
    grey: Image.Image  # the lightness every model was given, as a grey image
    results: dict[str, ModelResult]  # in the order the models were asked for
    convert_seconds: float  # decoding the image to L, once for all models
    seconds: float  # the whole colorization, wall clock

    @property
    def shares_paracolorizer_pass(self) -> bool:
        return "paracolorizer" in self.results and any(n in self.results for n in PARACOLORIZER_GENERATORS)


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


def _finish(l_full: torch.Tensor, ab_full: torch.Tensor, seconds_so_far: float) -> ModelResult:
    """Recombine a model's full-resolution a,b with the photo's L, timing this step on top of the model's own."""
    start = time.perf_counter()
    image = tensor_to_image(recombine(l_full, ab_full))
    return ModelResult(image, seconds_so_far + time.perf_counter() - start)


def _paracolorizer_family(para: Colorizer, l_full: torch.Tensor, models: dict[str, Colorizer]) -> dict[str, ModelResult]:
    """ParaColorizer and, from the same pass, those of its own generators that ``models`` asks for."""
    shared_pass = _SharedParaColorizerPass(para.model, para.device)
    start = time.perf_counter()
    ab_all = predict_full_resolution_ab(shared_pass, l_full, para.device)
    pass_seconds = time.perf_counter() - start
    ab = dict(zip(PARACOLORIZER_OUTPUTS, ab_all.split(2, dim=1)))
    own_seconds = {**shared_pass.generator_seconds, "paracolorizer": pass_seconds}
    # A generator's own model can take its result from this pass when it is the very network ParaColorizer holds
    # (as with load_colorizers, which loads each network once).
    wanted = [name for name, generator in shared_pass.generators.items()
              if name in models and models[name].model is generator.net]
    return {name: _finish(l_full, ab[name], own_seconds[name]) for name in (*wanted, "paracolorizer")}


@torch.inference_mode()
def colorize_models(image: Image.Image, models: dict[str, Colorizer]) -> Comparison:
    """Colorize ``image`` with each of ``models``: the image is converted to L once, and when ParaColorizer is
    among them its generators' predictions serve the foreground/background models too (computed once)."""
    begin = time.perf_counter()
    l_full = rgb_to_l(image_to_tensor(image))
    grey = tensor_to_image(gray_to_rgb_from_l(l_full)).convert("L")
    convert_seconds = time.perf_counter() - begin

    results = _paracolorizer_family(models["paracolorizer"], l_full, models) if "paracolorizer" in models else {}
    for name, colorizer in models.items():
        if name not in results:
            start = time.perf_counter()
            ab_full = predict_full_resolution_ab(colorizer.model, l_full, colorizer.device)
            results[name] = _finish(l_full, ab_full, time.perf_counter() - start)
    ordered = {name: results[name] for name in models}
    return Comparison(grey, ordered, convert_seconds, time.perf_counter() - begin)


# ---------------------------------------------------------------------------------------------------- saving

@dataclass(frozen=True)
class ComparisonFiles:
    grey: str
    results: dict[str, str]
    zip: str


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=1)  # lossless (the L stays exact); level 1 is 5x faster than 6
    return buffer.getvalue()


def _stem(path: str | os.PathLike) -> str:
    return re.sub(r"[^\w-]+", "_", Path(path).stem)[:60] or "photo"


def save_comparison(comparison: Comparison, stem: str, cache_dir: str) -> ComparisonFiles:
    """Each result and the grey input as a PNG, plus a zip of them all, in ``cache_dir`` (Gradio's cache, so the
    files are served and cleaned up with the app's other temporary files). Each PNG is encoded once."""
    pngs = {"grey-input": _png(comparison.grey)}
    pngs.update((name, _png(result.image)) for name, result in comparison.results.items())
    names = {key: f"{stem}-{key}.png" for key in pngs}
    paths = {key: save_bytes_to_cache(data, names[key], cache_dir) for key, data in pngs.items()}
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:  # PNGs are compressed already
        for key, data in pngs.items():
            zf.writestr(names[key], data)
    zip_path = save_bytes_to_cache(archive.getvalue(), f"{stem}-colorized.zip", cache_dir)
    return ComparisonFiles(paths.pop("grey-input"), paths, zip_path)


def _choose(names, available: dict[str, Colorizer]) -> dict[str, Colorizer]:
    names = list(names or [])
    if not names:
        raise _refuse("No model selected: tick at least one model.")
    unknown = [name for name in names if name not in available]
    if unknown:
        raise _refuse(f"Not available: {', '.join(unknown)}. Available models: {', '.join(available) or 'none'}.")
    return {name: available[name] for name in names}


def run_comparison(path, names, available: dict[str, Colorizer], settings: Settings,
                   cache_dir: str) -> tuple[Comparison, ComparisonFiles]:
    """What the Compare button does: check the upload, colorize it with the chosen models, save the files."""
    models = _choose(names, available)
    comparison = colorize_models(read_image(path, settings.max_pixels), models)
    return comparison, save_comparison(comparison, _stem(path), cache_dir)


# -------------------------------------------------------------------------------------------------------- UI

def _upload_path(upload) -> str | None:
    """The file path of an image component's value: a FileData dict, as events declared with ``preprocess=False``
    receive it (the app decodes uploads itself, so that bad files get a clear message), or a plain path."""
    return upload.get("path") if isinstance(upload, dict) else upload


def model_status(available: dict, unavailable: dict[str, str], weights: str | None) -> str:
    """Markdown listing every model: ready, or unavailable with the reason."""
    lines = [] if available else [
        "**No model can run yet: no trained weights were found.** Train the models with `python -m train`, or "
        "point `COLORIZERS_WEIGHTS` at a weights folder or Hugging Face repo, then restart the app.", ""]
    lines += [f"**Models** (weights: `{describe_source(weights)}`)", ""]
    for name in colorizers.MODEL_NAMES:
        title = colorizers.MODEL_TITLES[name]
        if name in available:
            lines.append(f"- {title}: ready")
        elif name in unavailable:
            lines.append(f"- {title}: **unavailable**: {unavailable[name]}")
    return "\n".join(lines)


def _summary(comparison: Comparison) -> str:
    text = (f"Colorized with {len(comparison.results)} model(s) in {comparison.seconds:.2f} s; converting the photo to "
            f"lightness took {comparison.convert_seconds:.2f} s, once for all models.")
    if comparison.shares_paracolorizer_pass:
        text += f"\n\n{PARACOLORIZER_NOTE}"
    return text


def _examples() -> tuple[list[list[str]], list[str]]:
    paths = sorted(EXAMPLES_DIR.glob("*.jpg"))
    labels = [p.stem.removeprefix("skimage-").replace("-", " ").capitalize() for p in paths]
    return [[str(p)] for p in paths], labels


def build_demo(available: dict[str, Colorizer], unavailable: dict[str, str], settings: Settings | None = None) -> gr.Blocks:
    """The app, for the models given (``colorizers.load_colorizers``' two dicts), queued with the settings'
    concurrency limit. ``python app.py`` launches it; tests build it with their own models."""
    settings = settings or Settings()
    titles = {name: colorizers.MODEL_TITLES[name] for name in available}
    first = next(iter(available), None)

    with gr.Blocks(title="Colorize black-and-white photos: six models side by side", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(
            "# Colorize a black-and-white photo\n"
            "Upload a photo and compare what six colorization models make of it. Every model keeps your photo's "
            "lightness and size exactly and only adds colour (a colour photo works too: only its lightness is used)."
        )
        with gr.Tab("Compare"):
            gr.Markdown(model_status(available, unavailable, settings.weights), elem_id="model-status")
            with gr.Row():
                with gr.Column(scale=2):
                    photo = gr.Image(label="Black-and-white photo", type="filepath", image_mode=None,
                                     sources=["upload", "clipboard"], elem_id="photo")
                    chosen = gr.CheckboxGroup([(title, name) for name, title in titles.items()],
                                              value=list(available), label="Models", elem_id="models")
                    run = gr.Button("Colorize", variant="primary", interactive=bool(available), elem_id="run")
                    examples, labels = _examples()
                    gr.Examples(examples, inputs=[photo], example_labels=labels, label="Examples")
                    with gr.Accordion("Example photo credits", open=False):
                        gr.Markdown((EXAMPLES_DIR / "LICENSES.md").read_text(encoding="utf-8"))
                with gr.Column(scale=3):
                    slider_model = gr.Dropdown([(title, name) for name, title in titles.items()], value=first,
                                               label="Slide between the grey input and", elem_id="slider-model")
                    slider = gr.ImageSlider(label="Grey input | colorized", type="filepath", interactive=False,
                                            elem_id="slider")
            summary = gr.Markdown(elem_id="summary")
            with gr.Row(equal_height=True):
                result_images = {
                    name: gr.Image(label=title, type="filepath", interactive=False, visible=False, height=360,
                                   min_width=380, elem_id=f"result-{name}")
                    for name, title in titles.items()
                }
            download = gr.File(label="All results and the grey input (zip)", interactive=False, elem_id="download")
            files_state = gr.State()
            # The /colorize API endpoint's own components (never shown): a photo and a model name in, an image out.
            api_photo = gr.Image(label="Photo", type="filepath", visible=False)
            api_model = gr.Dropdown(list(available), value=first, label="Model", visible=False)
            api_result = gr.Image(label="Colorized photo", type="filepath", format="png", visible=False)

        def compare(upload, names, slider_name):
            comparison, files = run_comparison(_upload_path(upload), names, available, settings, download.GRADIO_CACHE)
            shown = slider_name if slider_name in files.results else next(iter(files.results))
            images = [
                gr.Image(files.results[name], label=f"{titles[name]} · {comparison.results[name].seconds:.2f} s",
                         visible=True)
                if name in files.results else gr.Image(None, visible=False)
                for name in result_images
            ]
            slider_choice = gr.Dropdown([(titles[name], name) for name in files.results], value=shown)
            return (*images, slider_choice, (files.grey, files.results[shown]), _summary(comparison), files.zip,
                    files)

        def show_in_slider(name, files: ComparisonFiles | None):
            if files is None:
                return gr.skip()  # nothing colorized yet
            return files.grey, files.results[name]

        def colorize(upload, model: str) -> str:
            """Colorize one photo with one model; returns the colorized image (PNG, the photo's size and L)."""
            if model in unavailable:
                raise _refuse(f"{colorizers.MODEL_TITLES[model]} is unavailable: {unavailable[model]}")
            path = _upload_path(upload)
            models = _choose([model], available)
            result = colorize_models(read_image(path, settings.max_pixels), models).results[model]
            return save_bytes_to_cache(_png(result.image), f"{_stem(path)}-{model}.png", api_result.GRADIO_CACHE)

        run.click(compare, [photo, chosen, slider_model],
                  [*result_images.values(), slider_model, slider, summary, download, files_state],
                  preprocess=False, api_visibility="private", concurrency_id="colorize")
        slider_model.input(show_in_slider, [slider_model, files_state], slider, api_visibility="private")
        gr.on([], colorize, [api_photo, api_model], api_result, api_name="colorize", preprocess=False,
              concurrency_id="colorize")

        from colorizers.study_app import build_study_tabs  # the realism study's tabs (STUDY_* settings)
        build_study_tabs(available)

    return demo.queue(default_concurrency_limit=settings.concurrency)


def main() -> None:
    settings = Settings.from_env()
    torch.set_num_threads(settings.threads)
    available, unavailable = colorizers.load_colorizers(source=settings.weights, device=settings.device)
    build_demo(available, unavailable, settings).launch(max_file_size=MAX_UPLOAD)


if __name__ == "__main__":
    main()
