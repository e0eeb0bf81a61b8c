"""The Compare tab in headless Chromium: upload a photo, press Colorize, see every available model's result.
Leaves a screenshot in test-artifacts/compare.png (random-initialised weights: the colours mean nothing)."""
from __future__ import annotations


import pytest

import colorizers
from tests.helpers import ARTIFACTS, free_port, wait_for_model_results

import app


pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def app_url(app_env, random_weights_root):
    available, unavailable = colorizers.load_colorizers(source=random_weights_root)
    demo = app.build_demo(available, unavailable, app.Settings(weights=random_weights_root))
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(), quiet=True)
    try:
        yield url
    finally:
        demo.close()


def test_compare_shows_every_model_result(app_url, page, photo, tmp_path):
    upload = tmp_path / "astronaut.png"
    photo.crop((0, 0, 512, 384)).save(upload)
    page.goto(app_url)
    page.locator("#photo input[type=file]").set_input_files(str(upload))
    page.locator("#photo img").first.wait_for(timeout=30_000)
    page.locator("#run").click()

    wait_for_model_results(page, colorizers.MODEL_NAMES, 60_000, "compare.png")

    assert page.locator("#slider img").count() == 2
    assert page.locator("#download a[href$='/astronaut-colorized.zip']").count() == 1
    assert "converting the photo to lightness" in page.locator("#summary").inner_text()


def test_an_example_with_some_models_and_the_slider_choice(app_url, page):
    page.goto(app_url)
    page.get_by_role("button", name="Camera", exact=True).click()
    page.locator("#photo img").first.wait_for(timeout=30_000)
    for name in ("cnn", "paracolorizer_bg"):
        page.locator("#models").get_by_label(colorizers.MODEL_TITLES[name]).uncheck()
    page.locator("#run").click()

    selected = [n for n in colorizers.MODEL_NAMES if n not in ("cnn", "paracolorizer_bg")]
    for name in selected:
        page.locator(f"#result-{name} img").first.wait_for(timeout=60_000)
    assert page.locator("#result-cnn").is_hidden() and page.locator("#result-paracolorizer_bg").is_hidden()
    # a grey photo: no reference table, no original
    assert page.locator("#reference").is_hidden() and page.locator("#result-original").is_hidden()

    before = page.locator("#slider img").nth(1).get_attribute("src")
    assert "camera-cnn_classifier" in before  # the first selected model is shown until another is picked
    page.locator("#slider-model input").click()
    page.get_by_role("option", name=colorizers.MODEL_TITLES["attention_ugan"]).click()
    page.wait_for_function(
        "() => document.querySelectorAll('#slider img')[1].src.includes('camera-attention_ugan')", timeout=30_000)


def test_a_colour_photo_gets_the_reference_table_and_the_original_in_the_slider(app_url, page, photo, tmp_path):
    """Reference mode: a colour upload is scored against itself; the table can be re-sorted and the original is
    a choice of the slider. Leaves test-artifacts/reference-mode.png."""
    from colorizers import reference

    upload = tmp_path / "astronaut.png"
    photo.crop((0, 0, 512, 384)).save(upload)
    page.goto(app_url)
    assert page.locator("#reference").is_hidden()
    page.locator("#photo input[type=file]").set_input_files(str(upload))
    page.locator("#photo img").first.wait_for(timeout=30_000)
    page.locator("#run").click()

    rows = page.locator("#reference-table table tbody tr")
    rows.first.wait_for(timeout=90_000)
    assert rows.count() == len(colorizers.MODEL_NAMES)
    assert page.locator("#reference-table").inner_text().count(reference.BEST_MARK) >= len(reference.METRICS)
    assert "greyish" in page.locator("#reference-note").inner_text()
    assert "This is a colour photo" in page.locator("#summary").inner_text()
    assert page.locator("#result-original img").first.get_attribute("src").endswith("astronaut-original.png")

    # sorted by PSNR first; picking SSIM re-sorts the rows by that column, best first
    def column(index: int) -> list[float]:
        texts = [rows.nth(i).locator("td").nth(index).inner_text() for i in range(rows.count())]
        return [float(text.replace(reference.BEST_MARK, "").strip()) for text in texts]
    assert column(1) == sorted(column(1), reverse=True)
    page.locator("#reference-sort").get_by_label("SSIM", exact=True).check()
    page.wait_for_function(
        """() => { const cells = [...document.querySelectorAll('#reference-table tbody tr td:nth-child(3)')]
                     .map(td => parseFloat(td.innerText));
                   return cells.every((v, i) => i === 0 || cells[i - 1] >= v); }""", timeout=30_000)

    page.locator("#slider-model input").click()
    page.get_by_role("option", name="Original colours (reference)").click()
    page.wait_for_function(
        "() => document.querySelectorAll('#slider img')[1].src.includes('astronaut-original')", timeout=30_000)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "reference-mode.png"), full_page=True)
