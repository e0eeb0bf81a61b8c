"""Shared fixtures; plain helpers are in ``tests/helpers.py``."""
from __future__ import annotations

import pytest
from PIL import Image

from tests.helpers import write_random_weights


@pytest.fixture(scope="module")
def one_thread():
    """The training tests' tensors are tiny: one intra-op thread is as fast, and much faster on a shared, busy CPU
    where OpenMP threads wait on each other. Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def random_weights_root(tmp_path_factory) -> str:
    return write_random_weights(tmp_path_factory.mktemp("weights"))


@pytest.fixture
def photo() -> Image.Image:
    """A real colour photograph that scikit-image ships (no download), 512x512."""
    from skimage import data
    return Image.fromarray(data.astronaut())


@pytest.fixture(scope="module")
def app_env(tmp_path_factory):
    """No analytics calls, and the realism study pointed at an empty photo folder: its tabs then say it is not set
    up, instead of colouring photos in the background while the Compare tests run."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STUDY_PHOTOS", str(tmp_path_factory.mktemp("no-study-photos")))
        mp.setenv("STUDY_DATA_DIR", str(tmp_path_factory.mktemp("study-data")))
        mp.setenv("GRADIO_ANALYTICS_ENABLED", "False")
        mp.setenv("FORWARDED_ALLOW_IPS", "")  # as app.main launches it: uvicorn does not rewrite client addresses
        yield


@pytest.fixture
def page():
    """A fresh headless Chromium page (Debian's chromium through Playwright; skipped where it is not installed)."""
    from tests.helpers import CHROMIUM_ARGS, chromium_path
    executable = chromium_path()
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1400, "height": 1000})
        finally:
            browser.close()


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    """Four scikit-image photos at 64 x 64 as a folder of PNGs (a training source for tiny runs)."""
    from PIL import Image
    from skimage import data as skdata

    folder = tmp_path_factory.mktemp("photos")
    for i, photo in enumerate([skdata.astronaut, skdata.coffee, skdata.chelsea, skdata.rocket]):
        Image.fromarray(photo()).convert("RGB").resize((64, 64), Image.BICUBIC).save(folder / f"{i}.png")
    return folder
