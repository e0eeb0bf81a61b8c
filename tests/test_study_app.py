"""The study tabs in a launched Gradio app, driven through Gradio's own event processing (``process_api``, the
path a browser's events take, State and BrowserState included): private events, simultaneous participants with
every answer in the database, resuming after an app restart, what reaches the browser, and the results tab."""
from __future__ import annotations

import asyncio
import csv
import json
import re
import threading

import gradio as gr
import pytest
from gradio.state_holder import SessionState

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

    def __init__(self, demo: gr.Blocks, stored_id: str | None = None, trial_id: str | None = None):
        self.demo, self.session, self.stored_id, self.trial_id = demo, SessionState(demo), stored_id, trial_id
        self.fns = [f for f in demo.fns.values() if f.name in ("start", "answer", "next_pair")]
        self.payloads: list[str] = []

    def _send(self, fn, inputs) -> dict:
        result = asyncio.run(self.demo.process_api(fn, inputs, state=self.session))
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
        (fn,) = [f for f in self.fns if f.name == "start"]
        return self._send(fn, [self.stored_id])

    def answer(self, label: str) -> dict:
        (fn,) = [f for f in self.fns if f.name == "answer" and f.inputs[0].value == label]
        return self._send(fn, [label, self.stored_id, self.trial_id])  # the trial id the page holds

    def next_pair(self) -> dict:
        (fn,) = [f for f in self.fns if f.name == "next_pair"]
        return self._send(fn, [self.stored_id])

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


def _image_name(out: dict, side: str) -> str | None:
    value = out.get(f"study-{side}")
    return value.get("orig_name") if isinstance(value, dict) and "path" in value else None


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
    assert set(tabs.handlers) == {"start", "answer", "next_pair", "show_results"}
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


def test_replayed_answer_is_refused(launched):
    demo, tabs, settings = launched
    browser = Browser(demo)
    browser.start()
    browser.answer("Left, I'm sure")
    pid = browser.stored_id
    trial = StudyStore(settings.database).trials(pid)[0]
    replay = tabs.handlers["answer"]("Right, I'm sure", pid, trial.id)  # e.g. a second tab still on that pair
    assert "already been answered" in replay[3]["value"]
    assert len(StudyStore(settings.database).answers(phase=None)) == 1


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
        same_page = Browser(second, stored_id=page.stored_id, trial_id=page.trial_id)  # a new server session
        out = same_page.answer("Right, I'm not sure")
        assert out["study-progress"]["value"] == "Batch 1 of 2, pair 2 of 2" and not out["study-notice"]["value"]
        replay = Browser(second, stored_id=page.stored_id, trial_id=page.trial_id).answer("Left, I'm sure")
        assert "already been answered" in replay["study-notice"]["value"]
        forged = Browser(second, stored_id=page.stored_id, trial_id="0" * 32).answer("Left, I'm sure")
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
    assert denied[0] == "Wrong password." and denied[1]["visible"] is False and denied[2:] == (None,) * 4

    empty = show("organiser-pw")
    assert "No scored answers yet" in empty[0]

    for labels in (["Left, I'm sure"], ["Right, I'm not sure", "Left, I'm not sure"]):
        browser = Browser(demo)
        browser.finish(browser.start(), labels)
    note, panel, summary, chart, cases, csv_path = show("organiser-pw")
    assert panel["visible"] is True and "8 scored decisions, 10 answers" in note
    assert list(summary["Model"]) == [colorizers.MODEL_TITLES[m] for m in MODELS]
    assert summary["Decisions"].sum() == 8 and set(summary["Participants"]) == {2}
    assert cases[["Case 1", "Case 2", "Case 3", "Case 4"]].to_numpy().sum() == 8
    assert set(cases["Batch"]) == {1, 2}
    assert len(chart.axes[0].patches) == len(MODELS)
    with open(csv_path, newline="") as f:
        raw = list(csv.DictReader(f))
    assert len(raw) == 10 and {r["phase"] for r in raw} == {"practice", "scored"}
