"""The Gradio app (Hugging Face Space): six colorization models side by side on one black-and-white photo.

Run ``python app.py`` (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT are honoured). The models load once, at start-up,
from ``$COLORIZERS_WEIGHTS`` or the bundled ``assets/weights``; a model whose weights are missing is listed as
unavailable with the reason and the others still work. Settings come from the environment (see ``Settings``).

Layers, so tests and ``benchmarks/inference.py`` use exactly what the app serves:
``read_image`` (checks an upload) -> ``colorizers.compare.colorize_models`` (L once, ParaColorizer's
generators shared; the batch tool uses it too) -> ``save_comparison`` (PNG files and a zip in Gradio's cache);
``run_comparison`` is the three together, the Compare button's work. ``build_demo`` wires them to the UI and the ``/colorize`` API endpoint.
"""
from __future__ import annotations

import logging
import os
import re
import threading
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import torch
from gradio.exceptions import InvalidPathError
from gradio.processing_utils import hash_bytes, hash_file
from PIL import Image, UnidentifiedImageError

import colorizers
from colorizers import Colorizer, reference
from colorizers.compare import Comparison, colorize_models
from colorizers.imagefile import open_image
from colorizers.png import encode_png
from colorizers.weights import describe_source
from fairqueue import FairQueue, fair, trusted_proxies_from_env

EXAMPLES_DIR = Path(__file__).resolve().parent / "assets" / "examples"
READABLE_FORMATS = "JPEG, PNG, WebP, TIFF, BMP or GIF"
MAX_UPLOAD = "100mb"
PARACOLORIZER_NOTE = (
    "ParaColorizer's foreground and background generators run once, in one parallel pass that the fused "
    "ParaColorizer result and the foreground/background results share. The foreground and background times are "
    "each generator's own prediction (plus putting its colours on your photo); ParaColorizer's time is that whole "
    "shared pass (both generators and the DenseFuse fusion step) plus its own finishing."
)
REFERENCE_NOTE = (
    "**This is a colour photo**, so it is its own reference: every model coloured its grey version (its lightness "
    "only), and each result is compared with your original below, at the photo's full resolution."
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
    max_side: int = 65_535        # COLORIZERS_MAX_SIDE: uploads with a longer side are refused (bounds memory)
    concurrency: int = 1          # COLORIZERS_CONCURRENCY: colorization requests running at once
    threads: int = field(default_factory=_usable_cpus)  # COLORIZERS_THREADS: torch CPU threads per request
    device: str = "cpu"           # COLORIZERS_DEVICE: cpu or cuda (default cuda when there is one)
    precision: str = "auto"       # COLORIZERS_PRECISION: auto (bf16 where the device does it natively), bf16, fp32
    weights: str | None = None    # weights root; None: colorizers' default ($COLORIZERS_WEIGHTS or the bundled)
    trusted_proxies: int = 0      # COLORIZERS_TRUSTED_PROXIES: proxies trusted to append X-Forwarded-For (fairqueue)

    @classmethod
    def from_env(cls, environ=os.environ) -> Settings:
        defaults = cls()
        device = environ.get("COLORIZERS_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
        precision = environ.get(colorizers.PRECISION_ENV, "").strip().lower() or defaults.precision
        if precision not in colorizers.PRECISIONS:
            raise ValueError(f"{colorizers.PRECISION_ENV} must be one of {', '.join(colorizers.PRECISIONS)}, "
                             f"got {precision!r}")
        return cls(
            max_pixels=_env_int(environ, "COLORIZERS_MAX_PIXELS", defaults.max_pixels),
            max_side=_env_int(environ, "COLORIZERS_MAX_SIDE", defaults.max_side),
            concurrency=_env_int(environ, "COLORIZERS_CONCURRENCY", defaults.concurrency),
            threads=_env_int(environ, "COLORIZERS_THREADS", defaults.threads),
            device=device,
            precision=precision,
            trusted_proxies=trusted_proxies_from_env(environ),
        )


# ----------------------------------------------------------------------------------------------- checking input

def _refuse(message: str) -> gr.Error:
    """An error for the user's eyes: shown in the app and raised by gradio_client, no traceback in the log."""
    return gr.Error(message, title="Cannot colorize this", print_exception=False)


#: An absolute path inside a message (not a URL's path): shown to visitors as its last part only.
_PATH = re.compile(r"(?<![\w.:/~-])/(?:[^\s/'\"`,;()]+/)*([^\s/'\"`,;()]*)")


def hide_paths(text: str) -> str:
    """``text`` with every absolute server path cut to its last part (a file or folder name), for visitors' eyes:
    error messages and the model list must not show where the app keeps its files."""
    return _PATH.sub(lambda m: m.group(1) or "…", str(text))


def read_image(path: str | os.PathLike | None, max_pixels: int, max_side: int = Settings.max_side) -> Image.Image:
    """The uploaded file as a decoded image, or a ``gr.Error`` saying in a sentence what is wrong with it: nothing
    uploaded, not an image, damaged, oversized metadata, more than ``max_pixels`` pixels (decompression bombs
    included) or a side longer than ``max_side`` (what bounds memory for extreme shapes, e.g. 1 x 16,000,000)."""
    if not path:
        raise _refuse("No photo yet: upload a black-and-white photo, or pick one of the examples.")
    if not isinstance(path, (str, os.PathLike)):
        raise _refuse(f"The photo did not arrive as a file. Upload a {READABLE_FORMATS} file.")
    name = Path(path).name
    limit = (f"the limit is {max_pixels:,} pixels ({max_pixels / 1e6:g} megapixels). Please upload a smaller "
             "version of the photo.")
    try:
        with warnings.catch_warnings():
            # PIL warns above MAX_IMAGE_PIXELS and refuses twice that; both mean "too large" here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = open_image(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _refuse(f"{name} is far too large: {limit}") from None
    except UnidentifiedImageError:
        raise _refuse(f"{name} is not an image this app can read. Upload a {READABLE_FORMATS} file.") from None
    except FileNotFoundError:
        raise _refuse(f"{name} did not arrive completely. Please upload it again.") from None
    except Exception as err:  # noqa: BLE001 - PIL raises many kinds; each gets a sentence
        raise _refuse(_unreadable(name, err)) from None
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise _refuse(f"{name} is {width}×{height} = {width * height:,} pixels; {limit}")
    if max(width, height) > max_side:
        image.close()
        raise _refuse(f"{name} is {width}×{height} pixels: its {'width' if width >= height else 'height'} is over "
                      f"the limit of {max_side:,} pixels per side. Please crop or shrink the photo.")
    try:
        image.load()
    except Exception as err:  # noqa: BLE001
        raise _refuse(_unreadable(name, err)) from None
    return image


def _unreadable(name: str, err: Exception) -> str:
    """A sentence for a file PIL could not open or decode."""
    text = hide_paths(str(err))
    if "TEXT_CHUNK" in text or "text chunks" in text:  # a PNG text chunk over PIL's safety limit
        return (f"{name} carries a text block (metadata) too large to read safely. Save the photo again without "
                "its metadata, or as a JPEG, and upload that.")
    return f"{name} could not be decoded; the file may be damaged or cut short ({text[:200]})."


# ---------------------------------------------------------------------------------------------------- saving

@dataclass(frozen=True)
class ComparisonFiles:
    grey: str
    results: dict[str, str]
    zip: str
    original: str | None = None  # reference mode (a colour upload): the original as a PNG
    scores: dict[str, reference.Score] | None = None  # reference mode: each result against the original


def _png(image: Image.Image) -> bytes:
    """Lossless (the L stays exact), at zlib level 1 with one filter for every row (``colorizers.png``): about 40 %
    faster than Pillow's encoder at level 1, which is 5x faster than its default 6."""
    return encode_png(image)


def _place_in_cache(temporary: Path, file_name: str, cache_dir: str, digest: str | None = None) -> str:
    """Move a finished file to ``cache_dir/<hash of its content>/file_name`` (the layout of Gradio's own cache, so
    Gradio serves it and cleans it up) and return that path. Written once: when the same content is there under
    the same name already (two visitors colorizing the same photo with the same model), the file someone may be
    downloading is only touched (for the cache's age-based clean-up), never rewritten; a new file appears whole.
    ``digest``: the content's hash when the caller has it (else the file is read back to hash it)."""
    folder = Path(cache_dir) / (digest or hash_file(temporary))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / Path(file_name).name
    if path.is_file() and path.stat().st_size == temporary.stat().st_size:
        temporary.unlink()
        os.utime(path)
    else:
        os.replace(temporary, path)
    return str(path.resolve())


def _temporary_path(cache_dir: str, file_name: str) -> Path:
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    return Path(cache_dir) / f".{Path(file_name).name}.{os.getpid()}.{threading.get_ident()}.part"


def save_bytes_to_cache(data: bytes, file_name: str, cache_dir: str) -> str:
    """``data`` in Gradio's cache as ``file_name`` (``_place_in_cache``). Gradio's own ``save_bytes_to_cache``
    rewrites the file in place every time, racing with downloads of identical results."""
    temporary = _temporary_path(cache_dir, file_name)
    temporary.write_bytes(data)
    return _place_in_cache(temporary, file_name, cache_dir, hash_bytes(data))


def _stem(path: str | os.PathLike) -> str:
    return re.sub(r"[^\w-]+", "_", Path(path).stem)[:60] or "photo"


def save_comparison(comparison: Comparison, stem: str, cache_dir: str,
                    scores: dict[str, reference.Score] | None = None,
                    original: Image.Image | None = None) -> ComparisonFiles:
    """Each result and the grey input as a PNG, plus a zip of them all, in ``cache_dir`` (Gradio's cache, so the
    files are served and cleaned up with the app's other temporary files). Each PNG is encoded once. In reference
    mode (``scores`` and the ``original`` given) the original is saved too (shown, not zipped: the visitor has it)
    and the zip holds ``metrics.csv``."""
    images = {"grey-input": comparison.grey, **{name: result.image for name, result in comparison.results.items()}}
    names = {key: f"{stem}-{key}.png" for key in images}

    def save(key: str) -> str:  # each PNG goes to disk as soon as it is encoded: at most one per thread in memory
        return save_bytes_to_cache(_png(images[key]), names[key], cache_dir)

    with ThreadPoolExecutor(max_workers=min(len(images), torch.get_num_threads())) as pool:  # zlib frees the GIL
        paths = dict(zip(images, pool.map(save, images)))
    zip_name = f"{stem}-colorized.zip"
    archive = _temporary_path(cache_dir, zip_name)  # straight to disk, each PNG copied from its file
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:  # PNGs are compressed already
        for key, path in paths.items():
            zf.write(path, names[key])
        if scores is not None:
            zf.writestr("metrics.csv", reference.csv_text([(stem, s) for s in scores.values()], with_means=False))
    zip_path = _place_in_cache(archive, zip_name, cache_dir)
    original_path = None
    if scores is not None and original is not None:
        original_path = save_bytes_to_cache(_png(original), f"{stem}-original.png", cache_dir)
    return ComparisonFiles(paths.pop("grey-input"), paths, zip_path, original_path, scores)


def _choose(names, available: dict[str, Colorizer]) -> dict[str, Colorizer]:
    if isinstance(names, str):
        names = [names]
    if names is not None and not isinstance(names, (list, tuple)):
        raise _refuse(f"Models must be given as a list of names. Available models: {', '.join(available) or 'none'}.")
    names = list(names or [])
    if not names:
        raise _refuse("No model selected: tick at least one model.")
    unknown = [str(name)[:40] for name in names if not isinstance(name, str) or name not in available]
    if unknown:
        raise _refuse(f"Not available: {', '.join(unknown)}. Available models: {', '.join(available) or 'none'}.")
    return {name: available[name] for name in names}


def run_comparison(path, names, available: dict[str, Colorizer], settings: Settings,
                   cache_dir: str) -> tuple[Comparison, ComparisonFiles]:
    """What the Compare button does: check the upload, colorize it with the chosen models, save the files. A
    colour upload is colorized from its lightness like any other, then each result is scored against it
    (``colorizers.reference``, at the upload's full resolution); ``files.scores`` is ``None`` for a grey one."""
    models = _choose(names, available)
    image = read_image(path, settings.max_pixels, settings.max_side)
    original = reference.colour_original(image)
    comparison = colorize_checked(image, models)
    del image  # the decoded upload (48 MB at the cap) is not needed while scoring and saving
    scores = None
    if original is not None:
        scores = reference.score(original, {name: result.image for name, result in comparison.results.items()})
    return comparison, save_comparison(comparison, _stem(path), cache_dir, scores, original)


def colorize_checked(image: Image.Image, models: dict[str, Colorizer]) -> Comparison:
    """``colorize_models``, with any failure inside (an image mode the pipeline cannot read, running out of
    memory) turned into a message for the user rather than a traceback; the details go to the log."""
    try:
        return colorize_models(image, models)
    except Exception as err:  # noqa: BLE001 - whatever went wrong, the visitor gets a sentence, not a stack
        logging.getLogger(__name__).exception("colorizing failed")
        raise _refuse(f"This photo could not be colorized ({type(err).__name__}: {hide_paths(err)[:200]}). "
                      "Try saving it as an ordinary RGB or greyscale JPEG or PNG.") from None


# -------------------------------------------------------------------------------------------------------- UI

def _upload_path(upload) -> str | None:
    """The file path of an image component's value: a FileData dict, as events declared with ``preprocess=False``
    receive it (the app decodes uploads itself, so that bad files get a clear message), or a plain path."""
    return upload.get("path") if isinstance(upload, dict) else upload


def _public_source(weights: str | None) -> str:
    """Where the weights come from, as a visitor may see it: "bundled", a Hub repo id, or a folder's name."""
    source = describe_source(weights)
    if Path(source).resolve() == Path(colorizers.BUNDLED_WEIGHTS).resolve():
        return "bundled"
    return hide_paths(source)


def model_status(available: dict, unavailable: dict[str, str], weights: str | None) -> str:
    """Markdown listing every model: ready, or unavailable with the reason; and where the models run, in which
    precision."""
    lines = [] if available else [
        "**No model can run yet: no trained weights were found.** Train the models with `python -m train`, or "
        "point `COLORIZERS_WEIGHTS` at a weights folder or Hugging Face repo, then restart the app.", ""]
    running = sorted({(str(c.device), c.precision) for c in available.values()})
    where = " and ".join(f"`{device}` in `{precision}`" for device, precision in running)
    lines += [f"**Models** (weights: `{_public_source(weights)}`)" + (f", running on {where}" if where else ""), ""]
    for name in colorizers.MODEL_NAMES:
        title = colorizers.MODEL_TITLES[name]
        if name in available:
            lines.append(f"- {title}: ready")
        elif name in unavailable:
            lines.append(f"- {title}: **unavailable**: {hide_paths(unavailable[name])}")
    return "\n".join(lines)


def _summary(comparison: Comparison, scored: bool = False) -> str:
    text = (f"Colorized with {len(comparison.results)} model(s) in {comparison.seconds:.2f} s; converting the photo to "
            f"lightness took {comparison.convert_seconds:.2f} s, once for all models.")
    if scored:
        text = f"{REFERENCE_NOTE}\n\n{text}"
    if comparison.shares_paracolorizer_pass:
        text += f"\n\n{PARACOLORIZER_NOTE}"
    return text


ORIGINAL, ORIGINAL_TITLE = "original", "Original colours (reference)"


def _slider_files(files: ComparisonFiles) -> dict[str, str]:
    """The slider's choices: each result, and in reference mode the original."""
    return {**files.results, **({ORIGINAL: files.original} if files.original else {})}


def _examples() -> tuple[list[list[str]], list[str]]:
    paths = sorted(EXAMPLES_DIR.glob("*.jpg"))
    labels = [p.stem.removeprefix("skimage-").replace("-", " ").capitalize() for p in paths]
    return [[str(p)] for p in paths], labels


class AppBlocks(gr.Blocks):
    """``gr.Blocks`` whose refusal of a file reference reads as a sentence. An API client can send a path on the
    server, or a file it never uploaded, where a photo belongs; Gradio refuses it (``InvalidPathError``) before
    any handler runs, and its message reaches the client as a bare "Error". Here it says what to do instead,
    without the path."""

    async def preprocess_data(self, *args, **kwargs):
        try:
            return await super().preprocess_data(*args, **kwargs)
        except InvalidPathError:
            raise _refuse("The photo must be uploaded with the request (gradio_client: `handle_file(path)`); "
                          "files already on the server cannot be named.") from None


def build_demo(available: dict[str, Colorizer], unavailable: dict[str, str], settings: Settings | None = None) -> gr.Blocks:
    """The app, for the models given (``colorizers.load_colorizers``' two dicts), queued with the settings'
    concurrency limit. ``python app.py`` launches it; tests build it with their own models."""
    settings = settings or Settings()
    gate = FairQueue(settings.concurrency)  # the colorization requests' bounded, per-client fair queue
    titles = {name: colorizers.MODEL_TITLES[name] for name in available}
    first = next(iter(available), None)

    with AppBlocks(title="Colorize black-and-white photos: six models side by side", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(
            "# Colorize a black-and-white photo\n"
            "Upload a photo and compare what six colorization models make of it. Every model keeps your photo's "
            "lightness and size exactly and only adds colour. A colour photo works too: only its lightness is used, and "
            "each result is then compared with its real colours."
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
            # Reference mode (a colour upload): each result against the original, sortable, best values starred.
            with gr.Column(visible=False, elem_id="reference") as reference_box:
                sort_by = gr.Radio([(title, name) for name, title, *_ in reference.METRICS], value="psnr",
                                   label="Compared with your original colours; sort by", elem_id="reference-sort")
                reference_table = gr.Markdown(elem_id="reference-table")
                gr.Markdown(f"{reference.METRICS_NOTE} {reference.LPIPS_NOTE}", elem_id="reference-note")
            with gr.Row(equal_height=True):
                original_image = gr.Image(label="Original colours", type="filepath", interactive=False, visible=False,
                                          height=360, min_width=380, elem_id="result-original")
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

        def compare(upload, names, slider_name, sort_name):
            comparison, files = run_comparison(_upload_path(upload), names, available, settings, download.GRADIO_CACHE)
            shown = slider_name if slider_name in _slider_files(files) else next(iter(files.results))
            images = [
                gr.Image(files.results[name], label=f"{titles[name]} · {comparison.results[name].seconds:.2f} s",
                         visible=True)
                if name in files.results else gr.Image(None, visible=False)
                for name in result_images
            ]
            choices = [(titles[name], name) for name in files.results]
            if files.scores is None:
                reference_parts = (gr.Image(None, visible=False), gr.Column(visible=False), "")
            else:
                choices.append((ORIGINAL_TITLE, ORIGINAL))
                reference_parts = (gr.Image(files.original, visible=True), gr.Column(visible=True),
                                   reference.table_markdown(files.scores, titles, sort_name or "psnr"))
            slider_choice = gr.Dropdown(choices, value=shown)
            return (*images, slider_choice, (files.grey, _slider_files(files)[shown]),
                    _summary(comparison, scored=files.scores is not None), files.zip, files, *reference_parts)

        def show_in_slider(name, files: ComparisonFiles | None):
            if files is None:
                return gr.skip()  # nothing colorized yet
            shown = _slider_files(files)
            if not isinstance(name, str) or name not in shown:
                raise gr.Error(f"There is no result of {str(name)[:40]!r} to slide to. Pick one of the models listed.",
                               title="Slider", print_exception=False)
            return files.grey, shown[name]

        def sort_table(sort_name, files: ComparisonFiles | None):
            if files is None or files.scores is None:
                return gr.skip()
            if not isinstance(sort_name, str) or sort_name not in reference.METRIC_NAMES:
                raise gr.Error(f"The table cannot be sorted by {str(sort_name)[:40]!r}; pick one of "
                               f"{', '.join(title for _, title, *_ in reference.METRICS)}.", title="Sort",
                               print_exception=False)
            return reference.table_markdown(files.scores, titles, sort_name)

        def colorize(upload, model: str) -> str:
            """Colorize one photo with one model; returns the colorized image (PNG, the photo's size and L)."""
            if not isinstance(model, str):
                raise _refuse(f"The model must be given by its name, one of: {', '.join(available) or 'none'}.")
            if model in unavailable:
                raise _refuse(f"{colorizers.MODEL_TITLES[model]} is unavailable: {hide_paths(unavailable[model])}")
            path = _upload_path(upload)
            models = _choose([model], available)
            result = colorize_checked(read_image(path, settings.max_pixels, settings.max_side), models).results[model]
            return save_bytes_to_cache(_png(result.image), f"{_stem(path)}-{model}.png", api_result.GRADIO_CACHE)

        run.click(fair(compare, gate, settings.trusted_proxies), [photo, chosen, slider_model, sort_by],
                  [*result_images.values(), slider_model, slider, summary, download, files_state,
                   original_image, reference_box, reference_table],
                  preprocess=False, api_visibility="private", concurrency_limit=None)
        slider_model.input(show_in_slider, [slider_model, files_state], slider, api_visibility="private")
        sort_by.input(sort_table, [sort_by, files_state], reference_table, api_visibility="private")
        gr.on([], fair(colorize, gate, settings.trusted_proxies), [api_photo, api_model], api_result,
              api_name="colorize", preprocess=False, concurrency_limit=None)

        from study.tab import build_study_tabs  # the realism study's tabs (STUDY_* settings)
        build_study_tabs(available)

    return demo.queue(default_concurrency_limit=settings.concurrency)


def main() -> None:
    try:
        settings = Settings.from_env()
    except ValueError as err:  # a bad setting: say which, not a traceback
        raise SystemExit(f"error: {err}") from None
    torch.set_num_threads(settings.threads)
    # Client addresses come from fairqueue.client_key with COLORIZERS_TRUSTED_PROXIES; uvicorn's own rewriting of
    # the connection's address from X-Forwarded-For (for connections from 127.0.0.1 by default) stays off, so a
    # header a client wrote itself never becomes its address.
    os.environ.setdefault("FORWARDED_ALLOW_IPS", "")
    available, unavailable = colorizers.load_colorizers(source=settings.weights, device=settings.device,
                                                        precision=settings.precision)
    build_demo(available, unavailable, settings).launch(max_file_size=MAX_UPLOAD)


if __name__ == "__main__":
    main()
