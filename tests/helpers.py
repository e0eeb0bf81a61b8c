"""Plain helpers shared by the tests (fixtures live in ``conftest.py``).

Random-initialised weights are used for plumbing and shape tests only: they are written through
``save_pretrained`` exactly as trained weights are, so loading, the pipeline and the app are exercised end to
end, but no test presents their output as a model's result."""
from __future__ import annotations

import os
import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import colorizers

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"  # screenshots of the browser tests (git-ignored)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

# Small widths keep CPU tests fast; the layer structure is the papers' at any width.
SMALL_CONFIGS = {
    "cnn": {"width": 16},
    "cnn_classifier": {"width": 16, "num_classes": 5, "class_names": ["ant", "bee", "cat", "dog", "eel"]},
    "attention_ugan": {"base_width": 8},
    "paracolorizer_fg": {"width": 16},
    "paracolorizer_bg": {"width": 16},
    "paracolorizer_fusion": {"width": 8},
}


def write_random_weights(root, networks=colorizers.NETWORK_NAMES, seed: int = 0) -> str:
    """Save random-initialised networks under ``root/<network>/`` with ``save_pretrained``."""
    torch.manual_seed(seed)
    for name in networks:
        net = colorizers.build_model(name, **SMALL_CONFIGS[name])
        # Give the tanh heads a spread of outputs so colour actually varies (a freshly initialised net is
        # close to grey, which would make colour-handling tests vacuous).
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p) * 0.02)
        net.save_pretrained(os.path.join(root, name))
    return str(root)


def chromium_path() -> str:
    """Debian's chromium for browser tests; in CI its absence is a failure, elsewhere a skip."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs Debian's chromium)")
        pytest.skip("chromium not installed")
    return path


def random_image(h: int, w: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_model_results(page, names, timeout_ms: int, screenshot: str) -> None:
    """In the Compare tab: wait for each model's result image, check its label carries the model's title and its
    time, and leave a full-page screenshot in test-artifacts/."""
    for name in names:
        result = page.locator(f"#result-{name}")
        result.locator("img").first.wait_for(timeout=timeout_ms)
        assert result.get_by_text(colorizers.MODEL_TITLES[name]).first.inner_text().endswith(" s")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / screenshot), full_page=True)


def camera_photo(h: int, w: int, seed: int = 0) -> Image.Image:
    """A colour photo-like image (smooth colour ramps and sensor-like noise) of any size: it compresses as a
    photo does, unlike ``random_image``'s noise."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None]
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :]
    rgb = np.stack([np.broadcast_to(y, (h, w)), np.broadcast_to(x, (h, w)), np.broadcast_to((x + y) / 2, (h, w))],
                   -1) + rng.normal(0, 4, (h, w, 3)).astype(np.float32)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def run_memory_child(mode: str, weights: str, models: str, *args, limit_gb: float = 8) -> dict:
    """``tests/memory_child.py``'s ``mode`` in a child process under an address-space limit: its JSON result,
    with the child's peak resident memory in ``peak_mb``."""
    done = subprocess.run([sys.executable, "-m", "tests.memory_child", "--limit-gb", str(limit_gb), mode, weights,
                           models, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])
