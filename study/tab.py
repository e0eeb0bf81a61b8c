"""The realism study in the Gradio app: a participant tab and an organiser's results tab.

``app.py`` calls ``build_study_tabs(available)`` inside its ``gr.Blocks``. The protocol, scoring and storage
are in ``study.protocol``, ``study.scoring`` and ``study.store``; this module only lays out the screens and wires the
events. Every study event is private (not an API endpoint). The browser only ever receives the two images of
the current pair, under random names, and the random id of its trial; which one is real stays on the server until
it has been answered.
"""
from __future__ import annotations

import hmac
import logging
import secrets
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Mapping

import gradio as gr
import pandas as pd
from gradio.utils import get_upload_folder
from matplotlib.figure import Figure

from colorizers import MODEL_NAMES, MODEL_TITLES
from colorizers.pipeline import Colorizer

from .protocol import Screen, Study, StudySettings, StudySetupError
from .scoring import case_table, fooling_score, summarize
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


@dataclass
class StudyTabs:
    """What ``build_study_tabs`` built: the running study (None when it cannot run, with ``problem`` saying why)
    and the event handlers it registered, for tests and for embedding."""

    study: Study | None
    problem: str | None
    handlers: dict[str, Callable]


def build_study_tabs(available: Mapping[str, Colorizer], settings: StudySettings | None = None) -> StudyTabs:
    """Add the "Realism study" and "Study results" tabs to the enclosing ``gr.Blocks``."""
    settings = settings or StudySettings.from_env()
    cache = Path(get_upload_folder())
    cache.mkdir(parents=True, exist_ok=True)
    serve_dir = Path(tempfile.mkdtemp(prefix="study-", dir=cache))  # inside Gradio's cache: served as named
    try:
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
    return StudyTabs(study, problem, handlers)


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


def _browser_secret(data_dir: Path) -> str:
    """The key of the participant id kept in the browser, stable across restarts so participants can resume."""
    path = Path(data_dir) / "browser-state.key"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(16))
    return path.read_text().strip()


def _participant_tab(study: Study) -> dict[str, Callable]:
    participant = gr.BrowserState(None, storage_key=BROWSER_STORAGE_KEY,
                                  secret=_browser_secret(study.settings.data_dir))
    # The id of the trial on screen travels with the page, so an answer given after an app restart still counts.
    # It is a random token that says nothing about the pair; the store accepts an answer only for the
    # participant's current trial.
    trial = gr.Textbox(None, visible=False, elem_id="study-trial")
    with gr.Column(visible=True) as intro:
        gr.Markdown(_instructions(study.settings))
        start_button = gr.Button("Start, or continue where I left off", variant="primary")
    notice = gr.Markdown(elem_id="study-notice")
    with gr.Column(visible=False) as pair:
        progress = gr.Markdown(elem_id="study-progress")
        with gr.Row(equal_height=True):
            # One fixed display height for both sides, whatever the photo size, so neither side stands out.
            image_options = dict(type="filepath", interactive=False, buttons=["fullscreen"], show_label=True,
                                 height=480)
            left = gr.Image(label="Left", elem_id="study-left", **image_options)
            right = gr.Image(label="Right", elem_id="study-right", **image_options)
    with gr.Column(visible=False) as asking:
        gr.Markdown("**Which image is the recoloured one?**")
        with gr.Row():
            answer_buttons = [gr.Button(label, variant="secondary") for label in ANSWERS]
    with gr.Column(visible=False) as feedback:
        feedback_text = gr.Markdown(elem_id="study-feedback")
        next_button = gr.Button("Next pair", variant="primary")
    with gr.Column(visible=False, elem_id="study-done") as done:
        gr.Markdown("### Thank you!\n\nYou have finished the study. Your answers are saved; you can close this page.")

    outputs = [participant, trial, intro, notice, pair, progress, left, right, asking, feedback, feedback_text, done]

    def render(screen: Screen) -> tuple:
        shown = screen.kind in ("trial", "feedback")
        return (
            screen.participant_id or gr.skip(),  # never forget the participant kept in the browser
            screen.trial_id,
            gr.update(visible=screen.kind == "intro"),
            gr.update(value=screen.message if screen.kind != "feedback" else ""),
            gr.update(visible=shown),
            gr.update(value=screen.progress) if screen.kind == "trial" else gr.skip(),
            str(screen.left) if screen.left else (gr.skip() if shown else None),
            str(screen.right) if screen.right else (gr.skip() if shown else None),
            gr.update(visible=screen.kind == "trial"),
            gr.update(visible=screen.kind == "feedback"),
            screen.message if screen.kind == "feedback" else "",
            gr.update(visible=screen.kind == "done"),
        )

    def start(participant_id: str | None) -> tuple:
        return render(study.start(participant_id))

    def answer(label: str, participant_id: str | None, trial_id: str | None) -> tuple:
        side, confident = ANSWERS[label]
        return render(study.answer(participant_id, trial_id, side, confident))

    def next_pair(participant_id: str | None) -> tuple:
        return render(study.resume(participant_id))

    private = dict(api_visibility="private", concurrency_limit=None)
    start_button.click(start, [participant], outputs, **private)
    for button in answer_buttons:
        button.click(answer, [button, participant, trial], outputs, **private)
    next_button.click(next_pair, [participant], outputs, **private)
    return {"start": start, "answer": answer, "next_pair": next_pair}


# -------------------------------------------------------------------------------------------------- organiser


def _results_tab(settings: StudySettings, serve_dir: Path) -> dict[str, Callable]:
    if not settings.admin_password:
        gr.Markdown("### Study results are locked\n\nThe organiser sets a password in the environment variable "
                    "`STUDY_ADMIN_PASSWORD` (on a Space: Settings, Variables and secrets, New secret) and restarts "
                    "the app; the results are then shown here to whoever enters it.")
        return {}
    password = gr.Textbox(label="Organiser password", type="password")
    show_button = gr.Button("Show results", variant="primary")
    message = gr.Markdown()
    with gr.Column(visible=False) as results:
        summary = gr.Dataframe(label="Fooling score per model", interactive=False)
        chart = gr.Plot(label="Fooling score with 95% interval", elem_id="study-chart")
        cases = gr.Dataframe(label="Cases per batch (Table III)", interactive=False)
        raw = gr.File(label="Every raw answer (CSV)")

    def show_results(entered: str | None) -> tuple:
        if not hmac.compare_digest((entered or "").encode(), settings.admin_password.encode()):
            time.sleep(WRONG_PASSWORD_DELAY_S)
            return "Wrong password.", gr.update(visible=False), None, None, None, None
        store = StudyStore(settings.database)
        answers = store.answers()
        summaries = sorted(summarize(answers, settings.bootstrap_samples, settings.seed),
                           key=lambda s: _display_rank(s.model))
        csv_path = serve_dir / secrets.token_hex(16) / f"study-answers-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}.csv"
        csv_path.parent.mkdir()
        with open(csv_path, "w", newline="") as out:
            rows = store.write_csv(out)
        note = (f"{len(answers)} scored decisions, {rows} answers in all (practice included) in "
                f"`{settings.database}`. Fooling score: mean of the case scores 0 / 0.25 / 0.75 / 1; 0.5 means "
                f"participants could not tell recolouring from photo. Intervals: 95% bootstrap over participants "
                f"({settings.bootstrap_samples} resamples).")
        if not answers:
            note = f"No scored answers yet in `{settings.database}`."
        return (note, gr.update(visible=bool(answers)), _summary_frame(summaries), _chart(summaries),
                _case_frame(answers), str(csv_path))

    show_button.click(show_results, [password], [message, results, summary, chart, cases, raw],
                      api_visibility="private")
    return {"show_results": show_results}


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


def _case_frame(answers) -> pd.DataFrame:
    rows = []
    for model, batches in sorted(case_table(answers).items(), key=lambda item: _display_rank(item[0])):
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
