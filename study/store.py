"""The realism study's SQLite store: participants, their planned trials (with the answer key) and every answer.

Durability: the database runs in WAL mode with ``synchronous=FULL``, so every answer is fsynced to the WAL before
``record_answer`` returns. With WAL, ``NORMAL`` would already survive a crash of the app; ``FULL`` also survives a
power cut or an OS crash, and its one fsync per answer is nothing at the rate people answer. Each call opens its
own connection, so the store is safe to use from the app's worker threads and a restarted app simply reopens it.

Integrity: an answer is accepted only for the participant's current trial (the first one without an answer, checked
inside a write transaction), and ``answers.trial_id`` is the primary key, so no trial is ever answered twice. Whether
the answer is right, and its case, are derived here, from the stored answer key, and nowhere else. A trial is an
immutable plan (photo, model, weights, side): one that can no longer be served as planned is replaced by a new trial
with a new id (``replan``), and an answered trial is never changed or removed (its answer references it).
"""
from __future__ import annotations

import csv
import secrets
import sqlite3
import time
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, NamedTuple, Sequence, TextIO

SIDES = ("left", "right")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS participants (
    id          TEXT PRIMARY KEY,
    number      INTEGER NOT NULL UNIQUE,   -- order of arrival, 0, 1, 2, ...: rotates the models' balance
    created_at  REAL NOT NULL              -- Unix time
);
CREATE TABLE IF NOT EXISTS trials (
    id               TEXT PRIMARY KEY,     -- random hex, generated here; travels with the participant's page
    participant_id   TEXT NOT NULL REFERENCES participants(id),
    position         INTEGER NOT NULL,     -- 0, 1, ...: the order the participant sees the pairs in
    phase            TEXT NOT NULL CHECK (phase IN ('practice', 'scored')),
    batch            INTEGER NOT NULL,     -- 1-based; 0 for the practice round
    photo            TEXT NOT NULL,
    model            TEXT NOT NULL,
    weights          TEXT NOT NULL,        -- identity of the weights the pair is to be served with
    recoloured_side  TEXT NOT NULL CHECK (recoloured_side IN ('left', 'right')),
    shown_at         REAL,                 -- Unix time the pair was last sent to the participant
    shown_weights    TEXT,                 -- identity of the weights whose recolouring was sent then
    UNIQUE (participant_id, position)
);
CREATE TABLE IF NOT EXISTS answers (
    trial_id        TEXT PRIMARY KEY REFERENCES trials(id),   -- one answer per trial, ever
    choice          TEXT NOT NULL CHECK (choice IN ('left', 'right')),   -- the side picked as recoloured
    confident       INTEGER NOT NULL CHECK (confident IN (0, 1)),
    correct         INTEGER NOT NULL CHECK (correct IN (0, 1)),
    case_number     INTEGER NOT NULL CHECK (case_number BETWEEN 1 AND 4),
    response_ms     INTEGER,
    answered_at     REAL NOT NULL,
    weights         TEXT NOT NULL         -- identity of the weights whose recolouring the participant judged
);
"""


#: Columns added after the first release, with how existing rows are filled: (table, column, type, backfill SQL).
_ADDED_COLUMNS = (
    ("trials", "shown_weights", "TEXT", None),
    ("answers", "weights", "TEXT NOT NULL DEFAULT ''",
     "UPDATE answers SET weights = (SELECT t.weights FROM trials t WHERE t.id = answers.trial_id)"),
    ("participants", "account", "TEXT", None),       # the signed-in account's stable id (Hugging Face: "sub")
    ("participants", "account_name", "TEXT", None),  # its user name when it signed up, for the organiser's eyes
)
#: One participation per account, enforced by the database (participants without an account are not limited).
_ACCOUNT_INDEX = ("CREATE UNIQUE INDEX IF NOT EXISTS participants_account ON participants(account) "
                  "WHERE account IS NOT NULL")


def decision_case(correct: bool, confident: bool) -> int:
    """The paper's case (1..4) of one decision: did the participant pick the recolouring, and were they sure."""
    if correct:
        return 1 if confident else 2
    return 4 if confident else 3


class Decision(NamedTuple):
    """What a recorded answer turned out to be."""

    correct: bool
    case_number: int


class AnswerRejected(Exception):
    """The answer is not for the participant's current trial (replayed, out of order, or already answered)."""


@dataclass(frozen=True)
class TrialSpec:
    """One planned pair: which photo, which model's recolouring, and on which side the recolouring is shown."""

    phase: str
    batch: int
    photo: str
    model: str
    recoloured_side: str


@dataclass(frozen=True)
class Trial:
    id: str
    participant_id: str
    position: int
    phase: str
    batch: int
    photo: str
    model: str
    weights: str
    recoloured_side: str
    answered: bool


@dataclass(frozen=True)
class AnswerRow:
    """One given answer with its trial, as analysed and exported."""

    participant_id: str
    participant_number: int
    trial_id: str
    position: int
    phase: str
    batch: int
    photo: str
    model: str
    weights: str  # the weights whose recolouring was judged
    recoloured_side: str
    choice: str
    confident: bool
    correct: bool
    case_number: int
    response_ms: int | None
    shown_at: float | None
    answered_at: float
    account: str | None = None  # the participant's signed-in account (its user name), if they signed in


class StudyStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as con:
            con.execute("PRAGMA journal_mode=WAL")  # persistent: stored in the database file
            con.executescript(_SCHEMA)
        with self._write() as con:  # a database written by an earlier version gets the newer columns
            for table, column, kind, backfill in _ADDED_COLUMNS:
                if column not in {r["name"] for r in con.execute(f"PRAGMA table_info({table})")}:
                    con.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
                    if backfill:
                        con.execute(backfill)
            con.execute(_ACCOUNT_INDEX)

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        con.row_factory = sqlite3.Row
        con.execute("PRAGMA synchronous=FULL")
        con.execute("PRAGMA foreign_keys=ON")
        return con

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that holds the write lock from its start, so its reads cannot go stale."""
        with closing(self._connect()) as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def create_participant(self, plan: Callable[[int], Sequence[TrialSpec]], weights: Callable[[str], str],
                           account: str | None = None, account_name: str | None = None) -> str:
        """A new participant with the trials ``plan(number)`` returns for their arrival number; ``weights(model)``
        names the weights each model's recolourings come from. Returns the participant's random id. With an
        ``account`` (a signed-in account's stable id) that has a participant already, that one is returned and
        nothing is created: an account takes part once."""
        participant_id = secrets.token_urlsafe(16)
        with self._write() as con:
            if account is not None:
                row = con.execute("SELECT id FROM participants WHERE account = ?", (account,)).fetchone()
                if row is not None:
                    return row["id"]
            number = con.execute("SELECT COUNT(*) FROM participants").fetchone()[0]
            con.execute("INSERT INTO participants (id, number, created_at, account, account_name) "
                        "VALUES (?, ?, ?, ?, ?)", (participant_id, number, time.time(), account, account_name))
            _insert_trials(con, participant_id, enumerate(plan(number)), weights)
        return participant_id

    def participant_of(self, account: str) -> str | None:
        """The participant id of a signed-in account, or None if it has not taken part."""
        with closing(self._connect()) as con:
            row = con.execute("SELECT id FROM participants WHERE account = ?", (account,)).fetchone()
        return None if row is None else row["id"]

    def trials_count(self) -> int:
        """How many trials are planned, over all participants."""
        with closing(self._connect()) as con:
            return con.execute("SELECT COUNT(*) FROM trials").fetchone()[0]

    def trials(self, participant_id: str) -> list[Trial]:
        """The participant's trials in order (empty for an unknown participant)."""
        with closing(self._connect()) as con:
            return _trials(con, participant_id)

    def replan(self, participant_id: str, plan: Callable[[list[Trial]], Mapping[str, TrialSpec]],
               weights: Callable[[str], str]) -> int:
        """Replace unanswered trials of the participant in one write transaction. ``plan(trials)`` gets their
        trials as they are inside the transaction and returns, by trial id, the new plan of each unanswered trial
        to replace; each replacement gets a new id and keeps the old trial's position, so a page still showing the
        old pair can no longer answer it. Answered trials are never touched. Returns how many were replaced."""
        with self._write() as con:
            trials = {t.id: t for t in _trials(con, participant_id)}
            replacements = plan(list(trials.values()))
            if any(trials[trial_id].answered for trial_id in replacements):
                raise ValueError("an answered trial cannot be replanned")
            for trial_id in replacements:
                # Also refused by the database: answers.trial_id references the trial (foreign keys are on).
                con.execute("DELETE FROM trials WHERE id = ?", (trial_id,))
            _insert_trials(con, participant_id,
                           [(trials[trial_id].position, spec) for trial_id, spec in replacements.items()], weights)
        return len(replacements)

    def mark_shown(self, trial_id: str, at: float, weights: str) -> None:
        """The trial's pair, with the recolouring of ``weights``, has been sent to the participant at ``at``."""
        with self._write() as con:
            con.execute("UPDATE trials SET shown_at = ?, shown_weights = ? WHERE id = ?", (at, weights, trial_id))

    def record_answer(self, participant_id: str, trial_id: str, choice: str, confident: bool, at: float) -> Decision:
        """Store the participant's answer to ``trial_id`` (``choice``: the side they picked as recoloured) and return
        whether it was right and its case, derived from the stored answer key. Raises ``AnswerRejected`` unless it
        is the participant's current trial."""
        with self._write() as con:
            current = con.execute(
                "SELECT t.id, t.recoloured_side, t.weights, t.shown_at, t.shown_weights FROM trials t "
                "LEFT JOIN answers a ON a.trial_id = t.id "
                "WHERE t.participant_id = ? AND a.trial_id IS NULL ORDER BY t.position LIMIT 1",
                (participant_id,),
            ).fetchone()
            if current is None or current["id"] != trial_id:
                raise AnswerRejected(f"trial {trial_id} is not the current trial of participant {participant_id}")
            correct = choice == current["recoloured_side"]
            decision = Decision(correct, decision_case(correct, confident))
            shown_at = current["shown_at"]
            response_ms = None if shown_at is None else round((at - shown_at) * 1000)
            try:
                con.execute(
                    "INSERT INTO answers (trial_id, choice, confident, weights, correct, case_number, response_ms, "
                    "answered_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (trial_id, choice, int(confident), current["shown_weights"] or current["weights"],
                     int(decision.correct), decision.case_number, response_ms, at),
                )
            except sqlite3.IntegrityError as err:
                raise AnswerRejected(f"trial {trial_id} has already been answered") from err
        return decision

    def decision(self, trial_id: str) -> Decision | None:
        """The stored answer to ``trial_id`` (right or not, its case), or None if it has none."""
        with closing(self._connect()) as con:
            row = con.execute("SELECT correct, case_number FROM answers WHERE trial_id = ?", (trial_id,)).fetchone()
        return None if row is None else Decision(bool(row["correct"]), row["case_number"])

    def answers(self, phase: str | None = "scored") -> list[AnswerRow]:
        """Every given answer (of one phase, or of all with ``phase=None``), in the order they were given."""
        where, args = ("WHERE t.phase = ?", (phase,)) if phase else ("", ())
        with closing(self._connect()) as con:
            rows = con.execute(
                "SELECT p.id AS participant_id, p.number AS participant_number, t.id AS trial_id, t.position, "
                "t.phase, t.batch, t.photo, t.model, a.weights, t.recoloured_side, a.choice, a.confident, "
                "a.correct, a.case_number, a.response_ms, t.shown_at, a.answered_at, p.account_name AS account "
                "FROM answers a JOIN trials t ON t.id = a.trial_id JOIN participants p ON p.id = t.participant_id "
                f"{where} ORDER BY a.answered_at, t.participant_id, t.position",
                args,
            ).fetchall()
        return [AnswerRow(**{**dict(r), "confident": bool(r["confident"]), "correct": bool(r["correct"])})
                for r in rows]

    def write_csv(self, out: TextIO, flagged: Mapping[str, object] = {},
                  flags: Mapping[str, Iterable[str]] = {}) -> int:
        """Every raw answer, practice included, as CSV with ISO 8601 UTC timestamps, a ``flagged_fast`` column
        (1 for the participants in ``flagged``, e.g. ``scoring.fast_participants``) and a ``flags`` column (the
        participant's flag kinds in ``flags``, e.g. ``scoring.flag_participants``, separated by spaces); returns
        the row count."""
        rows = self.answers(phase=None)
        fields = list(AnswerRow.__dataclass_fields__)
        writer = csv.DictWriter(out, fieldnames=[*fields, "flagged_fast", "flags"])
        writer.writeheader()
        for row in rows:
            record = {name: getattr(row, name) for name in fields}
            record["flagged_fast"] = int(row.participant_id in flagged)
            record["flags"] = " ".join(flags.get(row.participant_id, ()))
            record["shown_at"] = _iso(row.shown_at)
            record["answered_at"] = _iso(row.answered_at)
            writer.writerow(record)
        return len(rows)


def _trials(con: sqlite3.Connection, participant_id: str) -> list[Trial]:
    rows = con.execute(
        "SELECT t.*, a.trial_id IS NOT NULL AS answered FROM trials t "
        "LEFT JOIN answers a ON a.trial_id = t.id WHERE t.participant_id = ? ORDER BY t.position",
        (participant_id,),
    ).fetchall()
    return [Trial(id=r["id"], participant_id=r["participant_id"], position=r["position"], phase=r["phase"],
                  batch=r["batch"], photo=r["photo"], model=r["model"], weights=r["weights"],
                  recoloured_side=r["recoloured_side"], answered=bool(r["answered"])) for r in rows]


def _insert_trials(con: sqlite3.Connection, participant_id: str, planned: Iterable[tuple[int, TrialSpec]],
                   weights: Callable[[str], str]) -> None:
    """Insert planned trials (position, spec), each under a new random id."""
    con.executemany(
        "INSERT INTO trials (id, participant_id, position, phase, batch, photo, model, weights, recoloured_side) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(secrets.token_hex(16), participant_id, position, t.phase, t.batch, t.photo, t.model, weights(t.model),
          t.recoloured_side) for position, t in planned],
    )


def _iso(unix_time: float | None) -> str:
    if unix_time is None:
        return ""
    return datetime.fromtimestamp(unix_time, timezone.utc).isoformat(timespec="milliseconds")
