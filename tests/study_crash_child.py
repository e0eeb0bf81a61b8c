"""Run by tests/test_study_crash.py and killed with SIGKILL at a random moment: participants take the study one
after another, printing ``SENT participant trial choice`` before each answer and ``ACK participant trial`` once
``Study.answer`` has returned (the moment a browser would get its reply).

    python -m tests.study_crash_child WEIGHTS_ROOT PHOTOS_DIR DATA_DIR
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import colorizers
from study.protocol import Study, StudySettings


def settings_for(photos: str, data: str) -> StudySettings:
    return StudySettings(photos_dir=Path(photos), data_dir=Path(data), models=("cnn_classifier",), practice_pairs=1,
                         batches=2, pairs_per_batch=2)


def main() -> None:
    weights, photos, data = sys.argv[1:4]
    available, _ = colorizers.load_colorizers(["cnn_classifier"], source=weights)
    study = Study(settings_for(photos, data), available, Path(tempfile.mkdtemp(prefix="crash-serve-")))
    print("READY", flush=True)
    choices = ["left", "right", "right", "left", "left"]
    for _ in range(1000):
        screen = study.start(None)
        i = 0
        while screen.kind != "done":
            if screen.kind == "feedback":
                screen = study.resume(screen.participant_id)
                continue
            choice = choices[i % len(choices)]
            print(f"SENT {screen.participant_id} {screen.trial_id} {choice}", flush=True)
            next_screen = study.answer(screen.participant_id, screen.trial_id, choice, True)
            print(f"ACK {screen.participant_id} {screen.trial_id}", flush=True)
            screen, i = next_screen, i + 1


if __name__ == "__main__":
    main()
