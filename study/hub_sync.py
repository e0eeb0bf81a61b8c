"""The study's answers kept on the Hugging Face Hub, for a Space whose disk is wiped on every restart.

With ``STUDY_HUB_DATASET=owner/name`` (and a write token in ``HF_TOKEN``), the SQLite store stays the study's
working copy, and a journal of it is kept in ``<data dir>/hub/journal/`` and pushed to that (private) dataset repo
by ``huggingface_hub``'s ``CommitScheduler``, every ``STUDY_HUB_EVERY_MINUTES`` (default 5) and when the app shuts
down (exit or SIGTERM, as a Space restart sends it). At each push, what changed in the store since the last one is
appended to this run's journal file, ``journal/<UTC start>-<random>.jsonl``: one JSON object a line, for a new
participant, a planned trial, a trial replaced by a new plan, a pair shown, an answer. Each run writes its own
file, so no push ever overwrites another run's answers.

At start-up the journal files on the Hub that the data folder lacks are downloaded and merged into the store,
record by record under their ids (a participant, trial or answer already there is skipped): on an empty data folder
that restores the study as it was at the last push, so participants continue at their current pair (their ids
come back, with ``STUDY_SECRET`` the keys too), the scores are the same and nothing is counted twice. Only what
was answered after the last push can be lost: at most ``STUDY_HUB_EVERY_MINUTES`` of answers, plus the time a push
takes, when the app is killed without a clean shutdown.

If the Hub cannot be reached at start-up and the store is empty, the organiser chooses with
``STUDY_HUB_IF_UNREACHABLE``: ``refuse`` (default: the study is not served, the message says why) or
``start-empty`` (the study starts empty; its answers are pushed once the Hub is back, and the ones already there
are merged back at the next start that reaches the Hub). The dataset must be private: it holds the answer key of
every planned pair.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import sqlite3
import tempfile
import threading
import time
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator, Mapping

from .protocol import StudySettings, StudySetupError
from .store import StudyStore

log = logging.getLogger(__name__)

DATASET_ENV = "STUDY_HUB_DATASET"
EVERY_ENV = "STUDY_HUB_EVERY_MINUTES"
UNREACHABLE_ENV = "STUDY_HUB_IF_UNREACHABLE"
UNREACHABLE_CHOICES = ("refuse", "start-empty")
HUB_FOLDER = "hub"       # inside the data folder: what is pushed (README.md, journal/)
JOURNAL = "journal"
SHOWN_COLUMNS = ("shown_at", "shown_weights")
DATASET_CARD = """---
pretty_name: Realism study answers
---

# Realism study answers

Written by the Colorization Compare app (`study/hub_sync.py`). Keep this dataset **private**: it holds the answer
key of every planned pair. `journal/*.jsonl` has one file per run of the app, one JSON object a line (`t`:
`participant`, `trial`, `replaced`, `shown` or `answer`); the app restores its study from them. The organiser's
"Study results" tab exports every answer as CSV.
"""


@dataclass(frozen=True)
class HubSettings:
    """Where and how often the study's journal is pushed; ``from_env`` reads the environment."""

    dataset: str | None = None
    every_minutes: float = 5.0
    if_unreachable: str = "refuse"
    token: str | None = field(default=None, repr=False)
    endpoint: str | None = None  # None: huggingface_hub's (HF_ENDPOINT or the Hub)

    def __post_init__(self):
        if not self.every_minutes > 0:
            raise ValueError(f"{EVERY_ENV} must be a positive number of minutes, got {self.every_minutes}")
        if self.if_unreachable not in UNREACHABLE_CHOICES:
            raise ValueError(f"{UNREACHABLE_ENV} must be one of {', '.join(UNREACHABLE_CHOICES)}, "
                             f"got {self.if_unreachable!r}")
        if self.dataset is not None and (self.dataset.count("/") != 1 or "@" in self.dataset):
            raise ValueError(f"{DATASET_ENV} must be owner/name, got {self.dataset!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> HubSettings:
        try:
            every = float(environ.get(EVERY_ENV, "").strip() or 5)
        except ValueError:
            raise ValueError(f"{EVERY_ENV} must be a number of minutes, got {environ.get(EVERY_ENV)!r}") from None
        return cls(dataset=environ.get(DATASET_ENV, "").strip() or None, every_minutes=every,
                   if_unreachable=environ.get(UNREACHABLE_ENV, "").strip() or "refuse",
                   token=environ.get("HF_TOKEN") or None, endpoint=environ.get("HF_ENDPOINT") or None)


class HubUnreachable(StudySetupError):
    """The dataset could not be read at start-up, the store is empty, and the organiser chose to refuse."""


# ------------------------------------------------------------------------------------------------ the journal


@dataclass
class JournalState:
    """What a journal says the store holds: rows by id (trials still planned), and the trials replaced."""

    participants: dict[str, dict] = field(default_factory=dict)
    trials: dict[str, dict] = field(default_factory=dict)
    replaced: set[str] = field(default_factory=set)
    shown: dict[str, tuple] = field(default_factory=dict)
    answers: dict[str, dict] = field(default_factory=dict)

    def apply(self, record: dict) -> None:
        kind = record.get("t")
        row = {k: v for k, v in record.items() if k != "t"}
        if kind == "participant":
            self.participants.setdefault(row["id"], row)
        elif kind == "trial" and row["id"] not in self.replaced:
            self.trials.setdefault(row["id"], row)
        elif kind == "replaced" and row["id"] not in self.answers:
            self.replaced.add(row["id"])
            self.trials.pop(row["id"], None)
        elif kind == "shown":
            self.shown[row["id"]] = tuple(row.get(c) for c in SHOWN_COLUMNS)
        elif kind == "answer":
            self.answers.setdefault(row["trial_id"], row)


def read_journal(folder: Path) -> Iterator[dict]:
    """Every record of the journal files in ``folder``, oldest file first; a line that does not parse (the end of
    a file cut by a crash) is skipped."""
    for path in sorted(Path(folder).glob("*.jsonl")):
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    log.warning("study journal %s: skipped a line that does not parse", path.name)
                    continue
                if isinstance(record, dict):
                    yield record


def fold(records: Iterable[dict]) -> JournalState:
    state = JournalState()
    for record in records:
        state.apply(record)
    return state


def _snapshot(store: StudyStore) -> tuple[list[dict], list[dict], list[dict]]:
    """Every participant, trial and answer, read in one transaction (a consistent snapshot)."""
    with closing(store._connect()) as con:
        con.execute("BEGIN")
        try:
            return tuple([dict(r) for r in con.execute(f"SELECT * FROM {table} ORDER BY rowid")]
                         for table in ("participants", "trials", "answers"))
        finally:
            con.execute("COMMIT")


def changes(store: StudyStore, state: JournalState) -> list[dict]:
    """The records that bring ``state`` up to the store, in an order a restore can apply."""
    participants, trials, answers = _snapshot(store)
    live = {t["id"] for t in trials}
    out = [{"t": "participant", **p} for p in participants if p["id"] not in state.participants]
    out += [{"t": "replaced", "id": trial_id} for trial_id in state.trials if trial_id not in live]
    out += [{"t": "trial", **{k: v for k, v in t.items() if k not in SHOWN_COLUMNS}}
            for t in trials if t["id"] not in state.trials]
    out += [{"t": "shown", "id": t["id"], **{c: t[c] for c in SHOWN_COLUMNS}} for t in trials
            if t["shown_at"] is not None and state.shown.get(t["id"]) != tuple(t[c] for c in SHOWN_COLUMNS)]
    out += [{"t": "answer", **a} for a in answers if a["trial_id"] not in state.answers]
    return out


@dataclass(frozen=True)
class Merged:
    participants: int
    trials: int
    answers: int
    skipped: int  # records whose participant or trial is missing, or whose place is taken


def merge(store: StudyStore, state: JournalState) -> Merged:
    """Insert what ``state`` holds and the store lacks, by id, in one transaction: nothing is ever inserted twice.
    A participant keeps their arrival number unless the store gave it to someone else (two runs that each started
    empty), then they get the next free one."""
    counts = dict(participants=0, trials=0, answers=0, skipped=0)
    with store._write() as con:
        columns = {table: [r["name"] for r in con.execute(f"PRAGMA table_info({table})")]
                   for table in ("participants", "trials", "answers")}

        def insert(table: str, row: dict) -> bool:
            names = [c for c in columns[table] if c in row]
            try:
                con.execute(f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                            [row[c] for c in names])
            except sqlite3.IntegrityError:
                counts["skipped"] += 1
                return False
            return True

        known = {r[0] for r in con.execute("SELECT id FROM participants")}
        numbers = {r[0] for r in con.execute("SELECT number FROM participants")}
        fresh = sorted((p for p in state.participants.values() if p["id"] not in known),
                       key=lambda p: (p["number"], p["created_at"], p["id"]))
        clashing = []
        for p in fresh:
            if p["number"] in numbers:
                clashing.append(p)
            elif insert("participants", p):
                numbers.add(p["number"])
                counts["participants"] += 1
        for p in clashing:
            number = max(numbers, default=-1) + 1
            if insert("participants", {**p, "number": number}):
                numbers.add(number)
                counts["participants"] += 1
        trials = {r[0] for r in con.execute("SELECT id FROM trials")}
        for t in sorted(state.trials.values(), key=lambda t: (t["participant_id"], t["position"])):
            if t["id"] in trials:
                continue
            shown = dict(zip(SHOWN_COLUMNS, state.shown.get(t["id"], (None, None))))
            counts["trials"] += insert("trials", {**t, **shown})
        answered = {r[0] for r in con.execute("SELECT trial_id FROM answers")}
        for a in sorted(state.answers.values(), key=lambda a: a["answered_at"]):
            if a["trial_id"] not in answered:
                counts["answers"] += insert("answers", a)
    return Merged(**counts)


class Journal:
    """This run's journal file, and what the journal files in the folder say so far."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        self.path = self.folder / f"{stamp}-{secrets.token_hex(4)}.jsonl"  # created at its first record
        self.state = fold(read_journal(self.folder))
        self.lock = threading.Lock()

    def reload(self) -> None:
        with self.lock:
            self.state = fold(read_journal(self.folder))

    def export(self, store: StudyStore) -> int:
        """Append what changed in the store since the last export; returns how many records."""
        with self.lock:
            records = changes(store, self.state)
            if records:
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records))
                    f.flush()
                    os.fsync(f.fileno())
                for record in records:
                    self.state.apply(record)
            return len(records)


# --------------------------------------------------------------------------------------------- the Hub side


def _scheduler_class():
    from huggingface_hub import CommitScheduler

    class JournalScheduler(CommitScheduler):
        """A ``CommitScheduler`` that brings the journal up to the store before each push."""

        def __init__(self, sync: StudyHubSync, **kwargs):
            self.sync = sync  # before super().__init__, whose thread pushes at once
            super().__init__(**kwargs)

        def push_to_hub(self):
            started = time.time()
            self.sync.journal.export(self.sync.store)
            info = super().push_to_hub()
            self.sync._pushed(started)
            return info

    return JournalScheduler


class StudyHubSync:
    """Restores the store from the dataset at start-up (``open``), then keeps pushing its journal."""

    def __init__(self, settings: StudySettings, hub: HubSettings):
        if not hub.dataset:
            raise ValueError(f"no dataset: set {DATASET_ENV}")
        self.settings, self.hub = settings, hub
        self.folder = Path(settings.data_dir) / HUB_FOLDER
        self.store: StudyStore | None = None
        self.journal: Journal | None = None
        self.scheduler = None
        self.notice: str | None = None  # what start-up had to say to the organiser (also logged)
        self.merged: Merged | None = None
        self.last_push: float | None = None  # when the export of the last successful push began
        self._pushes = threading.Condition()
        self._stop = threading.Event()
        self._previous_sigterm = None

    def _api(self):
        from huggingface_hub import HfApi
        return HfApi(endpoint=self.hub.endpoint, token=self.hub.token)

    # ------------------------------------------------------------------------------------------- start-up

    def open(self) -> StudyHubSync:
        self.folder.mkdir(parents=True, exist_ok=True)
        card = self.folder / "README.md"
        if not card.is_file():
            card.write_text(DATASET_CARD)
        self.store = StudyStore(self.settings.database)
        with closing(self.store._connect()) as con:
            empty = con.execute("SELECT COUNT(*) FROM participants").fetchone()[0] == 0
        try:
            fetched = self._fetch()
        except StudySetupError:
            raise
        except Exception as err:  # noqa: BLE001 - whatever kept the Hub from answering
            reason = f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:300]}"
            where = f"The study's Hub dataset {self.hub.dataset} ({DATASET_ENV}) could not be read at start-up ({reason})."
            if empty and self.hub.if_unreachable == "refuse":
                raise HubUnreachable(
                    f"{where} This app's study data folder is empty, so starting now would serve the study without "
                    "the answers already given there, and participants could not continue. The study is not "
                    f"served. Restart the app once the Hub is reachable, or set {UNREACHABLE_ENV}=start-empty to "
                    "start an empty study now (the answers on the Hub stay there and are merged back at the next "
                    "start that reaches it).") from err
            self.notice = (f"{where} " + (
                f"{UNREACHABLE_ENV}=start-empty: the study starts empty. Its answers are pushed once the Hub is "
                "back, and the answers already on the Hub are merged back at the next start that reaches it; "
                "until then participants who started earlier cannot continue." if empty else
                "The study runs on its data folder and pushes its answers once the Hub is back."))
            log.warning(self.notice)
            fetched = 0
        self.journal = Journal(self.folder / JOURNAL)
        self.merged = merge(self.store, self.journal.state)
        if fetched or self.merged.participants or self.merged.answers:
            log.info("study restored from %s: %d journal file(s) fetched; %s", self.hub.dataset, fetched, self.merged)
        self._start_scheduler()
        self._handle_sigterm()
        return self

    def _fetch(self) -> int:
        """Download the dataset's journal files the data folder lacks; returns how many. A dataset that does not
        exist yet is created (private)."""
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import RepositoryNotFoundError

        api = self._api()
        try:
            info = api.repo_info(self.hub.dataset, repo_type="dataset")
        except RepositoryNotFoundError:
            api.create_repo(self.hub.dataset, repo_type="dataset", private=True, exist_ok=True)
            return 0
        if info.private is False:
            raise StudySetupError(
                f"The study's Hub dataset {self.hub.dataset} ({DATASET_ENV}) is public, and it would hold the answer "
                "key of every planned pair. Make it private (its Settings page on the Hub) and restart the app.")
        local = self.folder / JOURNAL
        wanted = [s.rfilename for s in info.siblings or []
                  if s.rfilename.startswith(f"{JOURNAL}/") and s.rfilename.endswith(".jsonl")
                  and not (self.folder / s.rfilename).is_file()]
        if not wanted:
            return 0
        local.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="study-hub-") as cache:
            # All are downloaded before any is kept, so a fetch cut short merges nothing.
            paths = [hf_hub_download(self.hub.dataset, name, repo_type="dataset", revision=info.sha, cache_dir=cache,
                                     endpoint=self.hub.endpoint, token=self.hub.token) for name in wanted]
            for name, path in zip(wanted, paths):
                partial = self.folder / f"{name}.part"
                shutil.copyfile(path, partial)
                os.replace(partial, self.folder / name)
        return len(wanted)

    def _start_scheduler(self) -> None:
        cls = _scheduler_class()

        def create() -> bool:
            try:
                self.scheduler = cls(self, repo_id=self.hub.dataset, repo_type="dataset", folder_path=self.folder,
                                     every=self.hub.every_minutes, private=True, hf_api=self._api(),
                                     allow_patterns=["README.md", f"{JOURNAL}/*.jsonl"])
                return True
            except Exception as err:  # noqa: BLE001 - the Hub is down: keep the journal, try again later
                log.warning("study: cannot push to %s yet (%s: %s); trying again every %g minute(s)",
                            self.hub.dataset, type(err).__name__, str(err).splitlines()[0] if str(err) else "",
                            self.hub.every_minutes)
                return False

        if create():
            return

        def retry():
            while not self._stop.wait(self.hub.every_minutes * 60):
                if create():
                    return

        threading.Thread(target=retry, daemon=True, name="study-hub-retry").start()

    # ------------------------------------------------------------------------------------------- pushing

    def _pushed(self, started: float) -> None:
        with self._pushes:
            self.last_push = started
            self._pushes.notify_all()

    def wait_for_push(self, after: float, timeout: float) -> bool:
        """Wait until a push whose export began after ``after`` has succeeded."""
        with self._pushes:
            return self._pushes.wait_for(lambda: self.last_push is not None and self.last_push > after, timeout)

    def push_now(self, timeout: float = 60) -> bool:
        """Export and push now (after any push in progress); False if it failed or there is no scheduler yet."""
        if self.scheduler is None:
            return False
        try:
            self.scheduler.trigger().result(timeout)
            return True
        except Exception as err:  # noqa: BLE001
            log.error("study: pushing to %s failed: %s", self.hub.dataset, err)
            return False

    def _handle_sigterm(self) -> None:
        """On SIGTERM (a Space restarting), push before the process ends; only the main thread can set this, and
        a handler someone else installed is left alone."""
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None):
            return

        def on_sigterm(signum, frame):
            self.push_now(timeout=60)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

        self._previous_sigterm = signal.signal(signal.SIGTERM, on_sigterm)

    def close(self) -> None:
        """Push what is left and stop (tests; the app relies on the scheduler's exit hook and SIGTERM)."""
        self._stop.set()
        if self.scheduler is not None:
            self.push_now()
            self.scheduler.stop()
        if self._previous_sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None


def start_hub_sync(settings: StudySettings, environ: Mapping[str, str] = os.environ) -> StudyHubSync | None:
    """The study's Hub sync when ``STUDY_HUB_DATASET`` is set (restored and pushing), else None. Raises
    ``StudySetupError`` when the study must not be served (see ``StudyHubSync.open``)."""
    try:
        hub = HubSettings.from_env(environ)
    except ValueError as err:
        raise StudySetupError(str(err)) from None
    if not hub.dataset:
        return None
    if not hub.token:
        log.warning("%s is set but HF_TOKEN is not: pushing the study's answers needs a token with write access",
                    DATASET_ENV)
    if not environ.get("STUDY_SECRET"):
        log.warning("%s is set without STUDY_SECRET: after a restart on an empty data folder the answers come "
                    "back, but the plan's seed and the page and browser keys are new, so participants cannot "
                    "continue where they were. Set STUDY_SECRET as a Space secret.", DATASET_ENV)
    return StudyHubSync(settings, hub).open()
