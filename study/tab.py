"""The realism study in the Gradio app: a participant tab and an organiser's results tab.

``app.py`` calls ``build_study_tabs(available)`` inside its ``gr.Blocks``. The protocol, scoring and storage
are in ``study.protocol``, ``study.scoring`` and ``study.store``; this module only lays out the screens and wires the
events. Every study event is private (not an API endpoint), and works only from a page session: loading the page
issues a token (an HMAC of the session, with a key kept in the study's data folder) that every study event must
carry. A client may start only so many participants an hour. The browser only ever receives the current pair, as
one composed image under a random name, and the random id of its trial; which side is real stays on the server
until it has been answered.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import logging
import os
import re
import secrets
import shutil
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import anyio
import gradio as gr
import pandas as pd
from gradio.context import Context
from gradio.utils import get_upload_folder
from matplotlib.figure import Figure

from colorizers import MODEL_NAMES, MODEL_TITLES
from colorizers.pipeline import Colorizer
from fairqueue import client_key

from .hub_sync import StudyHubSync, start_hub_sync
from .keys import derived_key
from .protocol import Account, Screen, Study, StudySettings, StudySetupError
from .scoring import FLAG_TITLES, case_table, flag_participants, fooling_score, summarize
from .store import StudyStore

log = logging.getLogger(__name__)

#: The four answer buttons: their label -> (the side picked as recoloured, confident).
ANSWERS = {
    "Left, I'm sure": ("left", True),
    "Left, I'm not sure": ("left", False),
    "Right, I'm not sure": ("right", False),
    "Right, I'm sure": ("right", True),
}
BROWSER_STORAGE_KEY = "colorizers-realism-study"
WRONG_PASSWORD_DELAY_S = 1.0  # slows down guessing
SESSION_MAX_AGE_S = 7 * 24 * 3600  # a page's study session token is valid this long (across app restarts)
NO_SESSION = ("This page has no valid study session (it may be very old, or the request did not come from the "
              "study page). Please reload the page to take part.")
UNKNOWN_ANSWER = "That is not one of the four answers. Please click one of the four buttons under the pair."
SERVE_PREFIX = "study-"
STUDY_EVENTS_AT_ONCE = 4  # study events (each may build a pair) that run at once
BOOTSTRAP_SEED = 0  # the intervals are reproducible; nothing about the plan depends on it


@dataclass
class StudyTabs:
    """What ``build_study_tabs`` built: the running study (None when it cannot run, with ``problem`` saying why)
    and the event handlers it registered, for tests and for embedding."""

    study: Study | None
    problem: str | None
    handlers: dict[str, Callable]
    hub: StudyHubSync | None = None  # the answers' sync with a Hub dataset (STUDY_HUB_DATASET)


def build_study_tabs(available: Mapping[str, Colorizer], settings: StudySettings | None = None) -> StudyTabs:
    """Add the "Realism study" and "Study results" tabs to the enclosing ``gr.Blocks``."""
    settings = settings or StudySettings.from_env()
    cache = Path(get_upload_folder())
    cache.mkdir(parents=True, exist_ok=True)
    remove_stale_serve_dirs(cache)
    # Inside Gradio's cache, so the files are served as named; the owner's process id in the name lets a later
    # start-up tell a dead process's leftovers from a running app's.
    serve_dir = cache / f"{SERVE_PREFIX}{os.getpid()}-{secrets.token_hex(8)}"
    serve_dir.mkdir()
    hub = None
    try:
        hub = start_hub_sync(settings)  # STUDY_HUB_DATASET: restores an empty data folder before serving
        study, problem = Study(settings, available, serve_dir), None
    except StudySetupError as err:
        study, problem = None, str(err)
        log.warning("realism study disabled: %s", problem)
    handlers: dict[str, Callable] = {}
    with gr.Tab("Realism study"):
        if study is None:
            gr.Markdown(f"### The realism study is not available\n\n{problem}")
        else:
            handlers.update(_participant_tab(study))
            study.warm_cache_in_background()
    with gr.Tab("Study results"):
        handlers.update(_results_tab(settings, serve_dir))
    return StudyTabs(study, problem, handlers, hub)


# ------------------------------------------------------------------------------------------------ participant


def _instructions(settings: StudySettings) -> str:
    n = settings.practice_pairs
    practice = (f"You start with **{n} practice pair{'s' if n > 1 else ''}**, whose answers are shown to you and "
                "not counted. Then come " if n else "There are ")
    return f"""### Can you spot the recoloured photo?

Each pair shows the same scene twice. One image is a real colour photograph. The other was made by taking the
colour out of that photo and letting a computer colour it in again. **Click the button that names the
recoloured image** and say whether you are sure.

{practice}**{settings.batches} batch{'es' if settings.batches > 1 else ''} of {settings.pairs_per_batch} pairs**.
Go with your impression; there is no time limit. We store only a random participant id, your answers and how long
each took. If you leave, you can come back in this browser and continue where you stopped."""


def remove_stale_serve_dirs(cache: Path) -> list[Path]:
    """Delete the pair and CSV folders that earlier runs of the app left in Gradio's cache: those of processes
    that no longer run (and of versions that did not name their process). Returns what was removed."""
    removed = []
    for folder in Path(cache).glob(f"{SERVE_PREFIX}*"):
        match = re.fullmatch(rf"{SERVE_PREFIX}(\d+)-[0-9a-f]+", folder.name)
        if match and _process_alive(int(match.group(1))):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _secret(data_dir: Path, name: str) -> str:
    """A random key kept in the study's data folder (created on first use), stable across restarts; derived from
    ``STUDY_SECRET`` instead when that is set (``study.keys``)."""
    derived = derived_key(name)
    if derived:
        return derived
    path = Path(data_dir) / name
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(16))
    return path.read_text().strip()


def _browser_secret(data_dir: Path) -> str:
    """The key of the participant id kept in the browser, stable across restarts so participants can resume."""
    return _secret(data_dir, "browser-state.key")


class SessionTokens:
    """Tokens that tie study events to a page session: ``issue`` when the page loads, ``valid`` on every event.
    A token is the issue time and an HMAC of (Gradio session hash, issue time) with a key from the data folder,
    so it survives an app restart (the page keeps its session hash) and cannot be made without loading the page."""

    def __init__(self, key: str, max_age_s: float = SESSION_MAX_AGE_S):
        self.key, self.max_age_s = key.encode(), max_age_s

    def _mac(self, session_hash: str, issued: int) -> str:
        return hmac.new(self.key, f"{session_hash}/{issued}".encode(), hashlib.sha256).hexdigest()[:32]

    def issue(self, session_hash: str, now: float | None = None) -> str:
        issued = int(time.time() if now is None else now)
        return f"{issued}.{self._mac(session_hash, issued)}"

    def valid(self, token, session_hash, now: float | None = None) -> bool:
        if not isinstance(token, str) or not isinstance(session_hash, str) or not session_hash:
            return False
        issued, _, mac = token.partition(".")
        if not issued.isdigit():
            return False
        age = (time.time() if now is None else now) - int(issued)
        return -60 <= age <= self.max_age_s and hmac.compare_digest(mac, self._mac(session_hash, int(issued)))


def account_of(profile) -> Account | None:
    """The signed-in account of a Gradio ``OAuthProfile`` (from the session Hugging Face's sign-in set; None when
    signed out): its stable id ("sub", which survives a change of user name) and its user name."""
    if not isinstance(profile, dict):
        return None
    name = profile.get("preferred_username")
    account_id = profile.get("sub") or name
    if not isinstance(account_id, str) or not account_id:
        return None
    return Account(f"hf:{account_id}", str(name or account_id)[:100])


def _participant_tab(study: Study) -> dict[str, Callable]:
    participant = gr.BrowserState(None, storage_key=BROWSER_STORAGE_KEY,
                                  secret=_browser_secret(study.settings.data_dir))
    # The id of the trial on screen travels with the page, so an answer given after an app restart still counts.
    # It is a random token that says nothing about the pair; the store accepts an answer only for the
    # participant's current trial.
    trial = gr.Textbox(None, visible=False, elem_id="study-trial")
    # The page's study session token, issued when the page loads (see ``SessionTokens``).
    session = gr.Textbox(None, visible=False, elem_id="study-session")
    tokens = SessionTokens(_secret(study.settings.data_dir, "session-token.key"))
    with gr.Column(visible=True) as intro:
        gr.Markdown(_instructions(study.settings))
        if study.settings.sign_in:  # Gradio then serves Hugging Face's sign-in (OAuth; mocked off a Space)
            gr.LoginButton(elem_id="study-sign-in")
        # Enabled once the page has its study session (the load event below), so no click can come before it.
        start_button = gr.Button("Start, or continue where I left off", variant="primary", interactive=False,
                                 elem_id="study-start")
    notice = gr.Markdown(elem_id="study-notice")
    with gr.Column(visible=False) as pair:
        progress = gr.Markdown(elem_id="study-progress")
        # Both sides in one image (left | right): whatever reaches the browser is common to both sides but pixels.
        pair_image = gr.Image(label="Left  |  Right", elem_id="study-pair", type="filepath", interactive=False,
                              buttons=["fullscreen"], show_label=True, height=520)
    with gr.Column(visible=False) as asking:
        gr.Markdown("**Which image is the recoloured one?**")
        with gr.Row():
            answer_buttons = [gr.Button(label, variant="secondary") for label in ANSWERS]
    with gr.Column(visible=False) as feedback:
        feedback_text = gr.Markdown(elem_id="study-feedback")
        next_button = gr.Button("Next pair", variant="primary")
    with gr.Column(visible=False, elem_id="study-done") as done:
        gr.Markdown("### Thank you!\n\nYou have finished the study. Your answers are saved; you can close this page.")

    outputs = [participant, trial, intro, notice, pair, progress, pair_image, asking, feedback, feedback_text, done]

    def render(screen: Screen) -> tuple:
        shown = screen.kind in ("trial", "feedback")
        return (
            screen.participant_id or gr.skip(),  # never forget the participant kept in the browser
            screen.trial_id,
            gr.update(visible=screen.kind == "intro"),
            gr.update(value=screen.message if screen.kind != "feedback" else ""),
            gr.update(visible=shown),
            gr.update(value=screen.progress) if screen.kind == "trial" else gr.skip(),
            str(screen.pair) if screen.pair else (gr.skip() if shown else None),
            gr.update(visible=screen.kind == "trial"),
            gr.update(visible=screen.kind == "feedback"),
            screen.message if screen.kind == "feedback" else "",
            gr.update(visible=screen.kind == "done"),
        )

    def check(token, request: gr.Request | None, participant_id=None) -> None:
        if not tokens.valid(token, getattr(request, "session_hash", None)):
            raise gr.Error(NO_SESSION, title="Study session", print_exception=False)
        if participant_id is not None and not isinstance(participant_id, str):
            raise gr.Error(NO_SESSION, title="Study session", print_exception=False)

    def open_session(request: gr.Request | None) -> tuple:
        session_hash = getattr(request, "session_hash", None)
        if not session_hash:
            return None, gr.update(interactive=False)
        return tokens.issue(session_hash), gr.update(interactive=True)

    def start(participant_id: str | None, token: str | None, profile: gr.OAuthProfile | None,
              request: gr.Request | None = None) -> tuple:
        check(token, request, participant_id)
        return render(study.start(participant_id, client_key(request), account_of(profile)))

    def answer(label: str, participant_id: str | None, trial_id: str | None, token: str | None,
               profile: gr.OAuthProfile | None, request: gr.Request | None = None) -> tuple:
        check(token, request, participant_id)
        if not isinstance(label, str) or label not in ANSWERS or (trial_id is not None and not isinstance(trial_id, str)):
            raise gr.Error(UNKNOWN_ANSWER, title="Study", print_exception=False)
        side, confident = ANSWERS[label]
        return render(study.answer(participant_id, trial_id, side, confident, account_of(profile)))

    def next_pair(participant_id: str | None, token: str | None, profile: gr.OAuthProfile | None,
                  request: gr.Request | None = None) -> tuple:
        check(token, request, participant_id)
        return render(study.resume(participant_id, account_of(profile)))

    private = dict(api_visibility="private", concurrency_limit=None)
    # Pair-building events run at most STUDY_EVENTS_AT_ONCE at a time; the rest wait in Gradio's queue, so many
    # participants at once cost memory for that many pairs, not for all of theirs.
    pairs = dict(api_visibility="private", concurrency_limit=STUDY_EVENTS_AT_ONCE, concurrency_id="study-pairs")
    Context.root_block.load(open_session, None, [session, start_button], **private)
    start_button.click(start, [participant, session], outputs, **pairs)
    for button in answer_buttons:
        button.click(answer, [button, participant, trial, session], outputs, **pairs)
    next_button.click(next_pair, [participant, session], outputs, **pairs)
    return {"open_session": open_session, "start": start, "answer": answer, "next_pair": next_pair}


# -------------------------------------------------------------------------------------------------- organiser


def _results_tab(settings: StudySettings, serve_dir: Path) -> dict[str, Callable]:
    if not settings.admin_password:
        gr.Markdown("### Study results are locked\n\nThe organiser sets a password in the environment variable "
                    "`STUDY_ADMIN_PASSWORD` (on a Space: Settings, Variables and secrets, New secret) and restarts "
                    "the app; the results are then shown here to whoever enters it.")
        return {}
    password = gr.Textbox(label="Organiser password", type="password")
    leave_out = gr.CheckboxGroup([(title, kind) for kind, title in FLAG_TITLES.items()], value=list(FLAG_TITLES),
                                 label="Leave out participants flagged as", elem_id="study-leave-out")
    leave_out_names = gr.Textbox(label="Leave out these accounts or participant ids (separated by commas or spaces)",
                                 elem_id="study-leave-out-names")
    show_button = gr.Button("Show results", variant="primary")
    message = gr.Markdown(elem_id="study-results-note")
    with gr.Column(visible=False) as results:
        summary = gr.Dataframe(label="Fooling score per model", interactive=False)
        in_and_out = gr.Dataframe(label="Fooling score with the flagged participants in and out", interactive=False,
                                  elem_id="study-in-and-out")
        flagged_frame = gr.Dataframe(label="Participants, the flagged first (answer patterns no person produces)",
                                     interactive=False, elem_id="study-participants")
        chart = gr.Plot(label="Fooling score with 95% interval", elem_id="study-chart")
        cases = gr.Dataframe(label="Cases per batch (Table III)", interactive=False)
        # The CSV travels in this event's reply only: never as a file in Gradio's cache, which serves its files to
        # anyone who has their link.
        raw = gr.Code(label="Every raw answer (CSV: copy or download it with the buttons)", language=None,
                      interactive=False, buttons=["copy", "download"], max_lines=12, elem_id="study-csv")
    compute_lock = threading.Lock()  # one results computation at a time; guesses never wait for it

    def compute(kinds: set[str], names: set[str]) -> tuple:
        store = StudyStore(settings.database)
        answers = store.answers()
        if not answers:
            return (f"{_protection_note(settings, [])}No scored answers yet.", gr.update(visible=False),
                    None, None, None, None, None, None)
        flagged = flag_participants(answers, settings.flag_rules)
        fast = {pid: found["fast"] for pid, found in flagged.items() if "fast" in found}
        accounts = {a.participant_id: a.account for a in answers}
        named = {pid for pid, account in accounts.items() if pid in names or (account and account in names)}
        left_out = {pid for pid, found in flagged.items() if kinds & set(found)} | named
        summaries = sorted(summarize(answers, settings.bootstrap_samples, BOOTSTRAP_SEED, exclude=left_out),
                           key=lambda s: _display_rank(s.model))
        out = io.StringIO()
        rows = store.write_csv(out, fast, {pid: sorted(found) for pid, found in flagged.items()})
        counted = sum(a.participant_id not in left_out for a in answers)
        note = (f"{_protection_note(settings, answers)}"
                f"{len(answers)} scored decisions, {rows} answers in all (practice included). "
                f"{len(flagged)} participant(s) flagged for answer patterns no person produces; "
                + (f"{len(left_out - named)} of them are left out" if left_out - named else "none is left out")
                + (f", and {len(named)} participant(s) you named" if named else "")
                + (f", so the scores count {counted} decisions. " if left_out else ". ")
                + "Fooling score: mean of the case scores 0 / 0.25 / 0.75 / 1; 0.5 means participants could not "
                f"tell recolouring from photo. Intervals: 95% bootstrap over participants "
                f"({settings.bootstrap_samples} resamples). The CSV has every raw answer, with the flags.")
        counts = Counter(a.participant_id for a in answers)
        flagged_rows = pd.DataFrame(
            [{"Participant": pid, "Account": accounts[pid] or "", "Answers": counts[pid],
              "Flags": "; ".join(f"{FLAG_TITLES[kind]} ({seen})" for kind, seen in flagged.get(pid, {}).items()),
              "Left out": "yes" if pid in left_out else "no"}
             for pid in sorted(counts, key=lambda pid: (-len(flagged.get(pid, {})), accounts[pid] or "", pid))],
            columns=["Participant", "Account", "Answers", "Flags", "Left out"])
        return (note, gr.update(visible=bool(answers)), _summary_frame(summaries),
                _in_and_out_frame(answers, set(flagged)), flagged_rows, _chart(summaries),
                _case_frame(answers, left_out), out.getvalue())

    async def show_results(entered: str | None, leave_out_kinds=True, leave_out_names: str | None = "") -> tuple:
        """The results for the organiser's password. A wrong guess waits ``WRONG_PASSWORD_DELAY_S`` without
        holding a worker thread, and guesses never queue behind each other, so the organiser never waits for
        someone else's. ``leave_out_kinds``: the flag kinds whose participants are left out (True: every kind);
        ``leave_out_names``: accounts (user names) and participant ids to leave out as well."""
        if not isinstance(entered, str) or not hmac.compare_digest(entered.encode(), settings.admin_password.encode()):
            await asyncio.sleep(WRONG_PASSWORD_DELAY_S)
            return "Wrong password.", gr.update(visible=False), None, None, None, None, None, None
        if leave_out_kinds is True:
            kinds = set(FLAG_TITLES)
        elif isinstance(leave_out_kinds, (list, tuple)):
            kinds = {kind for kind in leave_out_kinds if isinstance(kind, str) and kind in FLAG_TITLES}
        else:
            kinds = set()

        names = set(re.split(r"[\s,]+", leave_out_names.strip())) - {""} if isinstance(leave_out_names, str) else set()

        def locked():
            with compute_lock:
                return compute(kinds, names)
        return await anyio.to_thread.run_sync(locked)

    show_button.click(show_results, [password, leave_out, leave_out_names],
                      [message, results, summary, in_and_out, flagged_frame, chart, cases, raw],
                      api_visibility="private", concurrency_limit=None)
    return {"show_results": show_results}


def _protection_note(settings: StudySettings, answers) -> str:
    """What the scores are protected against, as the first words of the results."""
    if not settings.sign_in:
        return ("**A pilot: these scores are unprotected.** Participants do not sign in (`STUDY_SIGN_IN` is off), so "
                "one person, or a program, can take part any number of times and move the scores; the flags below "
                "catch only the clumsy ones. For scores that count, turn sign-in on.\n\n")
    anonymous = {a.participant_id for a in answers if not a.account}
    if anonymous:
        return (f"Participants sign in with a Hugging Face account and take part once each; "
                f"{len(anonymous)} participant(s) without an account (from before sign-in was on) are listed "
                "below: leave them out by their id for scores that count.\n\n")
    return "Participants sign in with a Hugging Face account and take part once each.\n\n"


def _in_and_out_frame(answers, flagged: set[str]) -> pd.DataFrame:
    """Per model: the fooling score with everyone, and with every flagged participant left out."""
    everyone = {s.model: s for s in summarize(answers, samples=1)}
    kept = {s.model: s for s in summarize(answers, samples=1, exclude=flagged)}
    rows = []
    for model in sorted(everyone, key=_display_rank):
        with_them, without = everyone[model], kept.get(model)
        rows.append({"Model": _title(model), "Everyone": round(with_them.fooling_score, 4),
                     "Flagged left out": round(without.fooling_score, 4) if without else None,
                     "Decisions (everyone)": with_them.decisions,
                     "Decisions (flagged left out)": without.decisions if without else 0})
    return pd.DataFrame(rows, columns=["Model", "Everyone", "Flagged left out", "Decisions (everyone)",
                                       "Decisions (flagged left out)"])


def _display_rank(model: str) -> int:
    return MODEL_NAMES.index(model) if model in MODEL_NAMES else len(MODEL_NAMES)


def _title(model: str) -> str:
    return MODEL_TITLES.get(model, model)


def _interval(ci: tuple[float, float]) -> str:
    return f"{ci[0]:.3f} to {ci[1]:.3f}"


def _summary_frame(summaries) -> pd.DataFrame:
    return pd.DataFrame([{
        "Model": _title(s.model), "Participants": s.participants, "Decisions": s.decisions,
        "Fooling score": round(s.fooling_score, 4), "95% interval": _interval(s.fooling_ci),
        "Fool rate": round(s.fool_rate, 4), "Fool rate 95% interval": _interval(s.fool_rate_ci),
    } for s in summaries])


def _case_frame(answers, exclude=()) -> pd.DataFrame:
    rows = []
    for model, batches in sorted(case_table(answers, exclude).items(), key=lambda item: _display_rank(item[0])):
        for batch, counts in batches.items():
            rows.append({"Model": _title(model), "Batch": batch, **{f"Case {i}": n for i, n in enumerate(counts, 1)},
                         "Decisions": sum(counts), "Fooling score": round(fooling_score([counts]), 4)})
    return pd.DataFrame(rows)


def _chart(summaries) -> Figure:
    fig = Figure(figsize=(8, 3.6), layout="constrained")
    ax = fig.subplots()
    names = [s.model for s in summaries]
    scores = [s.fooling_score for s in summaries]
    errors = [[s.fooling_score - s.fooling_ci[0] for s in summaries],
              [s.fooling_ci[1] - s.fooling_score for s in summaries]]
    ax.bar(names, scores, yerr=errors, capsize=6, color="#4c72b0")
    ax.axhline(0.5, color="#888", linestyle="--", linewidth=1)
    ax.text(len(names) - 0.5, 0.51, "cannot tell apart", ha="right", va="bottom", color="#666", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("fooling score")
    ax.tick_params(axis="x", labelrotation=15)
    return fig
