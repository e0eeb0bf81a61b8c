"""The study tabs in a launched Gradio app, driven through Gradio's own event processing (``process_api``, the
path a browser's events take, State and BrowserState included): private events that need a page session,
simultaneous participants with every answer in the database, resuming after an app restart, what reaches the
browser, raw POSTs without a page session, and the results tab with its too-fast flag."""
from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import re
import secrets
import sqlite3
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


def read_outputs(page, outputs, data) -> dict:
    """A study event's reply as the page sees it: the BrowserState value kept as the browser's localStorage would
    (a non-string value is skipped: the browser keeps what it stored), the hidden trial id as the page would, and the
    other outputs by elem_id."""
    out = {}
    for component, value in zip(outputs, data):
        if isinstance(component, gr.BrowserState):
            if isinstance(value, str):
                page.stored_id = value
        elif component.elem_id:
            out[component.elem_id] = value
    if "study-trial" in out:
        page.trial_id = _value(out["study-trial"])
    return out


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
        return read_outputs(self, fn.outputs, result["data"])

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


def _queue_call(url: str, fn_index: int, data: list, session_hash: str, headers: dict | None = None) -> dict:
    """A raw POST to Gradio's queue, as a script would send it, and the event's final message."""
    with httpx.Client(base_url=url, timeout=60, headers=headers) as http:
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


def show(tabs, *args):
    """The results tab's handler (a coroutine function: wrong guesses wait without holding a thread)."""
    return asyncio.run(tabs.handlers["show_results"](*args))


def test_results_need_the_password(launched, monkeypatch):
    demo, tabs, settings = launched
    monkeypatch.setattr(study_app, "WRONG_PASSWORD_DELAY_S", 0)
    denied = show(tabs, "organiser-pX")
    assert denied[0] == "Wrong password." and denied[1]["visible"] is False and denied[2:] == (None,) * 6

    empty = show(tabs, "organiser-pw")
    assert "No scored answers yet" in empty[0]

    for labels in (["Left, I'm sure"], ["Right, I'm not sure", "Left, I'm not sure"]):
        browser = Browser(demo)
        browser.finish(browser.start(), labels)
    note, panel, summary, in_and_out, flagged, chart, cases, csv_text = show(tabs, "organiser-pw", [])
    assert panel["visible"] is True and "8 scored decisions, 10 answers" in note
    assert list(summary["Model"]) == [colorizers.MODEL_TITLES[m] for m in MODELS]
    assert summary["Decisions"].sum() == 8 and set(summary["Participants"]) == {2}
    assert cases[["Case 1", "Case 2", "Case 3", "Case 4"]].to_numpy().sum() == 8
    assert set(cases["Batch"]) == {1, 2}
    assert len(chart.axes[0].patches) == len(MODELS)
    raw = list(csv.DictReader(io.StringIO(csv_text)))
    assert len(raw) == 10 and {r["phase"] for r in raw} == {"practice", "scored"}
    assert str(settings.data_dir) not in note and str(tmp_path_of(settings)) not in note  # no server paths


def test_the_csv_is_never_a_file_in_the_public_cache(launched, monkeypatch):
    """Gradio serves the files in its cache to anyone with their link; the CSV reaches only the organiser, in the
    reply to the password-checked event."""
    from gradio.utils import get_upload_folder
    demo, tabs, settings = launched
    browser = Browser(demo)
    browser.finish(browser.start(), ["Left, I'm sure"])
    csv_text = show(tabs, "organiser-pw")[-1]
    assert csv_text.startswith("participant_id,") and browser.stored_id in csv_text
    cached = [p for p in Path(get_upload_folder()).rglob("*") if p.is_file()]
    assert not [p for p in cached if p.suffix == ".csv" or browser.stored_id in p.read_bytes().decode("latin-1")]


def test_wrong_guesses_do_not_hold_up_the_organiser(launched, monkeypatch):
    """Each wrong password still costs its sender the delay, but guesses wait side by side, off any shared queue
    and without holding a worker thread: the organiser's right one, sent with ten wrong ones, does not wait for
    them (one at a time, as before, it came back after all ten delays: 10 s and more)."""
    monkeypatch.setattr(study_app, "WRONG_PASSWORD_DELAY_S", 1.0)
    demo, tabs, settings = launched
    (event,) = [f for f in demo.fns.values() if f.name == "show_results"]
    assert event.concurrency_limit is None  # Gradio's queue runs every guess at once
    handler = tabs.handlers["show_results"]

    async def together():
        started = time.monotonic()

        async def timed(password):
            reply = await handler(password, [], "")
            return time.monotonic() - started, reply[0]
        return await asyncio.gather(*(timed(f"guess-{i}") for i in range(10)), timed("organiser-pw"))

    *wrong, (took, note) = asyncio.run(together())
    assert "No scored answers yet" in note and took < 1.0, (took, note)
    assert all(reply == "Wrong password." and 1.0 <= t < 3.0 for t, reply in wrong), wrong


def tmp_path_of(settings):
    return settings.data_dir.parent


class Clock:
    """The study's clock in a test: it moves only when told to."""

    def __init__(self):
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def test_a_bot_answering_every_0_35_s_is_flagged_and_can_be_left_out(launched, monkeypatch):
    demo, tabs, settings = launched
    clock = tabs.study.clock = Clock()
    human, bot = Browser(demo), Browser(demo)
    out = human.start()
    for wait in (2.1, 4.8, 3.0, 9.5, 2.6):  # a person looks at each pair for a few seconds
        clock.now += wait
        out = human.answer("Left, I'm not sure")
        if out.get("study-feedback"):
            out = human.next_pair()
    assert _visible(out.get("study-done"))
    out = bot.start()  # waits 0.35 s per pair, always picking the real photo (to push the scores up)
    store = StudyStore(settings.database)
    while not _visible(out.get("study-done")):
        if out.get("study-feedback"):
            out = bot.next_pair()
            continue
        (trial,) = [t for t in store.trials(bot.stored_id) if t.id == bot.trial_id]
        clock.now += 0.35
        out = bot.answer("Right, I'm sure" if trial.recoloured_side == "left" else "Left, I'm sure")
    rows = StudyStore(settings.database).answers()
    mine = {b.stored_id: [r for r in rows if r.participant_id == b.stored_id] for b in (human, bot)}
    assert min(r.response_ms for r in mine[human.stored_id]) >= 2000
    assert {r.response_ms for r in mine[bot.stored_id]} == {350}

    def fooling(rows):
        return sum((0, 0.25, 0.75, 1)[r.case_number - 1] for r in rows) / len(rows)

    note, _, summary, in_and_out, people, _, cases, csv_text = show(tabs, "organiser-pw", [])
    assert "1 participant(s) flagged" in note and "none is left out" in note
    assert "A pilot: these scores are unprotected" in note  # no sign-in
    flagged = people[people["Flags"] != ""]
    assert list(flagged["Participant"]) == [bot.stored_id] and "too fast (median 350 ms" in flagged["Flags"].iloc[0]
    assert list(people["Participant"]) == [bot.stored_id, human.stored_id]  # the flagged first
    assert list(people["Left out"]) == ["no", "no"]
    assert summary["Decisions"].sum() == 8 and cases["Decisions"].sum() == 8
    everyone = fooling(rows)
    note, _, summary, in_and_out_again, people, _, cases, _ = show(tabs, "organiser-pw", ["fast"])
    assert "1 of them are left out" in note and summary["Decisions"].sum() == 4 and cases["Decisions"].sum() == 4
    assert list(people["Left out"]) == ["yes", "no"]
    only_human = fooling(mine[human.stored_id])
    weighted = (summary["Fooling score"] * summary["Decisions"]).sum() / summary["Decisions"].sum()
    assert weighted == pytest.approx(only_human, abs=1e-3)
    assert fooling(mine[bot.stored_id]) == 1.0, mine[bot.stored_id]
    assert only_human < everyone, (only_human, everyone)  # the bot raised the score
    # The scores with the flagged in and out, side by side, whatever is left out of the main table.
    assert in_and_out.equals(in_and_out_again)
    for col, source in (("Everyone", rows), ("Flagged left out", mine[human.stored_id])):
        weighted = (in_and_out[col] * in_and_out[col.replace("Everyone", "Decisions (everyone)").replace(
            "Flagged left out", "Decisions (flagged left out)")]).sum()
        assert weighted / len(source) == pytest.approx(fooling(source), abs=1e-3)
    raw = list(csv.DictReader(io.StringIO(csv_text)))
    assert len(raw) == 10  # every raw answer stays in the CSV, with the flags
    assert {r["participant_id"]: r["flagged_fast"] for r in raw} == {human.stored_id: "0", bot.stored_id: "1"}
    assert {r["participant_id"]: r["flags"] for r in raw} == {human.stored_id: "", bot.stored_id: "fast"}


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


# ------------------------------------------------------------------------------------------------------ sign-in


class SignedInPage:
    """A study page driven over HTTP like a browser: Gradio's sign-in routes (mocked off a Space, as Gradio does
    for local runs: no call to huggingface.co) set the session cookie, and every study event goes through the
    queue with it."""

    def __init__(self, demo: gr.Blocks, userinfo: dict | None, account: dict | None = None):
        self.url, self.demo = demo.local_url, demo
        self.index = {}
        for i, f in demo.fns.items():
            self.index.setdefault(f.name, i)
        self.answers = {f.inputs[0].value: i for i, f in demo.fns.items() if f.name == "answer"}
        self.headers = {}
        if account is not None:
            userinfo.clear()
            userinfo.update(account)
            with httpx.Client(base_url=self.url, timeout=30) as http:
                login = http.get("/login/huggingface")
                assert login.status_code in (302, 307), login
                callback = http.get(login.headers["location"])
                assert callback.status_code in (302, 307), callback
                # The cookie is marked Secure (a Space is served over https); this test server is plain http.
                self.headers = {"cookie": f"session={callback.cookies['session']}"}
        self.session = secrets.token_hex(8)
        self.stored_id = self.trial_id = None
        self.token = self._call("open_session", [])[0]

    def _call(self, name, data, index=None):
        reply = _queue_call(self.url, self.index[name] if index is None else index, data, self.session, self.headers)
        assert reply["success"], reply
        return reply["output"]["data"]

    def _screen(self, data) -> dict:
        outputs = self.demo.fns[self.index["start"]].outputs
        return read_outputs(self, outputs, data)

    def start(self) -> dict:
        return self._screen(self._call("start", [self.stored_id, self.token]))

    def answer(self, label: str) -> dict:
        return self._screen(self._call("answer", [label, self.stored_id, self.trial_id, self.token],
                                       self.answers[label]))

    def next_pair(self) -> dict:
        return self._screen(self._call("next_pair", [self.stored_id, self.token]))


def _notice(out: dict) -> str:
    return (_value(out.get("study-notice")) or "") if isinstance(out.get("study-notice"), (dict, str)) else ""


@pytest.fixture
def mocked_hub_sign_in(monkeypatch):
    """Gradio's local OAuth mock, with a profile of the test's choosing instead of the machine's Hub login."""
    from gradio import oauth
    userinfo: dict = {}
    monkeypatch.setattr(oauth, "_get_mocked_oauth_info", lambda: {
        "access_token": "mock-oauth-token", "token_type": "bearer", "expires_in": 3600, "id_token": "x",
        "scope": "openid profile", "expires_at": int(time.time()) + 3600, "userinfo": userinfo})
    return userinfo


def _account(name: str, sub: str) -> dict:
    return {"sub": sub, "name": name.title(), "preferred_username": name, "profile": f"https://huggingface.co/{name}",
            "picture": "", "website": "", "aud": "x", "auth_time": 0}


def test_signed_in_accounts_take_part_once(available, tmp_path, mocked_hub_sign_in, monkeypatch):
    """With sign-in on: no study without signing in; an account that comes back (another browser, another
    session, its old participant id forgotten) continues its one participation and, once done, starts nothing
    new; the account, not a typed name, is stored with the answers; the organiser sees the accounts and can leave
    one out."""
    monkeypatch.setattr(study_app, "WRONG_PASSWORD_DELAY_S", 0)
    settings = small_settings(tmp_path, photos=5, models=MODELS, sign_in=True, admin_password="organiser-pw")
    demo, tabs = build(available, settings)
    assert any(isinstance(block, gr.LoginButton) for block in demo.blocks.values())
    demo.launch(prevent_thread_lock=True, quiet=True)
    try:
        anonymous = SignedInPage(demo, mocked_hub_sign_in)
        out = anonymous.start()
        assert "sign in with your Hugging Face account" in _notice(out) and anonymous.stored_id is None
        assert StudyStore(settings.database).trials_count() == 0

        ada = SignedInPage(demo, mocked_hub_sign_in, _account("ada", "1001"))
        out = ada.start()
        assert _value(out["study-progress"]).startswith("Practice round")
        ada.answer("Left, I'm sure")
        out = ada.next_pair()
        ada.answer("Right, I'm not sure")
        first_id = ada.stored_id

        again = SignedInPage(demo, mocked_hub_sign_in, _account("ada", "1001"))  # another browser, same account
        out = again.start()
        assert again.stored_id == first_id and "answered 2 of 5" in _notice(out)
        for _ in range(10):
            if _visible(out.get("study-done")):
                break
            out = again.next_pair() if out.get("study-feedback") else again.answer("Left, I'm not sure")
        assert _visible(out.get("study-done"))
        third = SignedInPage(demo, mocked_hub_sign_in, _account("ada", "1001"))
        assert _visible(third.start().get("study-done")) and third.stored_id == first_id  # a second go: nothing new

        bob = SignedInPage(demo, mocked_hub_sign_in, _account("bob", "2002"))
        bob.stored_id = first_id  # a page that sends ada's participant id is still bob's own participation
        out = bob.start()
        assert bob.stored_id != first_id and "answered" not in _notice(out)
        bob.answer("Right, I'm sure")
        bob.next_pair()
        bob.answer("Left, I'm not sure")  # bob's first scored answer
    finally:
        demo.close()
    store = StudyStore(settings.database)
    rows = store.answers(phase=None)
    assert {r.participant_id: r.account for r in rows} == {first_id: "ada", bob.stored_id: "bob"}
    assert len([r for r in rows if r.account == "ada"]) == settings.photos_per_participant
    assert store.participant_of("hf:1001") == first_id and store.participant_of("hf:2002") == bob.stored_id
    with sqlite3.connect(settings.database) as con:
        assert con.execute("SELECT COUNT(*) FROM participants").fetchone()[0] == 2
    note, _, summary, _, people, _, _, csv_text = show(tabs, "organiser-pw", [], "")
    assert "sign in with a Hugging Face account and take part once each" in note and "unprotected" not in note
    assert dict(zip(people["Account"], people["Participant"])) == {"ada": first_id, "bob": bob.stored_id}
    assert summary["Decisions"].sum() == 5
    note, _, summary, _, people, _, _, _ = show(tabs, "organiser-pw", [], "bob")
    assert "1 participant(s) you named" in note and summary["Decisions"].sum() == 4
    assert dict(zip(people["Account"], people["Left out"])) == {"ada": "no", "bob": "yes"}
    assert {r["account"] for r in csv.DictReader(io.StringIO(csv_text))} == {"ada", "bob"}


def test_a_pilot_without_sign_in_says_its_scores_are_unprotected(launched):
    demo, tabs, settings = launched
    assert not any(isinstance(block, gr.LoginButton) for block in demo.blocks.values())
    assert "A pilot: these scores are unprotected" in show(tabs, "organiser-pw")[0]
