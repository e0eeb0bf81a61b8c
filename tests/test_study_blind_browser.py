"""The study as a byte-level reader sees it: a participant takes 21 pairs in headless Chromium while every response
the browser receives is recorded. Each pair must arrive as one image whose two sides share every byte that is not
pixels (one name, one length, one set of headers, no trailing bytes, no metadata, one set of encoder tables), whose
decoded sides differ only in their pixels, and which equals no file in the repository, no re-encoding of the public
photo, and no other served file (a second participant included). Uses the shipped photos of assets/study."""
from __future__ import annotations

import hashlib
import io
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from study.protocol import StudySettings
from study.stimuli import blind_jpeg
from study.store import StudyStore
from tests.helpers import ARTIFACTS, CHROMIUM_ARGS, chromium_path
from tests.study_helpers import MODELS, build, load_models
from tests.test_study import best_match, jpeg_segments, split_pair

ROOT = Path(__file__).resolve().parents[1]
WAIT_MS = 120_000
SERVED = re.compile(r"/gradio_api/file=.*/([0-9a-f]{32})\.jpg$")
ANSWER_LABELS = ["Left, I'm sure", "Right, I'm not sure", "Left, I'm not sure", "Right, I'm sure"]

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def available(random_weights_root):
    return load_models(random_weights_root, MODELS)


def repository_hashes() -> set[str]:
    names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    hashes = set()
    for name in filter(None, names):
        path = ROOT / name.decode()
        if path.is_file():
            hashes.add(hashlib.sha256(path.read_bytes()).hexdigest())
    return hashes


class Recorder:
    """Every response a page receives: URL, status, headers and (for files) the body."""

    def __init__(self, page):
        self.responses: list[dict] = []
        page.on("response", self.record)

    def record(self, response):
        entry = {"url": response.url, "status": response.status, "headers": dict(response.headers), "body": None}
        if "/gradio_api/file=" in response.url:
            try:
                entry["body"] = response.body()
            except Exception as err:  # noqa: BLE001 - recorded, and the test fails on a missing body
                entry["error"] = repr(err)
        self.responses.append(entry)

    def pairs(self) -> list[dict]:
        return [r for r in self.responses if SERVED.search(r["url"].split("?")[0])]


def take_pairs(page, url: str, count: int | None) -> int:
    """Click through the study (or ``count`` pairs of it); returns how many pairs were shown."""
    from playwright.sync_api import expect

    def click(name: str):
        page.get_by_role("button", name=name, exact=True).click()

    page.goto(url)
    expect(page.get_by_text("Can you spot the recoloured photo?")).to_be_visible(timeout=WAIT_MS)
    click("Start, or continue where I left off")
    shown, last_src = 0, None
    for i in range(200):
        if count is not None and shown >= count:
            break
        feedback = page.locator("#study-feedback")
        done = page.get_by_text("You have finished the study")
        img = page.locator("#study-pair img")
        page.wait_for_function(
            "(last) => { const i = document.querySelector('#study-pair img');"
            " const done = document.body.innerText.includes('You have finished the study');"
            " const fb = document.querySelector('#study-feedback');"
            " return done || (fb && fb.offsetParent !== null && fb.innerText.trim()) ||"
            " (i && i.complete && i.naturalWidth > 0 && i.getAttribute('src') !== last); }",
            arg=last_src, timeout=WAIT_MS)
        if done.is_visible():
            break
        if feedback.is_visible() and feedback.inner_text().strip():
            click("Next pair")
            page.wait_for_function("() => !document.querySelector('#study-feedback')?.offsetParent", timeout=WAIT_MS)
            continue
        last_src = img.get_attribute("src")
        shown += 1
        if shown == 3:
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "study-blind-pair.png"), full_page=True)
        click(ANSWER_LABELS[i % len(ANSWER_LABELS)])
    return shown


def test_nothing_but_pixels_tells_the_sides_apart(available, tmp_path):
    from playwright.sync_api import sync_playwright

    executable = chromium_path()
    settings = StudySettings(data_dir=tmp_path / "data", models=MODELS, practice_pairs=1, batches=4,
                             pairs_per_batch=5, bootstrap_samples=100)  # 21 pairs; the shipped photos
    demo, tabs = build(available, settings)
    store = StudyStore(settings.database)
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
            pages = []
            for participant in range(2):
                context = browser.new_context(viewport={"width": 1280, "height": 1000})
                page = context.new_page()
                page.set_default_timeout(WAIT_MS)
                recorder = Recorder(page)
                shown = take_pairs(page, url, None if participant == 0 else 3)
                assert shown == (21 if participant == 0 else 3)
                pages.append(recorder)
                context.close()
            browser.close()
    finally:
        demo.close()

    trials = {t.id: t for pid in _participants(store) for t in store.trials(pid)}
    answered = [r for r in store.answers(phase=None)]
    first = [r for r in answered if r.participant_number == 0]
    assert len(first) == settings.photos_per_participant == 21  # every pair of the whole study was answered

    repo = repository_hashes()
    public_reencodings = {}
    for name in {t.photo for t in trials.values()}:
        with Image.open(settings.photos_dir / name) as photo:
            public_reencodings[name] = photo.convert("RGB")
    public_hashes = {hashlib.sha256(blind_jpeg(image, settings.jpeg_quality)).hexdigest()
                     for image in public_reencodings.values()}
    served_hashes = []
    for recorder, answered_count in zip(pages, (21, 3)):
        pairs = list({r["url"]: r for r in recorder.pairs()}.values())  # each served file once
        assert all(r["status"] == 200 and r["body"] for r in pairs), [r for r in pairs if not r["body"]]
        assert len(pairs) == answered_count  # one composed image per pair shown, nothing else
        for response in pairs:
            body = response["body"]
            # One file for both sides: its name, length, headers, tables and end are common to them by construction.
            assert jpeg_segments(body) == ["SOI", "APP0", "DQT", "DQT", "SOF0", "DHT", "DHT", "DHT", "DHT", "SOS",
                                           "EOI"], response["url"]
            headers = response["headers"]
            assert headers.get("content-type") == "image/jpeg"
            assert int(headers.get("content-length", len(body))) == len(body)
            leaks = " ".join(f"{k}: {v}" for k, v in headers.items()).lower()
            assert not any(m in leaks for m in MODELS) and not any(Path(n).stem in leaks for n in public_reencodings)
            with Image.open(io.BytesIO(body)) as image:
                assert not {"exif", "icc_profile", "comment", "xmp", "photoshop"} & set(image.info), image.info
                left, right = split_pair(image)
            assert left.shape == right.shape  # the sides differ in nothing but their pixels
            assert np.abs(left - right).mean() > 1  # and they do differ (a real pair, not one photo twice)
            served_hashes.append(hashlib.sha256(body).hexdigest())
        # Everything else the page received names no photo and no model.
        for response in recorder.responses:
            text_url = response["url"].lower()
            assert not any(Path(n).stem in text_url for n in public_reencodings), response["url"]
            assert not any(m in text_url for m in MODELS), response["url"]
    assert len(set(served_hashes)) == len(served_hashes)  # no served file equals another (either participant's)
    assert not set(served_hashes) & repo  # nor any file in the repository
    assert not set(served_hashes) & public_hashes  # nor the old blind re-encoding of a public photo

    # The answer key stays on the server, and the pixels match it: on the first participant's pairs, the side
    # closest to the real photo is the one the plan calls real (checked on the last 5 pairs, for time).
    bodies = list({r["url"]: r["body"] for r in pages[0].pairs()}.values())  # in the order they were shown
    assert len(bodies) == 21
    for body, row in list(zip(bodies, sorted(first, key=lambda r: r.position)))[-5:]:
        with Image.open(io.BytesIO(body)) as image:
            left, right = split_pair(image)
        real = np.asarray(public_reencodings[row.photo], dtype=float)
        real_side = "left" if best_match(left, real) < best_match(right, real) else "right"
        assert real_side != row.recoloured_side


def _participants(store: StudyStore) -> list[str]:
    with __import__("contextlib").closing(store._connect()) as con:
        return [r[0] for r in con.execute("SELECT id FROM participants ORDER BY number")]
