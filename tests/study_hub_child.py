"""Run by tests/test_study_hub.py: the study with its answers pushed to a Hub dataset (``STUDY_HUB_*`` and ``HF_*``
from the environment), driven by commands on stdin, killed by the test when it likes.

    python -m tests.study_hub_child WEIGHTS_ROOT PHOTOS_DIR DATA_DIR

Commands: ``answer LABEL N`` (participant LABEL, new at its first command, answers N pairs), ``waitpush`` (until a
push that began after the last answer has succeeded). Prints ``SHOW label participant trial`` for each pair served,
``ACK label participant trial`` once an answer is stored, ``PUSHED`` and ``OK`` after each command.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import colorizers
from study.hub_sync import start_hub_sync
from study.protocol import Study
from tests.study_crash_child import settings_for


def main() -> None:
    weights, photos, data = sys.argv[1:4]
    available, _ = colorizers.load_colorizers(["cnn_classifier"], source=weights)
    settings = settings_for(photos, data)
    sync = start_hub_sync(settings)
    study = Study(settings, available, Path(tempfile.mkdtemp(prefix="hub-serve-")))
    print("READY", flush=True)
    participants: dict[str, str] = {}
    screens = {}
    last_answer = time.time()
    for line in sys.stdin:
        command, *args = line.split()
        if command == "answer":
            label, count = args[0], int(args[1])
            screen = screens.get(label) or study.start(participants.get(label))
            for i in range(count):
                while screen.kind == "feedback":
                    screen = study.resume(screen.participant_id)
                assert screen.kind == "trial", screen
                participants[label] = screen.participant_id
                print(f"SHOW {label} {screen.participant_id} {screen.trial_id}", flush=True)
                next_screen = study.answer(screen.participant_id, screen.trial_id, ("left", "right")[i % 2], i % 3 > 0)
                print(f"ACK {label} {screen.participant_id} {screen.trial_id}", flush=True)
                screen = next_screen
            while screen.kind == "feedback":
                screen = study.resume(screen.participant_id)
            if screen.kind == "trial":
                print(f"SHOW {label} {screen.participant_id} {screen.trial_id}", flush=True)
            screens[label] = screen
            last_answer = time.time()
        elif command == "waitpush":
            assert sync.wait_for_push(after=last_answer, timeout=120), "no push"
            print("PUSHED", flush=True)
        print("OK", flush=True)


if __name__ == "__main__":
    main()
