"""The study tabs in a launched Gradio app, driven through Gradio's own event processing (``process_api``, the
path a browser's events take, State and BrowserState included): private events that need a page session,
simultaneous participants with every answer in the database, resuming after an app restart, what reaches the
browser, raw POSTs without a page session, and the results tab with its too-fast flag."""
from __future__ import annotations

import asyncio
import csv
import json
import os
import re
import secrets
import threading
import time

import gradio as gr
import httpx
import pytest
from gradio.state_holder import SessionState
from pathlib import Path
import shutil

import colorizers
from study import tab as study_app
from study.scoring import decision_case
from study.store import StudyStore
from study.tab import ANSWERS
from tests.study_helpers import MODELS, SERVED_NAME, build, load_models, small_settings


@pytest.fixture(scope="module")
def available(random_weights_root):
    return load_models(random_weights_root)


class Browser:
    """One participant's browser tab: sends the study's events through ``demo.process_api`` with its own session
    state, keeps the BrowserState value as the browser's localStorage would and the page's hidden trial id as the
    page would, and reads outputs by elem_id."""

    def __init__(self, demo: gr.Blocks, stored_id: str | None = None, trial_id: str | None = None,
                 page: Browser | None = None, client: str = "127.0.0.1", headers: dict | None = None):
        """``page``: the same page as another Browser's (its session and token), e.g. after an app restart."""
        self.demo, self.session, self.stored_id, self.trial_id = demo, SessionState(demo), stored_id, trial_id
        self.fns = [f for f in demo.fns.values() if f.name in ("open_session", "start", "answer", "next_pair")]
        self.payloads: list[str] = []
        self.request = page.request if page else gr.Request(session_hash=secrets.token_hex(8), client={"host": client},
                                                            headers=headers or {})
        self.token = page.token if page else self._send(self._fn("open_session"), [])["study-session"]

    def _fn(self, name: str):
        (fn,) = [f for f in self.fns if f.name == name]
        return fn

    def _send(self, fn, inputs) -> dict:
        result = asyncio.run(self.demo.process_api(fn, inputs, state=self.session, request=self.request))
        self.payloads.append(json.dumps(result["data"]))
        out = {}
        for component, value in zip(fn.outputs, result["data"]):
            if isinstance(component, gr.BrowserState):
                if isinstance(value, str):  # otherwise skipped: the browser keeps what it stored
                    self.stored_id = value
            elif component.elem_id:
                out[component.elem_id] = value
        if "study-trial" in out:
            self.trial_id = _value(out["study-trial"])
        return out

    def start(self) -> dict:
        return self._send(self._fn("start"), [self.stored_id, self.token])

    def answer(self, label: str) -> dict:
        (fn,) = [f for f in self.fns if f.name == "answer" and f.inputs[0].value == label]
        return self._send(fn, [label, self.stored_id, self.trial_id, self.token])  # the trial id the page holds

    def next_pair(self) -> dict:
        return self._send(self._fn("next_pair"), [self.stored_id, self.token])

    def finish(self, out: dict, labels) -> dict:
        """Answer until the end, picking ``labels`` in turn; goes on after practice feedback."""
        for i in range(100):
            if _visible(out.get("study-done")):
                return out
            if out.get("study-feedback"):
                out = self.next_pair()
            else:
                out = self.answer(labels[i % len(labels)])
        raise AssertionError("the study did not end")


def _value(update):
    return update.get("value") if isinstance(update, dict) and "__type__" in update else update


def _visible(update) -> bool:
    return isinstance(update, dict) and update.get("visible") is True




@pytest.fixture
def launched(available, tmp_path):
    settings = small_settings(tmp_path, photos=5, models=MODELS, admin_password="organiser-pw")
    demo, tabs = build(available, settings)
    demo.launch(prevent_thread_lock=True, quiet=True)
    try:
        yield demo, tabs, settings
    finally:
        demo.close()


def test_study_events_are_private(launched):
    demo, tabs, _ = launched
    assert set(tabs.handlers) == {"open_session", "start", "answer", "next_pair", "show_results"}
    registered = {f.fn: f for f in demo.fns.values()}
    for handler in tabs.handlers.values():
        assert registered[handler].api_visibility == "private"
    assert all(f.api_visibility == "private" for f in demo.fns.values())
    assert demo.get_api_info()["named_endpoints"] == {}


def test_simultaneous_participants_end_to_end(launched):
    demo, tabs, settings = launched
    photo_stems = [p.stem for p in settings.photos_dir.iterdir()]
    browsers = [Browser(demo) for _ in range(4)]
    labels = list(ANSWERS)
    errors = []

    def participate(i: int, browser: Browser):
        try:
            out = browser.start()
            assert out["study-progress"]["value"].startswith("Practice round")
            browser.finish(out, labels[i:] + labels[:i])
        except BaseException as err:  # reported in the main thread
            errors.append(err)

    threads = [threading.Thread(target=participate, args=(i, b)) for i, b in enumerate(browsers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors

    rows = StudyStore(settings.database).answers(phase=None)
    ids = {b.stored_id for b in browsers}
    assert len(ids) == 4 and {r.participant_id for r in rows} == ids
    assert len(rows) == 4 * settings.photos_per_participant
    assert len({r.trial_id for r in rows}) == len(rows)
    for b in browsers:  # each participant's rows: all their pairs, in order, cases as they answered
        mine = sorted((r for r in rows if r.participant_id == b.stored_id), key=lambda r: r.position)
        assert [r.position for r in mine] == list(range(settings.photos_per_participant))
        for r in mine:
            assert r.case_number == decision_case(r.choice == r.recoloured_side, r.confident)

    # What reached the browsers: random file names, and no model, photo or answer key in any pair's payload.
    for b in browsers:
        for payload in b.payloads:
            for name in re.findall(r'"orig_name": "([^"]+)"', payload):
                assert SERVED_NAME.match(name), name
            if '"orig_name"' in payload:  # a new pair was sent
                lowered = payload.lower()
                assert not any(m in lowered for m in colorizers.MODEL_NAMES), payload
                assert not any(stem in lowered for stem in photo_stems), payload
                assert not re.search(r"real|recolou?r|fake|correct|model|weights", lowered), payload
    config = json.dumps(demo.get_config_file(), default=str)
    assert not any(stem in config for stem in photo_stems)


def test_a_resent_answer_is_taken_as_the_stored_one(launched):
    demo, tabs, settings = launched
    browser = Browser(demo)
    browser.start()
    practice = browser.trial_id
    feedback = browser.answer("Left, I'm sure")["study-feedback"]
    browser.trial_id = practice  # the reply was lost in a crash: the page still shows the practice pair
    out = browser.answer("Right, I'm sure")  # and the participant clicks again
    assert out["study-feedback"] == feedback and not out["study-notice"]["value"]
    out = browser.next_pair()
    first = browser.trial_id
    browser.answer("Right, I'm not sure")
    browser.trial_id = first
    out = browser.answer("Left, I'm sure")  # resent: no "already answered", just the next pair
    assert out["study-progress"]["value"] == "Batch 1 of 2, pair 2 of 2" and not out["study-notice"]["value"]
    rows = sorted(StudyStore(settings.database).answers(phase=None), key=lambda r: r.position)
    assert [(r.choice, r.confident) for r in rows] == [("left", True), ("right", False)]


def _queue_call(url: str, fn_index: int, data: list, session_hash: str) -> dict:
    """A raw POST to Gradio's queue, as a script would send it, and the event's final message."""
    with httpx.Client(base_url=url, timeout=60) as http:
        joined = http.post("/gradio_api/queue/join", json={"data": data, "fn_index": fn_index, "trigger_id": None,
                                                             "session_hash": session_hash, "event_data": None})
        joined.raise_for_status()
        with http.stream("GET", "/gradio_api/queue/data", params={"session_hash": session_hash}) as stream:
            for line in stream.iter_lines():
                if line.startswith("data:"):
                    message = json.loads(line[5:])
                    if message.get("msg") == "process_completed":
                        return message
    raise AssertionError("no reply")


def test_a_raw_post_without_a_page_session_is_refused(available, tmp_path):
    settings = small_settings(tmp_path, photos=5, models=MODELS)
    demo, tabs = build(available, settings)
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True)
    try:
        index = {f.name: i for i, f in demo.fns.items()}
        for token in (None, "", "1700000000.0123456789abcdef0123456789abcdef", 7):
            reply = _queue_call(url, index["start"], [None, token], secrets.token_hex(8))
            assert reply["success"] is False and "no valid study session" in reply["output"]["error"], reply
        # A token is bound to the session it was issued to: another session cannot use it.
        page = secrets.token_hex(8)
        issued = _queue_call(url, index["open_session"], [], page)["output"]["data"][0]
        stolen = _queue_call(url, index["start"], [None, issued], secrets.token_hex(8))
        assert stolen["success"] is False
        assert not StudyStore(settings.database).trials_count()
        started = _queue_call(url, index["start"], [None, issued], page)  # what the page itself does
        assert started["success"] is True and StudyStore(settings.database).trials_count() > 0
        unknown = [i for i, f in demo.fns.items() if f.name == "answer"][0]
        wrong = _queue_call(url, unknown, ["Middle, I'm sure", None, None, issued], page)
        assert wrong["success"] is False and "not one of the four answers" in wrong["output"]["error"]
    finally:
        demo.close()


def test_stale_pair_folders_are_removed_at_start_up(available, tmp_path):
    from gradio.utils import get_upload_folder
    cache = Path(get_upload_folder())
    dead = cache / "study-999999999-0a"  # a process that no longer runs
    legacy = cache / "study-x1y2z3"  # an earlier version's folder
    alive = cache / f"study-{os.getpid()}-0b"  # this process's, e.g. another app in it
    for folder in (dead, legacy, alive):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "pair.jpg").write_bytes(b"x")
    build(available, small_settings(tmp_path, photos=5, models=MODELS))
    assert not dead.exists() and not legacy.exists() and alive.exists()
    shutil.rmtree(alive)


def test_participant_continues_after_an_app_restart(available, tmp_path):
    settings = small_settings(tmp_path, photos=5, models=MODELS)
    first, _ = build(available, settings)
    first.launch(prevent_thread_lock=True, quiet=True)
    browser = Browser(first)
    out = browser.start()
    out = browser.answer("Left, I'm sure")
    assert out["study-feedback"]
    out = browser.next_pair()
    out = browser.answer("Right, I'm not sure")
    assert out["study-progress"]["value"] == "Batch 1 of 2, pair 2 of 2"
    first.close()

    second, _ = build(available, settings)  # the restarted app, on the same data
    second.launch(prevent_thread_lock=True, quiet=True)
    try:
        (old_state,) = [c for c in first.blocks.values() if isinstance(c, gr.BrowserState)]
        (new_state,) = [c for c in second.blocks.values() if isinstance(c, gr.BrowserState)]
        assert (new_state.secret, new_state.storage_key) == (old_state.secret, old_state.storage_key)
        again = Browser(second, stored_id=browser.stored_id)  # the id kept in the browser
        out = again.start()
        assert "answered 2 of 5" in out["study-notice"]["value"]
        assert out["study-progress"]["value"] == "Batch 1 of 2, pair 2 of 2"
        again.finish(out, ["Left, I'm not sure"])
        assert again.start()["study-done"]["visible"]  # coming back after the end changes nothing
    finally:
        second.close()
    rows = StudyStore(settings.database).answers(phase=None)
    assert len(rows) == settings.photos_per_participant and {r.participant_id for r in rows} == {browser.stored_id}


def test_the_pair_on_screen_is_answered_after_an_app_restart(available, tmp_path):
    settings = small_settings(tmp_path, photos=5, models=MODELS)
    first, _ = build(available, settings)
    first.launch(prevent_thread_lock=True, quiet=True)
    page = Browser(first)
    page.start()
    page.answer("Left, I'm sure")
    out = page.next_pair()
    assert out["study-progress"]["value"] == "Batch 1 of 2, pair 1 of 2" and page.trial_id
    first.close()

    second, _ = build(available, settings)  # restarted on the same data while the page stays open
    second.launch(prevent_thread_lock=True, quiet=True)
    try:
        same_page = Browser(second, stored_id=page.stored_id, trial_id=page.trial_id, page=page)  # same page
        out = same_page.answer("Right, I'm not sure")
        assert out["study-progress"]["value"] == "Batch 1 of 2, pair 2 of 2" and not out["study-notice"]["value"]
        replay = Browser(second, stored_id=page.stored_id, trial_id=page.trial_id, page=page).answer("Left, I'm sure")
        assert replay["study-progress"]["value"] == "Batch 1 of 2, pair 2 of 2" and not replay["study-notice"]["value"]
        forged = Browser(second, stored_id=page.stored_id, trial_id="0" * 32, page=page).answer("Left, I'm sure")
        assert "expired" in forged["study-notice"]["value"]
    finally:
        second.close()
    rows = sorted(StudyStore(settings.database).answers(phase=None), key=lambda r: r.position)
    assert [(r.phase, r.choice, r.confident) for r in rows] == [("practice", "left", True), ("scored", "right", False)]


def test_study_without_models_says_why(tmp_path):
    demo, tabs = build({}, small_settings(tmp_path))
    assert tabs.study is None and "No trained model is available" in tabs.problem
    assert "No trained model is available" in json.dumps(demo.get_config_file(), default=str)
    assert "start" not in tabs.handlers


def test_results_are_locked_without_a_password(available, tmp_path):
    demo, tabs = build(available, small_settings(tmp_path, photos=5, models=MODELS))
    assert "show_results" not in tabs.handlers
    assert "STUDY_ADMIN_PASSWORD" in json.dumps(demo.get_config_file(), default=str)


def test_results_need_the_password(launched, monkeypatch):
    demo, tabs, settings = launched
    monkeypatch.setattr(study_app, "WRONG_PASSWORD_DELAY_S", 0)
    show = tabs.handlers["show_results"]
    denied = show("organiser-pX")
    assert denied[0] == "Wrong password." and denied[1]["visible"] is False and denied[2:] == (None,) * 5

    empty = show("organiser-pw")
    assert "No scored answers yet" in empty[0]

    for labels in (["Left, I'm sure"], ["Right, I'm not sure", "Left, I'm not sure"]):
        browser = Browser(demo)
        browser.finish(browser.start(), labels)
    note, panel, summary, flagged, chart, cases, csv_path = show("organiser-pw", False)
    assert panel["visible"] is True and "8 scored decisions, 10 answers" in note
    assert list(summary["Model"]) == [colorizers.MODEL_TITLES[m] for m in MODELS]
    assert summary["Decisions"].sum() == 8 and set(summary["Participants"]) == {2}
    assert cases[["Case 1", "Case 2", "Case 3", "Case 4"]].to_numpy().sum() == 8
    assert set(cases["Batch"]) == {1, 2}
    assert len(chart.axes[0].patches) == len(MODELS)
    with open(csv_path, newline="") as f:
        raw = list(csv.DictReader(f))
    assert len(raw) == 10 and {r["phase"] for r in raw} == {"practice", "scored"}
    assert str(settings.data_dir) not in note and str(tmp_path_of(settings)) not in note  # no server paths


def tmp_path_of(settings):
    return settings.data_dir.parent


def test_too_fast_participants_are_flagged_and_can_be_left_out(launched, monkeypatch):
    demo, tabs, settings = launched
    monkeypatch.setattr(study_app, "WRONG_PASSWORD_DELAY_S", 0)
    human, bot = Browser(demo), Browser(demo)
    out = human.start()
    for _ in range(settings.photos_per_participant):  # a person looks at each pair for a while
        time.sleep(0.35)
        out = human.next_pair() if out.get("study-feedback") else human.answer("Left, I'm not sure")
        if out.get("study-feedback"):
            out = human.next_pair()
    out = bot.start()  # answers in milliseconds, always picking the real photo (as a bot reading a leak would)
    store = StudyStore(settings.database)
    while not _visible(out.get("study-done")):
        if out.get("study-feedback"):
            out = bot.next_pair()
            continue
        (trial,) = [t for t in store.trials(bot.stored_id) if t.id == bot.trial_id]
        out = bot.answer("Right, I'm sure" if trial.recoloured_side == "left" else "Left, I'm sure")
    rows = StudyStore(settings.database).answers()
    mine = {b.stored_id: [r for r in rows if r.participant_id == b.stored_id] for b in (human, bot)}
    assert min(r.response_ms for r in mine[human.stored_id]) >= 300
    assert max(r.response_ms for r in mine[bot.stored_id]) < 300

    def fooling(rows):
        return sum((0, 0.25, 0.75, 1)[r.case_number - 1] for r in rows) / len(rows)

    note, _, summary, flagged, _, cases, csv_path = tabs.handlers["show_results"]("organiser-pw", False)
    assert "1 participant(s) flagged" in note and "counted in the scores" in note
    assert list(flagged["Participant"]) == [bot.stored_id]
    assert summary["Decisions"].sum() == 8 and cases["Decisions"].sum() == 8
    everyone = fooling(rows)
    note, _, summary, flagged, _, cases, _ = tabs.handlers["show_results"]("organiser-pw", True)
    assert "left out" in note and summary["Decisions"].sum() == 4 and cases["Decisions"].sum() == 4
    only_human = fooling(mine[human.stored_id])
    weighted = (summary["Fooling score"] * summary["Decisions"]).sum() / summary["Decisions"].sum()
    assert weighted == pytest.approx(only_human, abs=1e-3)
    assert fooling(mine[bot.stored_id]) == 1.0, mine[bot.stored_id]
    assert only_human < everyone, (only_human, everyone)  # the bot raised the score
    with open(csv_path, newline="") as f:
        raw = list(csv.DictReader(f))
    assert len(raw) == 10  # every raw answer stays in the CSV, with the flag
    assert {r["participant_id"]: r["flagged_fast"] for r in raw} == {human.stored_id: "0", bot.stored_id: "1"}


def test_made_up_forwarded_addresses_do_not_start_more_participants(available, tmp_path, monkeypatch):
    """The starts-per-hour limit counts the connection's address (no trusted proxy): a script that writes another
    made-up X-Forwarded-For address on every page still starts no more than the limit."""
    monkeypatch.delenv("COLORIZERS_TRUSTED_PROXIES", raising=False)
    monkeypatch.delenv("SPACE_ID", raising=False)
    settings = small_settings(tmp_path, photos=5, models=MODELS, starts_per_hour=2)
    demo, tabs = build(available, settings)
    demo.launch(prevent_thread_lock=True, quiet=True)
    try:
        notices = [Browser(demo, client="198.51.100.7", headers={"x-forwarded-for": f"10.9.{i}.1"}).start()
                   for i in range(4)]
    finally:
        demo.close()
    assert [bool(_value(n["study-trial"])) for n in notices] == [True, True, False, False]
    assert all("Too many new participants" in n["study-notice"]["value"] for n in notices[2:])
    assert len({r.participant_id for r in StudyStore(settings.database).answers(phase=None)}) == 0
    assert StudyStore(settings.database).trials_count() == 2 * settings.photos_per_participant
