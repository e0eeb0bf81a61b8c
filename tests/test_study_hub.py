"""The study's answers on a Hub dataset (``study.hub_sync``), against the local Hub of ``tests/hub_server.py``: a
study killed with SIGKILL after its last push comes back on an empty data folder with every pushed answer once and
its participants at their pairs; SIGTERM pushes before the end; a Hub that is down at start-up refuses or starts
empty as the organiser chose, and never loses what is on the Hub."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from study.hub_sync import (HubSettings, HubUnreachable, StudyHubSync, fold, start_hub_sync)
from study.keys import derived_key
from study.protocol import StudySettings, StudySetupError, plan_seed
from study.scoring import summarize
from study.store import StudyStore, TrialSpec
from tests.helpers import free_port
from tests.hub_server import HubRepo, HubServer
from tests.study_crash_child import settings_for
from tests.study_helpers import load_models, make_photos

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_organiser_token"
DATASET = "organiser/study-answers"
SECRET = "a-long-random-organiser-secret-0123456789"


@pytest.fixture(autouse=True)
def quiet_downloads():
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars
    disable_progress_bars()
    yield
    enable_progress_bars()


def hub_journal(hub: HubServer):
    """What the dataset's journal files on the Hub hold."""
    files = hub.dataset(DATASET).files("main")
    lines = [line for name in sorted(files) if name.startswith("journal/")
             for line in files[name].decode().splitlines()]
    import json
    return fold(json.loads(line) for line in lines)


class Child:
    def __init__(self, hub, tmp_path, weights, photos, data, every: float):
        env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "hf-home"), "HF_TOKEN": TOKEN,
               "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "PYTHONPATH": str(ROOT),
               "STUDY_HUB_DATASET": DATASET, "STUDY_HUB_EVERY_MINUTES": str(every), "STUDY_SECRET": SECRET}
        env.pop("HF_HUB_OFFLINE", None)
        self.log = open(tmp_path / f"child-{time.monotonic_ns()}.log", "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.study_hub_child", weights, str(photos), str(data)],
                                     cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True)
        self.lines: list[str] = []
        self._until("READY")

    def _until(self, last: str) -> None:
        while True:
            line = self.proc.stdout.readline()
            assert line, f"the child ended: {Path(self.log.name).read_text()[-3000:]}"
            self.lines.append(line.strip())
            if line.strip() == last:
                return

    def send(self, command: str) -> None:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        self._until("OK")

    def acks(self) -> set[tuple[str, str]]:
        return {tuple(line.split()[2:4]) for line in self.lines if line.startswith("ACK")}

    def ids(self) -> dict[str, str]:
        return {line.split()[1]: line.split()[2] for line in self.lines if line.startswith(("SHOW", "ACK"))}

    def end(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)
        self.proc.wait(120)
        self.log.close()


@pytest.fixture(scope="module")
def available(random_weights_root):
    return load_models(random_weights_root, ("cnn_classifier",))


@pytest.fixture
def hub_env(monkeypatch):
    def set_for(hub, every=60.0):
        for key, value in {"STUDY_HUB_DATASET": DATASET, "HF_ENDPOINT": hub.endpoint, "HF_TOKEN": TOKEN,
                           "STUDY_HUB_EVERY_MINUTES": str(every), "STUDY_SECRET": SECRET}.items():
            monkeypatch.setenv(key, value)
    return set_for


def test_killed_after_the_last_push_every_pushed_answer_comes_back_once(available, random_weights_root, tmp_path,
                                                                          hub_env):
    from study.protocol import Study
    photos = make_photos(tmp_path / "photos", 6)
    data = tmp_path / "data"
    with HubServer(token=TOKEN) as hub:
        child = Child(hub, tmp_path, random_weights_root, photos, data, every=0.01)  # a push every 0.6 s
        child.send("answer A 5")  # A finishes: 1 practice + 2 batches x 2
        child.send("answer B 3")
        child.send("answer C 1")
        child.send("waitpush")
        pushed = child.acks()
        b_next = [line.split()[3] for line in child.lines if line.startswith("SHOW B")][-1]
        hub.commits_fail = True  # no push gets through any more: what follows comes after the last push
        child.send("answer B 1")
        child.send("answer D 2")
        child.end(signal.SIGKILL)  # no clean shutdown
        hub.commits_fail = False
        assert hub.dataset(DATASET).private
        after_last_push = child.acks() - pushed
        assert len(after_last_push) == 3
        on_hub = hub_journal(hub)
        assert set(on_hub.answers) == {trial for _, trial in pushed}

        hub_env(hub)
        settings = settings_for(str(photos), str(tmp_path / "restarted"))  # an empty data folder
        sync = start_hub_sync(settings)
        try:
            study = Study(settings, available, tmp_path / "serve")
            rows = study.store.answers(phase=None)
            assert {(r.participant_id, r.trial_id) for r in rows} == pushed  # every pushed answer is back
            assert len(rows) == len(pushed)  # each once
            assert not after_last_push & {(r.participant_id, r.trial_id) for r in rows}
            # The same rows as the killed app had stored (so the same scores), participants' numbers included.
            original = [r for r in StudyStore(data / "study.sqlite3").answers(phase=None)
                        if (r.participant_id, r.trial_id) in pushed]
            assert sorted(rows, key=lambda r: r.trial_id) == sorted(original, key=lambda r: r.trial_id)
            scored = [r for r in rows if r.phase == "scored"]
            assert summarize(scored, 200, 0) == summarize([r for r in original if r.phase == "scored"], 200, 0)
            # B continues at the pair it was on at the last push; A is done; D was never pushed, so it is unknown.
            ids = child.ids()
            screen = study.start(ids["B"])
            assert screen.kind == "trial" and screen.trial_id == b_next
            assert study.start(ids["A"]).kind == "done"
            assert study.store.trials(ids["D"]) == []
        finally:
            sync.close()
        # Starting again on the restored folder merges nothing twice.
        again = start_hub_sync(settings)
        try:
            assert (again.merged.participants, again.merged.answers) == (0, 0)
            assert len(StudyStore(settings.database).answers(phase=None)) == len(pushed)
        finally:
            again.close()


def test_sigterm_pushes_the_last_answers_before_the_app_ends(random_weights_root, tmp_path):
    photos = make_photos(tmp_path / "photos", 6)
    with HubServer(token=TOKEN) as hub:
        child = Child(hub, tmp_path, random_weights_root, photos, tmp_path / "data", every=60)  # no scheduled push
        child.send("answer A 2")
        child.send("answer B 1")
        assert set(hub_journal(hub).answers) == set()  # nothing pushed yet
        child.end(signal.SIGTERM)
        assert set(hub_journal(hub).answers) == {trial for _, trial in child.acks()}


# ---------------------------------------------------------------------------- start-up without the store's Hub


def plan(number):
    return [TrialSpec("scored", 1, f"photo-{i}.jpg", "cnn", "left") for i in range(3)]


def take_part(store: StudyStore) -> str:
    participant = store.create_participant(plan, lambda model: "weights-1")
    trial = store.trials(participant)[0]
    store.record_answer(participant, trial.id, "left", True, time.time())
    return participant


def test_an_unreachable_hub_at_start_up_refuses_or_starts_empty_and_loses_nothing(tmp_path, caplog):
    port = free_port()
    down = HubSettings(dataset=DATASET, token=TOKEN, endpoint=f"http://127.0.0.1:{port}", every_minutes=0.01)

    def settings_in(name):
        return StudySettings(photos_dir=tmp_path / "photos", data_dir=tmp_path / name)

    with pytest.raises(HubUnreachable) as err:  # the organiser's default: refuse
        StudyHubSync(settings_in("refused"), down).open()
    message = str(err.value)
    assert f"Hub dataset {DATASET} (STUDY_HUB_DATASET) could not be read at start-up" in message
    assert "The study is not served" in message and "STUDY_HUB_IF_UNREACHABLE=start-empty" in message
    assert StudyStore(settings_in("refused").database).answers(phase=None) == []

    with HubServer(token=TOKEN, port=port) as hub:  # an earlier run pushed one participant's answer
        first = StudyHubSync(settings_in("first"), replace(down, every_minutes=60)).open()
        earlier = take_part(first.store)
        first.close()
        repos = hub.repos
    assert set(hub_journal(hub).answers)

    # The Hub is down: a store that has answers starts on them, whatever the choice.
    resumed = StudyHubSync(settings_in("first"), down).open()
    assert "runs on its data folder" in resumed.notice
    resumed.close()

    caplog.set_level(logging.WARNING, logger="study.hub_sync")
    empty = StudyHubSync(settings_in("empty"), replace(down, if_unreachable="start-empty")).open()
    assert "STUDY_HUB_IF_UNREACHABLE=start-empty: the study starts empty" in empty.notice
    assert empty.notice in caplog.text
    later = take_part(empty.store)
    answered = time.time()
    with HubServer(token=TOKEN, port=port) as hub:  # the Hub is back, with what it had
        hub.repos = repos
        assert empty.wait_for_push(after=answered - 60, timeout=60)  # retried on schedule, pushed
        empty.close()
        on_hub = hub_journal(hub)
        assert len(on_hub.answers) == 2  # the earlier run's file was not overwritten
        merged = StudyHubSync(settings_in("merged"), replace(down, endpoint=hub.endpoint)).open()
        merged.close()
    rows = StudyStore(settings_in("merged").database).answers(phase=None)
    assert sorted(r.participant_id for r in rows) == sorted([earlier, later])
    assert sorted(r.participant_number for r in rows) == [0, 1]  # both started as number 0; one was renumbered


def test_a_public_dataset_is_refused(tmp_path):
    with HubServer(token=TOKEN) as hub:
        hub.repos[f"datasets/{DATASET}"] = HubRepo("dataset", private=False)
        hub.repos[f"datasets/{DATASET}"].commit("main", {}, [], "initial")
        settings = StudySettings(photos_dir=tmp_path, data_dir=tmp_path / "data")
        with pytest.raises(StudySetupError, match="is public"):
            StudyHubSync(settings, HubSettings(dataset=DATASET, token=TOKEN, endpoint=hub.endpoint)).open()


def test_settings_and_the_keys_from_study_secret(tmp_path, monkeypatch):
    assert start_hub_sync(StudySettings(data_dir=tmp_path), environ={}) is None  # without it: as before
    with pytest.raises(StudySetupError, match="STUDY_HUB_IF_UNREACHABLE must be one of refuse, start-empty"):
        start_hub_sync(StudySettings(data_dir=tmp_path), environ={"STUDY_HUB_DATASET": DATASET,
                                                                  "STUDY_HUB_IF_UNREACHABLE": "maybe"})
    with pytest.raises(ValueError, match="STUDY_HUB_EVERY_MINUTES"):
        HubSettings.from_env({"STUDY_HUB_EVERY_MINUTES": "0"})
    assert HubSettings.from_env({"STUDY_HUB_DATASET": DATASET, "STUDY_HUB_EVERY_MINUTES": "2.5"}).every_minutes == 2.5

    from study.tab import _secret
    monkeypatch.setenv("STUDY_SECRET", SECRET)
    one, two = tmp_path / "one", tmp_path / "two"
    assert plan_seed(StudySettings(data_dir=one)) == plan_seed(StudySettings(data_dir=two)) == derived_key(
        "plan-seed.secret")
    assert _secret(one, "session-token.key") == _secret(two, "session-token.key") != _secret(one, "browser-state.key")
    assert not one.exists() or not any(one.iterdir())  # nothing secret written to the data folder
    monkeypatch.setenv("STUDY_SECRET", "short")
    with pytest.raises(StudySetupError, match="STUDY_SECRET is too short"):
        plan_seed(StudySettings(data_dir=one))
