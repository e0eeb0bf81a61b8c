"""Where weights come from: a local weights root or a Hugging Face Hub repo, laid out the same way.

A weights root holds one folder per network, ``<root>/<network>/{config.json, model.safetensors}``, which is
what ``save_pretrained`` writes and what a Hub model repo with one subfolder per network holds. The default
root is the bundled ``assets/weights``; the environment variable ``COLORIZERS_WEIGHTS`` overrides it.
Missing weights raise ``MissingWeightsError``: never a silent fall-back to random weights.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

import torch.nn as nn

from .registry import network_class

WEIGHTS_ENV = "COLORIZERS_WEIGHTS"
BUNDLED_WEIGHTS = Path(__file__).resolve().parent.parent / "assets" / "weights"
WEIGHT_FILES = ("config.json", "model.safetensors")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


class MissingWeightsError(FileNotFoundError):
    """The weights a model needs are not at the source it was asked to load from."""


def default_source() -> str:
    return os.environ.get(WEIGHTS_ENV) or str(BUNDLED_WEIGHTS)


def describe_source(source: str | os.PathLike | None) -> str:
    return str(source if source is not None else default_source())


def _is_hub_repo(source: str) -> bool:
    return not os.path.exists(source) and bool(_REPO_ID.match(source)) and not source.startswith((".", "/", "~"))


def network_dir(network: str, source: str | os.PathLike | None = None) -> Path:
    """The local folder holding ``network``'s config.json and model.safetensors, downloading from the Hub when
    ``source`` is a repo id (``owner/name`` or ``owner/name@revision``). A source that exists on disk is always
    a local folder; ``./name/repo`` forces the local reading of an id-shaped path."""
    network_class(network)  # unknown names fail here, with the list of known ones
    src = str(source if source is not None else default_source())
    if _is_hub_repo(src):
        return _download_from_hub(network, src)
    folder = Path(src).expanduser() / network
    missing = [name for name in WEIGHT_FILES if not (folder / name).is_file()]
    if missing:
        raise MissingWeightsError(
            f"no weights for {network!r}: {', '.join(str(folder / m) for m in missing)} not found. "
            f"Train it with `python -m train {network} --out {src}`, or point {WEIGHTS_ENV} at a weights root."
        )
    return folder


def _download_from_hub(network: str, source: str) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    repo_id, _, revision = source.partition("@")
    try:
        paths = [
            hf_hub_download(repo_id, name, subfolder=network, revision=revision or None)
            for name in WEIGHT_FILES
        ]
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as err:
        raise MissingWeightsError(
            f"no weights for {network!r}: {source!r} is not a local folder, and as a Hub repo it failed with "
            f"{type(err).__name__}: {str(err).splitlines()[0]}"
        ) from err
    return Path(paths[0]).parent


def is_connection_failure(err: MissingWeightsError) -> bool:
    """True when the Hub could not be reached at all (offline, DNS), as opposed to a missing repo or file."""
    from huggingface_hub.errors import LocalEntryNotFoundError
    return isinstance(err.__cause__, LocalEntryNotFoundError)


def load_network(network: str, source: str | os.PathLike | None = None, device: str = "cpu") -> nn.Module:
    """A trained network in eval mode, through ``from_pretrained`` (strict: every weight must be there)."""
    folder = network_dir(network, source)
    cls = network_class(network)
    with contextlib.redirect_stdout(io.StringIO()):  # the mixin prints "Loading weights from local directory"
        model = cls.from_pretrained(str(folder), strict=True, map_location=str(device))
    return model.to(device).eval()
