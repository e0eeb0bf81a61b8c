"""A participant takes the realism study in headless Chromium, by clicking: instructions, practice pair with its
answer shown, scored pairs, a page reload in the middle (the study continues), the end. Every click must be in the
database afterwards. Then the organiser
opens the results. Saves test-artifacts/study.png (a pair on screen), study-done.png and study-results.png."""
from __future__ import annotations

import re

import pytest

from study.store import StudyStore
from tests.helpers import ARTIFACTS, CHROMIUM_ARGS, chromium_path
from tests.study_helpers import MODELS, build, load_models, small_settings

WAIT_MS = 90_000  # a shared CPU colouring a pair on first use can be slow
SERVED_SRC = re.compile(r"/[0-9a-f]{32}\.jpg$")

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def available(random_weights_root):
    return load_models(random_weights_root, MODELS)


def test_participant_takes_the_study_by_clicking(available, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    executable = chromium_path()
    settings = small_settings(tmp_path, photos=5, models=MODELS, admin_password="organiser-pw")  # 1 + 2x2 pairs
    demo, _ = build(available, settings)
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True)
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(WAIT_MS)
            progress = page.locator("#study-progress")

            def expect_pair(text: str):
                expect(progress).to_contain_text(text, timeout=WAIT_MS)
                expect(page.locator("#study-pair img")).to_have_attribute("src", SERVED_SRC, timeout=WAIT_MS)
                page.wait_for_function("() => [...document.querySelectorAll('#study-pair img')]"
                                       ".every(i => i.complete && i.naturalWidth > 0)", timeout=WAIT_MS)

            def click(name: str):
                page.get_by_role("button", name=name, exact=True).click()

            page.goto(url)
            expect(page.get_by_text("Can you spot the recoloured photo?")).to_be_visible(timeout=WAIT_MS)
            click("Start, or continue where I left off")
            expect_pair("Practice round (not scored), pair 1 of 1")
            click("Left, I'm sure")
            expect(page.locator("#study-feedback")).to_contain_text("Practice answers are not scored", timeout=WAIT_MS)
            click("Next pair")
            expect_pair("Batch 1 of 2, pair 1 of 2")
            click("Right, I'm not sure")
            expect_pair("Batch 1 of 2, pair 2 of 2")
            page.screenshot(path=str(ARTIFACTS / "study.png"), full_page=True)

            page.reload()  # the participant id is kept in the browser: the study continues
            click("Start, or continue where I left off")
            expect(page.locator("#study-notice")).to_contain_text("answered 2 of 5", timeout=WAIT_MS)
            expect_pair("Batch 1 of 2, pair 2 of 2")
            for name, after in [("Left, I'm not sure", "Batch 2 of 2, pair 1 of 2"),
                                ("Right, I'm sure", "Batch 2 of 2, pair 2 of 2")]:
                click(name)
                expect_pair(after)
            click("Left, I'm sure")
            expect(page.get_by_text("You have finished the study")).to_be_visible(timeout=WAIT_MS)
            page.screenshot(path=str(ARTIFACTS / "study-done.png"), full_page=True)

            page.get_by_role("tab", name="Study results").click()  # the organiser, in the same app
            page.get_by_label("Organiser password").fill("organiser-pw")
            click("Show results")
            expect(page.get_by_text("4 scored decisions, 5 answers in all")).to_be_visible(timeout=WAIT_MS)
            expect(page.locator("#study-chart img")).to_be_visible(timeout=WAIT_MS)
            page.screenshot(path=str(ARTIFACTS / "study-results.png"), full_page=True)
            browser.close()
    finally:
        demo.close()

    rows = sorted(StudyStore(settings.database).answers(phase=None), key=lambda r: r.position)
    assert len({r.participant_id for r in rows}) == 1
    assert [(r.phase, r.choice, r.confident) for r in rows] == [
        ("practice", "left", True), ("scored", "right", False), ("scored", "left", False), ("scored", "right", True),
        ("scored", "left", True)]
