"""The app as a visitor meets it: started with the README's command (``python app.py``, bundled weights, default
settings), all six models are available, an example photo is coloured by each, and the realism study starts.
Leaves test-artifacts/shipped-compare.png and shipped-study.png (the trained models' real output)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import colorizers
from tests.helpers import ARTIFACTS, free_port, wait_for_model_results

pytestmark = pytest.mark.browser
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    """``python app.py`` in a subprocess, as the README starts it; only the port and the study's data folder (a
    temporary one, so the test leaves no answers behind) are set."""
    port = free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1",
           "GRADIO_ANALYTICS_ENABLED": "False", "STUDY_DATA_DIR": str(tmp_path_factory.mktemp("study"))}
    for name in ("COLORIZERS_WEIGHTS", "STUDY_PHOTOS", "STUDY_MODELS"):
        env.pop(name, None)
    log = open(tmp_path_factory.mktemp("log") / "app.log", "w+")
    process = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    pytest.fail(f"python app.py did not start:\n{log.read()[-3000:]}")
                time.sleep(1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def test_all_six_models_colour_an_example(app_url, page):
    page.goto(app_url)
    status = page.locator("#model-status").inner_text()
    assert "weights: bundled" in status and status.count(": ready") == 6, status
    assert "unavailable" not in status.lower()
    page.get_by_role("button", name="Chelsea", exact=True).click()
    page.locator("#photo img").first.wait_for(timeout=30_000)
    page.locator("#run").click()
    wait_for_model_results(page, colorizers.MODEL_NAMES, 120_000, "shipped-compare.png")


def test_the_realism_study_starts_with_the_bundled_photos(app_url, page):
    page.goto(app_url)
    page.get_by_role("tab", name="Realism study").click()
    start = page.get_by_role("button", name="Start, or continue where I left off")
    start.wait_for(timeout=60_000)
    start.click()  # the first pair's recolouring is computed by the trained models
    page.locator("#study-pair img").first.wait_for(timeout=180_000)  # both sides in one image
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "shipped-study.png"), full_page=True)
