"""The realism study without the UI: Table III scoring, the four cases, balanced assignment, bootstrap intervals,
the SQLite store (durability, one answer per trial) and ``Study`` (resume after a restart, blind pairs, cache).
Random-initialised weights only drive the plumbing here; no test reads their recolourings as results."""
from __future__ import annotations

import copy
import io
import os
import sqlite3
import sys
import threading
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import colorizers
from study.protocol import (
    SEED_FILE, StartLimiter, Study, StudySettings, StudySetupError, assign_trials, practice_photos, replan_trials,
)
from study.scoring import (
    CASE_SCORES, FlagRules, case_table, decision_case, fast_participants, flag_participants, fooling_score, summarize,
)
from study.stimuli import PAIR_GAP, Stimuli, compose_pair, save_blind_pair
from study.store import AnswerRejected, Decision, StudyStore, Trial, TrialSpec
from tests.study_helpers import SERVED_NAME, answer_all, load_models, small_settings

TABLE_III = [[6, 37, 52, 5], [12, 40, 40, 8], [6, 29, 55, 10], [7, 34, 49, 10]]


@pytest.fixture(scope="module")
def available(random_weights_root):
    return load_models(random_weights_root, colorizers.MODEL_NAMES)


def retrained(colorizer: colorizers.Colorizer) -> colorizers.Colorizer:
    """The same model with other weights, as after a retrain."""
    model = copy.deepcopy(colorizer.model)
    with torch.no_grad():
        next(model.parameters()).add_(0.1)
    return colorizers.Colorizer(colorizer.name, model)


# ----------------------------------------------------------------------------------------------------- scoring


def test_table_iii_gives_the_papers_fooling_score():
    assert fooling_score(TABLE_III) == pytest.approx(0.5375, abs=1e-12)
    assert fooling_score(np.asarray(TABLE_III).sum(axis=0)[None]) == pytest.approx(0.5375, abs=1e-12)


def test_four_cases_and_their_scores():
    assert decision_case(correct=True, confident=True) == 1
    assert decision_case(correct=True, confident=False) == 2
    assert decision_case(correct=False, confident=False) == 3
    assert decision_case(correct=False, confident=True) == 4
    assert CASE_SCORES == (0.0, 0.25, 0.75, 1.0)
    for case, score in enumerate(CASE_SCORES, start=1):
        counts = [0, 0, 0, 0]
        counts[case - 1] = 7
        assert fooling_score([counts]) == score
    with pytest.raises(ValueError, match="no decisions"):
        fooling_score([[0, 0, 0, 0]])


def _synthetic_answers(rng, participants: int, decisions: int, fool_rate, confident_rate=0.5, model="m"):
    """Answers whose fool rate is ``fool_rate`` (a number, or one per participant)."""
    rates = np.broadcast_to(fool_rate, (participants,))
    answers = []
    for p in range(participants):
        for d in range(decisions):
            fooled, sure = rng.random() < rates[p], rng.random() < confident_rate
            answers.append(_Answer(f"p{p}", model, 1 + d % 4, decision_case(not fooled, sure)))
    return answers


class _Answer:
    def __init__(self, participant_id, model, batch, case_number):
        self.participant_id, self.model, self.batch, self.case_number = participant_id, model, batch, case_number


def test_bootstrap_interval_contains_the_true_rate_and_is_narrow():
    answers = _synthetic_answers(np.random.default_rng(1), participants=300, decisions=20, fool_rate=0.3)
    (s,) = summarize(answers, samples=1000, seed=0)
    assert (s.participants, s.decisions) == (300, 6000)
    assert s.fool_rate_ci[0] < 0.3 < s.fool_rate_ci[1]
    assert s.fool_rate_ci[1] - s.fool_rate_ci[0] < 0.05
    # Confidence independent of correctness at 50%: 0.7 * (0 + 0.25) / 2 + 0.3 * (0.75 + 1) / 2 = 0.35.
    assert s.fooling_ci[0] < 0.35 < s.fooling_ci[1]
    assert s.fooling_ci[1] - s.fooling_ci[0] < 0.05
    assert summarize(answers, samples=1000, seed=0) == [s]  # seeded


def test_bootstrap_resamples_participants_not_decisions():
    # Half the participants are always fooled, half never: 2000 decisions, but only 40 independent people, so
    # the interval must be wide (a bootstrap over decisions would give about +-0.02).
    answers = _synthetic_answers(np.random.default_rng(2), 40, 50, fool_rate=np.repeat([0.0, 1.0], 20))
    (s,) = summarize(answers, samples=2000, seed=0)
    assert s.fool_rate == 0.5
    assert s.fool_rate_ci[1] - s.fool_rate_ci[0] > 0.2


def test_summary_and_table_iii_per_model_and_batch():
    answers = [_Answer("a", "cnn", 1, 1), _Answer("a", "cnn", 2, 4), _Answer("b", "cnn", 1, 3),
               _Answer("b", "paracolorizer", 1, 2)]
    assert case_table(answers) == {"cnn": {1: [1, 0, 1, 0], 2: [0, 0, 0, 1]}, "paracolorizer": {1: [0, 1, 0, 0]}}
    by_model = {s.model: s for s in summarize(answers, samples=100)}
    assert by_model["cnn"].fooling_score == pytest.approx((0 + 1 + 0.75) / 3)
    assert by_model["cnn"].fool_rate == pytest.approx(2 / 3)
    assert (by_model["cnn"].participants, by_model["cnn"].decisions) == (2, 3)
    assert by_model["paracolorizer"].fooling_score == 0.25


# ----------------------------------------------------------------------------------------------- assignment

PHOTOS = [f"photo{i:02d}.jpg" for i in range(22)]


@pytest.mark.parametrize("models", [colorizers.MODEL_NAMES, ("cnn", "paracolorizer", "attention_ugan", "cnn_classifier")])
def test_assignment_is_balanced_and_never_repeats_a_photo(models):
    settings = StudySettings(seed=0)  # the paper's design: 4 batches of 5, plus practice
    practice = set(practice_photos(PHOTOS, settings))
    assert len(practice) == settings.practice_pairs
    totals = Counter()
    for number in range(len(models) * 5):
        trials = assign_trials(PHOTOS, models, settings, number)
        scored = [t for t in trials if t.phase == "scored"]
        assert [t.phase for t in trials[:settings.practice_pairs]] == ["practice"] * settings.practice_pairs
        assert {t.photo for t in trials if t.phase == "practice"} == practice
        assert len({t.photo for t in trials}) == len(trials) == 22  # no photo twice
        assert not practice & {t.photo for t in scored}  # practice photos are never scored
        assert Counter(t.batch for t in scored) == {b: 5 for b in range(1, 5)}
        assert Counter(t.recoloured_side for t in scored) == {"left": 10, "right": 10}
        per_model = Counter(t.model for t in scored)
        assert set(per_model) == set(models)
        assert max(per_model.values()) - min(per_model.values()) <= 1
        totals.update(per_model)
    assert len(set(totals.values())) == 1  # over whole rotations every model is shown equally often


def test_participants_get_disjoint_photo_sets_from_a_large_pool():
    # A program comparing sessions finds the real side repeat only where photos do: with 102 photos (2 practice,
    # 100 scored, 20 per participant) the five participants of each pass share none, and every photo is shown
    # equally often over whole passes.
    photos = [f"p{i:03d}.jpg" for i in range(102)]
    settings = StudySettings(seed=3)
    scored = [{t.photo for t in assign_trials(photos, ["cnn", "paracolorizer"], settings, n) if t.phase == "scored"}
              for n in range(10)]
    for first in (0, 5):
        one_pass = scored[first:first + 5]
        assert all(len(s) == 20 for s in one_pass)
        assert len(set().union(*one_pass)) == 100  # disjoint
    usage = Counter(photo for s in scored for photo in s)
    assert set(usage.values()) == {2}
    assert scored[0] != scored[5]  # each pass is its own shuffle


def test_photo_blocks_that_span_two_passes_still_never_repeat_a_photo():
    photos = [f"p{i:02d}.jpg" for i in range(30)]  # 28 scored: every block straddles a pass sooner or later
    settings = StudySettings(seed=0)
    usage = Counter()
    for n in range(28):
        trials = assign_trials(photos, ["cnn"], settings, n)
        assert len({t.photo for t in trials}) == len(trials) == 22
        usage.update(t.photo for t in trials if t.phase == "scored")
    assert max(usage.values()) - min(usage.values()) <= 1  # 28 x 20 = 560 = 20 passes of 28


def test_assignment_is_seeded_and_pure():
    settings = StudySettings(seed=0)
    assert assign_trials(PHOTOS, ["cnn", "paracolorizer"], settings, 3) == \
        assign_trials(PHOTOS, ["cnn", "paracolorizer"], settings, 3)
    assert assign_trials(PHOTOS, ["cnn", "paracolorizer"], settings, 3) != \
        assign_trials(PHOTOS, ["cnn", "paracolorizer"], settings, 4)
    assert assign_trials(PHOTOS, ["cnn", "paracolorizer"], settings, 3) != \
        assign_trials(PHOTOS, ["cnn", "paracolorizer"], StudySettings(seed=1), 3)


def test_too_few_photos_for_the_design_is_explained():
    with pytest.raises(StudySetupError) as err:
        assign_trials(PHOTOS[:21], ["cnn"], StudySettings(seed=0), 0)
    message = str(err.value)
    assert "needs 22 different photos" in message and "has only 21" in message
    assert "STUDY_PHOTOS" in message and "STUDY_BATCHES" in message


def test_settings_from_environment():
    env = {"STUDY_PHOTOS": "/p", "STUDY_DB": "/d/s.db", "STUDY_MODELS": "cnn, paracolorizer", "STUDY_BATCHES": "3",
           "STUDY_PAIRS_PER_BATCH": "6", "STUDY_PRACTICE_PAIRS": "0", "STUDY_SEED": "9",
           "STUDY_ADMIN_PASSWORD": "s3cret", "STUDY_FAST_MS": "250", "STUDY_STARTS_PER_HOUR": "5",
           "STUDY_TOO_RIGHT_PERCENT": "90"}
    s = StudySettings.from_env(env)
    assert (s.fast_ms, s.starts_per_hour, s.flag_rules.too_right) == (250, 5, 0.9)
    assert (s.photos_dir, s.database, s.models) == (Path("/p"), Path("/d/s.db"), ("cnn", "paracolorizer"))
    assert (s.batches, s.pairs_per_batch, s.practice_pairs, s.seed, s.admin_password) == (3, 6, 0, 9, "s3cret")
    assert "s3cret" not in repr(s)
    defaults = StudySettings.from_env({})
    assert (defaults.batches, defaults.pairs_per_batch, defaults.models, defaults.seed) == (4, 5, None, None)
    assert (defaults.fast_ms, defaults.starts_per_hour, defaults.too_right_percent) == (1000, 20, 95)
    assert defaults.database.name == "study.sqlite3"
    with pytest.raises(ValueError, match="STUDY_BATCHES"):
        StudySettings.from_env({"STUDY_BATCHES": "four"})


# ---------------------------------------------------------------------------------------------------- store


def _plan(number):
    return [TrialSpec("practice", 0, "a.jpg", "cnn", "left")] + [
        TrialSpec("scored", 1, f"{i}.jpg", "cnn", "right") for i in range(3)]


def test_store_keeps_every_answer_across_a_reopen(tmp_path):
    store = StudyStore(tmp_path / "study.sqlite3")
    pid = store.create_participant(_plan, lambda model: "w1")
    first, second = store.trials(pid)[:2]
    store.mark_shown(first.id, 100.0, "w1")
    store.record_answer(pid, first.id, "left", True, 100.5)
    store.record_answer(pid, second.id, "left", False, 101.0)
    del store  # the "app" goes away; nothing was held open

    reopened = StudyStore(tmp_path / "study.sqlite3")
    assert [t.answered for t in reopened.trials(pid)] == [True, True, False, False]
    rows = reopened.answers(phase=None)
    assert [(r.phase, r.choice, r.confident, r.correct, r.case_number) for r in rows] == [
        ("practice", "left", True, True, 1), ("scored", "left", False, False, 3)]
    assert rows[0].response_ms == 500 and rows[1].response_ms is None and rows[0].weights == "w1"
    assert [r.trial_id for r in reopened.answers()] == [second.id]  # scored only by default
    with sqlite3.connect(tmp_path / "study.sqlite3") as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_store_derives_correctness_and_case_from_its_answer_key(tmp_path):
    store = StudyStore(tmp_path / "study.sqlite3")
    pid = store.create_participant(  # the recolouring is on the right in every pair
        lambda n: [TrialSpec("scored", 1, f"{i}.jpg", "cnn", "right") for i in range(4)], lambda model: "w")
    picks = [("right", True), ("right", False), ("left", False), ("left", True)]
    decisions = [store.record_answer(pid, t.id, choice, confident, 1.0)
                 for t, (choice, confident) in zip(store.trials(pid), picks)]
    assert decisions == [Decision(True, 1), Decision(True, 2), Decision(False, 3), Decision(False, 4)]
    assert [(r.correct, r.case_number) for r in store.answers()] == [tuple(d) for d in decisions]


def test_store_refuses_replayed_and_out_of_order_answers(tmp_path):
    store = StudyStore(tmp_path / "study.sqlite3")
    pid = store.create_participant(_plan, lambda model: "w")
    other = store.create_participant(_plan, lambda model: "w")
    trials = store.trials(pid)
    with pytest.raises(AnswerRejected):
        store.record_answer(pid, trials[2].id, "left", True, 1.0)  # not the current trial yet
    with pytest.raises(AnswerRejected):
        store.record_answer(other, trials[0].id, "left", True, 1.0)  # someone else's trial
    store.record_answer(pid, trials[0].id, "left", True, 1.0)
    with pytest.raises(AnswerRejected):
        store.record_answer(pid, trials[0].id, "right", True, 2.0)  # replayed
    assert len(store.answers(phase=None)) == 1
    with sqlite3.connect(tmp_path / "study.sqlite3") as con, pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
        con.execute("INSERT INTO answers VALUES (?, 'right', 1, 0, 4, 0, 3.0, 'w')", (trials[0].id,))


def test_replan_replaces_unanswered_trials_only(tmp_path):
    store = StudyStore(tmp_path / "study.sqlite3")
    pid = store.create_participant(_plan, lambda model: "w1")
    before = store.trials(pid)
    store.record_answer(pid, before[0].id, "left", True, 1.0)
    replaced = store.replan(pid, lambda trials: {t.id: TrialSpec(t.phase, t.batch, t.photo, "attention_ugan",
                                                                 t.recoloured_side) for t in trials[1:]},
                            lambda model: "w2")
    after = store.trials(pid)
    assert replaced == 3 and after[0] == replace(before[0], answered=True)
    assert [(t.position, t.model, t.weights) for t in after[1:]] == [(p, "attention_ugan", "w2") for p in (1, 2, 3)]
    assert not {t.id for t in after[1:]} & {t.id for t in before}  # new ids: an old page cannot answer them
    with pytest.raises(ValueError, match="answered"):
        store.replan(pid, lambda trials: {trials[0].id: TrialSpec("practice", 0, "b.jpg", "cnn", "left")},
                     lambda model: "w2")
    assert store.trials(pid) == after  # the failed replan changed nothing
    assert [r.weights for r in store.answers(phase=None)] == ["w1"]


def test_store_upgrades_a_database_of_the_first_version(tmp_path):
    path = tmp_path / "study.sqlite3"
    with sqlite3.connect(path) as con:  # the first release's schema: no answers.weights, no trials.shown_weights
        con.executescript("""
            CREATE TABLE participants (id TEXT PRIMARY KEY, number INTEGER NOT NULL UNIQUE, created_at REAL NOT NULL);
            CREATE TABLE trials (id TEXT PRIMARY KEY, participant_id TEXT NOT NULL, position INTEGER NOT NULL,
                phase TEXT NOT NULL, batch INTEGER NOT NULL, photo TEXT NOT NULL, model TEXT NOT NULL,
                weights TEXT NOT NULL, recoloured_side TEXT NOT NULL, shown_at REAL, UNIQUE (participant_id, position));
            CREATE TABLE answers (trial_id TEXT PRIMARY KEY, choice TEXT NOT NULL, confident INTEGER NOT NULL,
                correct INTEGER NOT NULL, case_number INTEGER NOT NULL, response_ms INTEGER, answered_at REAL NOT NULL);
            INSERT INTO participants VALUES ('p', 0, 1.0);
            INSERT INTO trials VALUES ('t0', 'p', 0, 'scored', 1, 'a.jpg', 'cnn', 'w-old', 'left', 1.0),
                                      ('t1', 'p', 1, 'scored', 1, 'b.jpg', 'cnn', 'w-old', 'left', NULL);
            INSERT INTO answers VALUES ('t0', 'left', 1, 1, 1, 500, 1.5);
        """)
    store = StudyStore(path)
    assert [(r.trial_id, r.weights, r.case_number) for r in store.answers()] == [("t0", "w-old", 1)]
    store.mark_shown("t1", 2.0, "w-old")
    store.record_answer("p", "t1", "right", False, 2.5)
    assert [(r.weights, r.case_number, r.response_ms) for r in store.answers()][1] == ("w-old", 3, 500)


def test_csv_has_every_raw_answer(tmp_path):
    import csv
    store = StudyStore(tmp_path / "study.sqlite3")
    pid = store.create_participant(_plan, lambda model: "w")
    for trial in store.trials(pid):
        store.record_answer(pid, trial.id, "right", False, 1_700_000_000.0)
    out = io.StringIO()
    assert store.write_csv(out) == 4
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert [r["phase"] for r in rows] == ["practice", "scored", "scored", "scored"]
    assert rows[1]["participant_id"] == pid and rows[1]["model"] == "cnn" and rows[1]["case_number"] == "2"
    assert rows[1]["answered_at"] == "2023-11-14T22:13:20.000+00:00"


# ------------------------------------------------------------------------------------------------ the study


def test_setup_problems_are_explained(tmp_path, available):
    settings = small_settings(tmp_path)
    with pytest.raises(StudySetupError, match="No trained model is available"):
        Study(settings, {}, tmp_path / "serve")
    with pytest.raises(StudySetupError, match="STUDY_MODELS asks for paracolorizer"):
        Study(replace(settings, models=("cnn", "paracolorizer")),
              {"cnn": available["cnn"]}, tmp_path / "serve")
    with pytest.raises(StudySetupError, match="has only 4"):
        Study(small_settings(tmp_path / "few", photos=4), available, tmp_path / "serve")


def test_participant_resumes_after_a_restart_and_is_never_counted_twice(tmp_path, available):
    settings = small_settings(tmp_path, models=("cnn", "attention_ugan"))
    study = Study(settings, available, tmp_path / "serve")
    screen = study.start(None)
    assert screen.kind == "trial" and screen.progress == "Practice round (not scored), pair 1 of 1"
    pid = screen.participant_id
    feedback = study.answer(pid, screen.trial_id, "left", True)
    assert feedback.kind == "feedback" and "not scored" in feedback.message
    screen = study.resume(pid)
    assert screen.progress == "Batch 1 of 2, pair 1 of 2"
    screen = study.answer(pid, screen.trial_id, "right", False)
    assert screen.progress == "Batch 1 of 2, pair 2 of 2"
    pending = screen.trial_id

    restarted = Study(settings, available, tmp_path / "serve")  # a new process on the same data
    screen = restarted.start(pid)
    assert screen.trial_id == pending and "answered 2 of 5" in screen.message
    assert answer_all(restarted, pid) == pid
    assert restarted.start(pid).kind == "done"  # coming back after the end does not start again
    rows = restarted.store.answers(phase=None)
    assert len(rows) == 5 and {r.participant_id for r in rows} == {pid}
    assert Counter(r.model for r in rows if r.phase == "scored") == {"cnn": 2, "attention_ugan": 2}


def test_stale_pages_cannot_answer_again(tmp_path, available):
    study = Study(small_settings(tmp_path, models=("cnn",)), available, tmp_path / "serve")
    first = study.start(None)
    pid = first.participant_id
    feedback = study.answer(pid, first.trial_id, "left", True)
    replay = study.answer(pid, first.trial_id, "right", True)  # resent after a crash, or a second tab
    assert replay == feedback  # the stored answer (left) stands, and its feedback is shown again
    screen = study.resume(pid)
    resent = study.answer(pid, screen.trial_id, "left", False)
    again = study.answer(pid, screen.trial_id, "right", True)  # the same pair answered again: the next pair, quietly
    assert again.kind == resent.kind == "trial" and again.trial_id == resent.trial_id and not again.message
    later = [t for t in study.store.trials(pid) if not t.answered][1]
    out_of_order = study.answer(pid, later.id, "left", True)
    assert out_of_order.kind == "trial" and "not your current one" in out_of_order.message
    assert study.answer(pid, "forged-trial-id", "left", True).kind == "intro"
    assert study.answer("unknown-participant", screen.trial_id, "left", True).kind == "intro"
    assert [(r.choice, r.confident) for r in study.store.answers(phase=None)] == [("left", True), ("left", False)]


JPEG_MARKERS = {0xD8: "SOI", 0xE0: "APP0", 0xDB: "DQT", 0xC0: "SOF0", 0xC4: "DHT", 0xDA: "SOS", 0xD9: "EOI"}


def jpeg_segments(data: bytes) -> list[str]:
    """The marker segments of a baseline JPEG, in order, up to its end (which must be the file's end)."""
    assert data[:2] == b"\xff\xd8"
    names, i = ["SOI"], 2
    while True:
        assert data[i] == 0xFF, i
        marker = data[i + 1]
        names.append(JPEG_MARKERS.get(marker, hex(marker)))
        if marker == 0xD9:
            assert i + 2 == len(data), "bytes after the end-of-image marker"
            return names
        length = int.from_bytes(data[i + 2:i + 4], "big")
        i += 2 + length
        if marker == 0xDA:  # entropy-coded data up to the next marker that is not a stuffed 0xFF00 or a restart
            while not (data[i] == 0xFF and data[i + 1] not in (0x00, *range(0xD0, 0xD8))):
                i += 1


def split_pair(image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    pixels = np.asarray(image.convert("RGB"), dtype=float)
    side = (pixels.shape[1] - PAIR_GAP) // 2
    return pixels[:, :side], pixels[:, side + PAIR_GAP:]


def best_match(side: np.ndarray, photo: np.ndarray) -> float:
    """Mean absolute difference between a served side and the photo at the crop offset that fits best."""
    h, w = side.shape[:2]
    return min(np.abs(side - photo[dy:dy + h, dx:dx + w]).mean()
               for dy in range(photo.shape[0] - h + 1) for dx in range(photo.shape[1] - w + 1))


def test_pairs_reach_the_browser_blind(tmp_path, available):
    """Each pair is ONE baseline JPEG under a random name, with nothing but the JFIF header, the tables and the
    pixels (no metadata, nothing after its end), so no byte tells the sides apart; the answer key stays on the
    server (and is right); a pair re-sent is a different file."""
    settings = small_settings(tmp_path, models=("cnn_classifier", "attention_ugan"))
    study = Study(settings, available, tmp_path / "serve")
    screen = study.start(None)
    seen, previous = 0, None
    while screen.kind != "done":
        if screen.kind == "feedback":
            screen = study.resume(screen.participant_id)
            continue
        assert previous is None or not previous.exists()  # an answered pair's file is gone once the next is shown
        trial = next(t for t in study.store.trials(screen.participant_id) if t.id == screen.trial_id)
        assert SERVED_NAME.match(screen.pair.name) and screen.pair.parent == tmp_path / "serve"
        data = screen.pair.read_bytes()
        assert jpeg_segments(data) == ["SOI", "APP0", "DQT", "DQT", "SOF0", "DHT", "DHT", "DHT", "DHT", "SOS", "EOI"]
        with Image.open(screen.pair) as served:
            assert served.format == "JPEG" and not {"exif", "icc_profile", "comment"} & set(served.info)
            left, right = split_pair(served)
        with Image.open(settings.photos_dir / trial.photo) as photo:
            real = np.asarray(photo.convert("RGB"), dtype=float)
        assert left.shape == right.shape and real.shape[0] - 14 <= left.shape[0] <= real.shape[0]
        real_side = "left" if best_match(left, real) < best_match(right, real) else "right"
        assert real_side != trial.recoloured_side
        again = study.start(screen.participant_id)  # the same pair again (a reload): other bytes, same answer key
        assert again.trial_id == screen.trial_id and again.pair.read_bytes() != data
        assert not screen.pair.exists()
        previous = again.pair
        screen = study.answer(screen.participant_id, screen.trial_id, "left", False)
        seen += 1
    assert seen == settings.photos_per_participant
    assert not previous.exists() and not any((tmp_path / "serve").iterdir())


def test_recolourings_are_computed_once_and_keyed_by_weights(tmp_path, available):
    settings = small_settings(tmp_path, photos=3, models=("cnn_classifier",), practice_pairs=0, batches=1)
    study = Study(settings, available, tmp_path / "serve")
    study.stimuli.warm(study.models, stop=threading.Event())
    cache = tmp_path / "data" / "recolourings" / "cnn_classifier"
    assert len(list(cache.rglob("*.png"))) == 3

    class Counting:
        def __init__(self, model):
            self.inner, self.model, self.calls = colorizers.Colorizer("cnn_classifier", model), model, 0

        def colorize(self, image):
            self.calls += 1
            return self.inner.colorize(image)

    same = Counting(available["cnn_classifier"].model)
    again = Study(settings, {"cnn_classifier": same}, tmp_path / "serve")
    answer_all(again)
    answer_all(again)
    assert same.calls == 0  # two participants, every pair from the disk cache

    retrained = copy.deepcopy(available["cnn_classifier"].model)
    with torch.no_grad():
        next(retrained.parameters()).add_(0.1)
    other = Counting(retrained)  # other weights: their own recolourings
    Study(settings, {"cnn_classifier": other}, tmp_path / "serve").start(None)
    assert other.calls == 1
    assert len({p.parent for p in cache.rglob("*.png")}) == 2


def test_composed_pair_is_cropped_alike_dithered_and_unique(tmp_path):
    rng = np.random.default_rng(0)
    noisy = Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8))  # compresses badly
    flat = Image.new("RGB", (128, 96), (200, 120, 40))  # compresses well
    composed = compose_pair(flat, noisy, np.random.default_rng(1))
    left, right = split_pair(composed)
    assert left.shape == right.shape and 128 - 14 <= left.shape[1] <= 128 and 96 - 14 <= left.shape[0] <= 96
    assert np.abs(left - [200, 120, 40]).max() <= 1  # dither of at most one level
    assert best_match(right, np.asarray(noisy, dtype=float)) < 1  # the same crop on both sides (off: ~85)
    gap = np.asarray(composed, dtype=float)[:, left.shape[1]:left.shape[1] + PAIR_GAP]
    assert np.abs(gap - 128).max() <= 1
    served = {save_blind_pair(flat, noisy, tmp_path, quality=90).read_bytes() for _ in range(5)}
    assert len(served) == 5  # every serving of a pair is its own file
    with pytest.raises(ValueError, match="differ in size"):
        compose_pair(flat, noisy.resize((64, 48)))


def test_two_fresh_data_folders_get_different_plans(tmp_path, available):
    photos = small_settings(tmp_path / "a").photos_dir
    plans = []
    for folder in ("a", "b", "a"):  # two fresh folders, then the first again (a restart)
        study = Study(StudySettings(photos_dir=photos, data_dir=tmp_path / folder / "data", practice_pairs=1, batches=2,
                                    pairs_per_batch=2), available, tmp_path / "serve")
        assert len(study.settings.seed) == 64 and study.settings.seed != "None"
        plans.append([assign_trials(list(study.stimuli.photos), list(available), study.settings, n) for n in range(4)])
        assert (tmp_path / folder / "data" / SEED_FILE).stat().st_mode & 0o077 == 0  # the organiser's eyes only
    assert plans[0] != plans[1] and plans[0] == plans[2]
    pilot = [Study(StudySettings(photos_dir=photos, data_dir=tmp_path / f / "pilot", seed=7, batches=1, practice_pairs=1), available,
                   tmp_path / "serve").settings.seed for f in "ab"]
    assert pilot == ["7", "7"]  # an organiser's STUDY_SEED: a reproducible plan
    with pytest.raises(ValueError, match="no seed"):
        assign_trials(PHOTOS, ["cnn"], StudySettings(), 0)


def test_fast_answers_are_flagged_and_their_exclusion_changes_the_scores():
    class A(_Answer):
        def __init__(self, participant_id, case_number, response_ms, model="m"):
            super().__init__(participant_id, model, 1, case_number)
            self.response_ms = response_ms
    answers = [A("human", 1, 4200), A("human", 2, 2500), A("human", 3, 150),  # one quick answer is no bot
               A("bot", 4, 40), A("bot", 4, 60), A("bot", 3, 5000),
               A("no-times", 1, None)]
    assert fast_participants(answers, 300) == {"bot": 60.0}
    assert fast_participants(answers, 30) == {}
    (all_in,) = summarize(answers, samples=50)
    (without,) = summarize(answers, samples=50, exclude=fast_participants(answers, 300))
    assert all_in.fooling_score == pytest.approx((0 + 0.25 + 0.75 + 1 + 1 + 0.75 + 0) / 7)
    assert without.fooling_score == pytest.approx((0 + 0.25 + 0.75 + 0) / 4)
    assert (all_in.participants, without.participants) == (3, 2)
    assert case_table(answers, exclude={"bot"}) == {"m": {1: [2, 1, 1, 0]}}


class _Given:
    """One scored answer as ``flag_participants`` reads it."""

    def __init__(self, participant_id, response_ms, choice="left", confident=True, correct=True):
        self.participant_id, self.response_ms = participant_id, response_ms
        self.choice, self.confident, self.correct = choice, confident, correct


def _person(pid, n=20, seed=0):
    """Someone who takes 1.5 to 12 s per pair, picks either side, is sometimes sure, and right about 70 % of the
    time."""
    rng = np.random.default_rng(seed)
    return [_Given(pid, int(rng.uniform(1500, 12000)), ("left", "right")[i % 2 ^ (i % 3 == 0)], i % 4 != 1,
                   rng.random() < 0.7) for i in range(n)]


def test_a_patient_bot_is_flagged_for_patterns_no_person_produces():
    """A script that waits 0.35 s per answer (+ a few ms of network) passes the old test of a median under 300 ms;
    its times are too short and too even for a person. Bots that wait like people still give themselves away by
    always picking the same side, always the same confidence, or being right on nearly every pair."""
    rng = np.random.default_rng(1)
    answers = [*_person("person-1", seed=1), *_person("person-2", seed=2),
               *[_Given("bot-0.35s", 350 + int(rng.integers(0, 25)), ("left", "right")[i % 2], i % 2 == 0,
                        i % 3 != 0) for i in range(20)],
               *[_Given("patient-left", int(rng.uniform(2000, 9000)), "left", i % 2 == 0, i % 2 == 0)
                 for i in range(20)],
               *[_Given("patient-sure", int(rng.uniform(2000, 9000)), ("left", "right")[i % 2], True, i % 3 != 0)
                 for i in range(20)],
               *[_Given("recomputes", int(rng.uniform(2000, 9000)), ("left", "right")[i % 2], i % 2 == 0,
                        i != 7) for i in range(20)]]
    flags = flag_participants(answers, FlagRules())
    assert "person-1" not in flags and "person-2" not in flags, flags
    assert set(flags["bot-0.35s"]) == {"fast", "steady"} and flags["bot-0.35s"]["fast"].startswith("median 3")
    assert set(flags["patient-left"]) == {"one_side"} and flags["patient-left"]["one_side"] == "20 of 20 on the left"
    assert set(flags["patient-sure"]) == {"one_confidence"}
    assert set(flags["recomputes"]) == {"too_right"} and flags["recomputes"]["too_right"] == "19 of 20 right"
    # Patterns need enough answers to mean anything: a person's first few answers on one side are no flag.
    assert flag_participants([_Given("few", 3000 + 500 * i, "left") for i in range(7)]) == {}
    assert flag_participants(answers, FlagRules(fast_ms=300))["bot-0.35s"].keys() == {"steady"}  # the old rule alone misses it
    assert "bot-0.35s" not in fast_participants(answers, 300)


def test_new_participants_per_client_are_limited(tmp_path, available):
    limiter = StartLimiter(2, window_s=10)
    assert [limiter.allow("a", t) for t in (0, 1, 2)] == [True, True, False]
    assert limiter.allow("b", 2) and limiter.allow("a", 10.5)  # per client; the window slides
    study = Study(small_settings(tmp_path, models=("cnn",), starts_per_hour=1), available, tmp_path / "serve")
    first = study.start(None, client="10.0.0.1")
    assert first.kind == "trial"
    refused = study.start(None, client="10.0.0.1")
    assert refused.kind == "intro" and "Too many new participants" in refused.message
    assert study.start(first.participant_id, client="10.0.0.1").kind == "trial"  # continuing is not starting
    assert study.start(None, client="10.0.0.2").kind == "trial"
    assert len({t.participant_id for t in study.store.answers(phase=None)}) == 0


def _trial(i, photo, model="cnn", weights="w1", phase="scored", answered=False, side="left"):
    return Trial(f"t{i}", "p", i, phase, 0 if phase == "practice" else 1 + (i > 2), photo, model, weights, side,
                 answered)


def test_replan_keeps_what_it_can_and_replaces_what_is_gone():
    settings = StudySettings(practice_pairs=1, batches=2, pairs_per_batch=2, seed=0)
    photos = [f"{c}.jpg" for c in "abcdefg"]
    (practice,) = practice_photos(photos, settings)
    scored = [p for p in photos if p != practice]
    trials = [_trial(0, practice, phase="practice", answered=True), _trial(1, scored[0], answered=True),
              _trial(2, scored[1]), _trial(3, scored[2], model="gone"), _trial(4, "removed.jpg", side="right")]

    assert replan_trials(trials, photos, {"cnn": "w1", "gone": "w1"}, settings).keys() == {"t4"}
    plans = replan_trials(trials, photos, {"cnn": "w1", "attention_ugan": "w1"}, settings)
    assert plans.keys() == {"t3", "t4"}  # t2 is servable as planned; answered trials are never replanned
    assert plans["t3"] == TrialSpec("scored", 2, scored[2], "attention_ugan", "left")  # the least given model
    assert plans["t4"].photo in scored[3:]  # a photo this participant has not been given, not a practice one
    assert replace(plans["t4"], photo="?") == TrialSpec("scored", 2, "?", "cnn", "right")

    plans = replan_trials(trials, photos, {"cnn": "w2"}, settings)  # other weights for cnn
    assert plans.keys() == {"t2", "t3", "t4"}
    assert plans["t2"] == TrialSpec("scored", 1, scored[1], "cnn", "left")  # the same pair, re-served
    assert plans["t3"].model == plans["t4"].model == "cnn"


def test_participant_continues_after_a_restart_with_other_weights_models_and_photos(tmp_path, available):
    settings = small_settings(tmp_path, models=("cnn_classifier", "attention_ugan"))
    study = Study(settings, available, tmp_path / "serve")
    screen = study.start(None)
    pid = screen.participant_id
    study.answer(pid, screen.trial_id, "left", True)  # practice
    screen = study.resume(pid)
    screen = study.answer(pid, screen.trial_id, "right", False)  # scored pair 1
    stale_page = screen.trial_id
    before = study.store.answers(phase=None)
    old_weights = study.stimuli.weights["cnn_classifier"]
    assert [r.weights for r in before] == [study.stimuli.weights[r.model] for r in before]

    # The organiser retrains cnn_classifier, drops attention_ugan and removes a photo this participant has yet to see.
    unseen = next(t.photo for t in study.store.trials(pid) if not t.answered)
    os.remove(settings.photos_dir / unseen)
    new = {"cnn_classifier": retrained(available["cnn_classifier"])}
    restarted = Study(replace(settings, models=("cnn_classifier",)), new, tmp_path / "serve")
    new_weights = restarted.stimuli.weights["cnn_classifier"]
    assert new_weights != old_weights
    screen = restarted.start(pid)
    assert screen.kind == "trial" and "answered 2 of 5" in screen.message
    assert restarted.answer(pid, stale_page, "left", True).kind == "intro"  # the old pair cannot be answered now
    assert answer_all(restarted, pid) == pid

    rows = sorted(restarted.store.answers(phase=None), key=lambda r: r.position)
    assert rows[:2] == sorted(before, key=lambda r: r.position)  # the given answers, untouched
    assert [r.position for r in rows] == list(range(5)) and len({r.photo for r in rows}) == 5
    assert unseen not in {r.photo for r in rows}
    assert [(r.model, r.weights) for r in rows[2:]] == [("cnn_classifier", new_weights)] * 3


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a nice value per thread is Linux's")
def test_warm_up_runs_at_low_priority(tmp_path, available, monkeypatch):
    study = Study(small_settings(tmp_path, models=("cnn_classifier",)), available, tmp_path / "serve")
    mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    seen = []
    monkeypatch.setattr(study.stimuli, "warm", lambda models, stop: seen.append(
        os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
    study.warm_cache_in_background().join()
    assert seen == [min(mine + 10, 19)]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == mine  # only that thread yields


def test_a_recolouring_in_progress_does_not_hold_up_other_pairs(tmp_path, available):
    inner = available["cnn_classifier"]
    started, release = threading.Event(), threading.Event()

    class SlowFirst:  # the first recolouring waits until released
        model, calls = inner.model, 0

        def colorize(self, image):
            SlowFirst.calls += 1
            if SlowFirst.calls == 1:
                started.set()
                release.wait(30)
            return inner.colorize(image)

    photos = small_settings(tmp_path, photos=2).photos_dir
    stimuli = Stimuli(photos, {"cnn_classifier": SlowFirst()}, tmp_path / "cache")
    first, second = stimuli.photos
    slow = threading.Thread(target=stimuli.recolouring, args=("cnn_classifier", first))
    slow.start()
    try:
        assert started.wait(30)
        other = threading.Thread(target=stimuli.recolouring, args=("cnn_classifier", second))
        other.start()
        other.join(20)
        assert not other.is_alive()  # another pair is computed meanwhile
    finally:
        release.set()
        slow.join()
    same = [threading.Thread(target=stimuli.recolouring, args=("cnn_classifier", first)) for _ in range(2)]
    for t in same:
        t.start()
    for t in same:
        t.join()
    assert SlowFirst.calls == 2  # each pair computed once


def test_photos_are_shown_and_recoloured_at_display_size_in_8_bit(tmp_path, available):
    """A camera-sized photo is held at most DISPLAY_SIDE on its longer side, in 8-bit RGB, for the pair and its
    recolouring alike (full size, in 16-bit, a 13 MP pair cost about 780 MB)."""
    from study.stimuli import DISPLAY_SIDE
    folder = tmp_path / "photos"
    folder.mkdir()
    random_photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (2000, 3000, 3), dtype=np.uint8))
    random_photo.save(folder / "camera.jpg", quality=90)
    stimuli = Stimuli(folder, {"cnn_classifier": available["cnn_classifier"]}, tmp_path / "cache")
    shown = stimuli.photo("camera.jpg")
    assert shown.mode == "RGB" and max(shown.size) == DISPLAY_SIDE and shown.size == (1024, 683)
    recoloured = stimuli.recolouring("cnn_classifier", "camera.jpg")
    assert recoloured.mode == "RGB" and recoloured.size == shown.size


def test_ten_participants_at_once_with_camera_sized_photos_stay_within_the_memory_bound(random_weights_root, tmp_path):
    """Ten participants taking the whole study at the same moment, on 13-megapixel photos, in one process: the
    peak stays under 2 GB (pairs built full size in 16-bit took 8.4 GB for ten). Every participant finishes."""
    from tests.helpers import camera_photo, run_memory_child
    folder = tmp_path / "camera"
    folder.mkdir()
    for k in range(4):
        camera_photo(2944, 4416, seed=k).save(folder / f"camera{k}.jpg", quality=90)  # 13.0 MP
    result = run_memory_child("study", random_weights_root, "cnn,paracolorizer", folder, 10)
    print(result)  # the measured peak, for the record (pytest -s)
    assert result["finished"] == 10 and not result["errors"], result
    assert result["peak_mb"] < 2000, result
