"""Durability under ``kill -9``: a process running participants through the study is killed at random moments;
every answer whose reply was sent is in the database (none lost), no pair is answered twice, and the one answer
that may have been stored without its reply is taken as stored when the page sends it again."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from study.protocol import Study
from tests.study_crash_child import settings_for
from tests.study_helpers import answer_all, load_models, make_photos

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def available(random_weights_root):
    return load_models(random_weights_root, ("cnn_classifier",))


def run_and_kill(weights: str, photos: Path, data: Path, acks_before_kill: int, rng: random.Random) -> list[str]:
    """Start the child, let it get ``acks_before_kill`` replies out, then SIGKILL it a random moment later."""
    child = subprocess.Popen([sys.executable, "-m", "tests.study_crash_child", weights, str(photos), str(data)],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines, acks = [], 0
    try:
        deadline = time.monotonic() + 300
        while acks < acks_before_kill and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            lines.append(line.strip())
            acks += line.startswith("ACK")
        time.sleep(rng.uniform(0, 0.05))  # somewhere inside the next answer, or between two
    finally:
        os.kill(child.pid, signal.SIGKILL)
        rest = child.stdout.read()  # what it printed before it died (through the same buffer readline used)
        child.wait(60)
    lines += [line.strip() for line in rest.splitlines() if line.strip()]
    assert acks >= acks_before_kill, lines[-5:]
    return lines


def test_kill_9_loses_and_duplicates_nothing(available, random_weights_root, tmp_path):
    photos = make_photos(tmp_path / "photos", 6)
    data = tmp_path / "data"
    settings = settings_for(str(photos), str(data))
    rng = random.Random(0)
    acked, last_unacked = set(), []
    for round_ in range(3):
        lines = run_and_kill(random_weights_root, photos, data, acks_before_kill=rng.randint(3, 9), rng=rng)
        sent = [line.split()[1:] for line in lines if line.startswith("SENT")]
        acks = {tuple(line.split()[1:3]) for line in lines if line.startswith("ACK")}
        acked |= acks
        if sent and tuple(sent[-1][:2]) not in acks:
            last_unacked.append(sent[-1])

        study = Study(settings, available, tmp_path / "serve")  # the restarted app, on the same data
        stored = {(r.participant_id, r.trial_id) for r in study.store.answers(phase=None)}
        assert acked <= stored  # no acknowledged answer is lost
        assert len(stored - acked) <= len(last_unacked)  # only an answer whose reply never came may be extra
        counts = Counter(r.trial_id for r in study.store.answers(phase=None))
        assert max(counts.values()) == 1  # no pair answered twice

    # The pages whose answer got no reply send it again: it is taken as stored (or stored now), never twice.
    study = Study(settings, available, tmp_path / "serve")
    for participant_id, trial_id, choice in last_unacked:
        before = len(study.store.answers(phase=None))
        was_stored = study.store.decision(trial_id) is not None
        screen = study.answer(participant_id, trial_id, choice, True)
        assert screen.kind in ("trial", "feedback", "done") and "already" not in screen.message
        assert len(study.store.answers(phase=None)) == before + (0 if was_stored else 1)
    # Everyone finishes; each has exactly one answer per pair, in order.
    participants = {r.participant_id for r in study.store.answers(phase=None)}
    for participant_id in participants:
        answer_all(study, participant_id)
    rows = study.store.answers(phase=None)
    for participant_id in participants:
        positions = sorted(r.position for r in rows if r.participant_id == participant_id)
        assert positions == list(range(settings.photos_per_participant))
