"""Helpers shared by the realism study's tests (test_study, test_study_app, test_study_browser): small study
settings and photos, the models they run with, a participant who answers everything, and the study tabs in a
Blocks. Random-initialised weights only drive the plumbing; no test reads their recolourings as results."""
from __future__ import annotations

import re
from pathlib import Path

from PIL import Image

import colorizers
from study.protocol import Study, StudySettings

ROOT = Path(__file__).resolve().parents[1]
SERVED_NAME = re.compile(r"^[0-9a-f]{32}\.jpg$")  # how a served image is named: random, nothing else
MODELS = ("cnn_classifier", "attention_ugan")  # the faster random-weight models keep the CPU tests short


def make_photos(folder: Path, count: int, long_side: int = 160) -> Path:
    """``count`` of the shipped study photos, downscaled so the random-weight plumbing runs fast."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted((ROOT / "assets" / "study").glob("*.jpg"))[:count]:
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((long_side, long_side))
            image.save(folder / path.name, quality=95)
    return folder


def small_settings(root: Path, photos: int = 6, **overrides) -> StudySettings:
    """A study of 1 practice pair and 2 batches of 2 pairs (5 photos per participant)."""
    values = dict(photos_dir=make_photos(root / "photos", photos), data_dir=root / "data", practice_pairs=1,
                  batches=2, pairs_per_batch=2, bootstrap_samples=500)
    return StudySettings(**{**values, **overrides})


def load_models(weights_root: str, models=MODELS) -> dict:
    loaded, missing = colorizers.load_colorizers(models, source=weights_root)
    assert not missing, missing
    return loaded


def answer_all(study: Study, participant_id: str | None = None, choice: str = "left", confident: bool = True):
    """Take one participant through the whole study; returns their id."""
    screen = study.start(participant_id)
    while screen.kind != "done":
        if screen.kind == "feedback":
            screen = study.resume(screen.participant_id)
        else:
            screen = study.answer(screen.participant_id, screen.trial_id, choice, confident)
    return screen.participant_id


def build(available, settings):
    """A Blocks with the study tabs; returns it and what ``build_study_tabs`` returned."""
    import gradio as gr

    from study.tab import build_study_tabs
    with gr.Blocks() as demo:
        tabs = build_study_tabs(available, settings)
    return demo, tabs
