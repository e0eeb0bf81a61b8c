"""The blind real-vs-fake realism study of ParaColorizer (section IV-D-1, Table III): its protocol, without any UI.

A participant sees pairs: a ground-truth colour photo and one model's recolouring of its grey version, side by
side in random order. They pick the recoloured one and say whether they are confident, which gives the paper's
four cases (``study.scoring``).

This module holds the settings, the balanced assignment and ``Study``, which runs participants through it on top
of ``study.store.StudyStore`` and ``study.stimuli``. ``study.tab`` puts it in the Gradio app.
"""
from __future__ import annotations

import atexit
import heapq
import os
import random
import secrets
import tempfile
import threading
import time
from collections import Counter
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from colorizers.pipeline import Colorizer

from .keys import derived_key
from .scoring import FlagRules
from .stimuli import Stimuli, lower_thread_priority, save_blind_pair
from .store import SIDES, AnswerRejected, StudyStore, Trial, TrialSpec

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PHOTOS = REPO_ROOT / "assets" / "study"
DEFAULT_DATA_DIR = REPO_ROOT / "data" / "study"


# --------------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class StudySettings:
    """The organiser's choices; ``from_env`` reads them from ``STUDY_*`` environment variables."""

    photos_dir: Path = DEFAULT_PHOTOS
    data_dir: Path = DEFAULT_DATA_DIR
    db_path: Path | None = None  # default: <data_dir>/study.sqlite3
    models: tuple[str, ...] | None = None  # default: every available model
    practice_pairs: int = 2
    batches: int = 4
    pairs_per_batch: int = 5
    seed: int | str | None = None  # None: a secret generated on first start, kept in <data_dir>/plan-seed.secret
    jpeg_quality: int = 90
    bootstrap_samples: int = 2000
    admin_password: str | None = field(default=None, repr=False)
    fast_ms: int = 1000  # participants whose median time per scored pair is below this are flagged as too fast
    too_right_percent: int = 95  # participants right on at least this share of their pairs are flagged
    sign_in: bool = False  # participants sign in with a Hugging Face account, and each account takes part once
    starts_per_hour: int = 20  # new participants one client (IP address) may start per hour

    ENV_VARS = {
        "photos_dir": "STUDY_PHOTOS", "data_dir": "STUDY_DATA_DIR", "db_path": "STUDY_DB",
        "models": "STUDY_MODELS", "practice_pairs": "STUDY_PRACTICE_PAIRS", "batches": "STUDY_BATCHES",
        "pairs_per_batch": "STUDY_PAIRS_PER_BATCH", "seed": "STUDY_SEED", "admin_password": "STUDY_ADMIN_PASSWORD",
        "fast_ms": "STUDY_FAST_MS", "starts_per_hour": "STUDY_STARTS_PER_HOUR",
        "too_right_percent": "STUDY_TOO_RIGHT_PERCENT", "sign_in": "STUDY_SIGN_IN",
    }

    def __post_init__(self):
        for name in ("batches", "pairs_per_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.practice_pairs < 0:
            raise ValueError(f"practice_pairs must be 0 or more, got {self.practice_pairs}")
        if self.fast_ms < 0 or self.starts_per_hour < 1:
            raise ValueError("fast_ms must be 0 or more and starts_per_hour at least 1")
        if not 0 < self.too_right_percent <= 101:
            raise ValueError(f"too_right_percent must be 1 to 100 (101: never), got {self.too_right_percent}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> StudySettings:
        values: dict = {}
        for name, var in cls.ENV_VARS.items():
            raw = environ.get(var, "").strip()
            if not raw:
                continue
            if name in ("photos_dir", "data_dir", "db_path"):
                values[name] = Path(raw).expanduser()
            elif name == "models":
                values[name] = tuple(m.strip() for m in raw.split(",") if m.strip())
            elif name == "admin_password":
                values[name] = raw
            elif name == "sign_in":
                if raw.lower() not in ("1", "true", "yes", "0", "false", "no"):
                    raise ValueError(f"{var} must be 1 (participants sign in) or 0, got {raw!r}")
                values[name] = raw.lower() in ("1", "true", "yes")
            else:
                try:
                    values[name] = int(raw)
                except ValueError:
                    raise ValueError(f"{var} must be a whole number, got {raw!r}") from None
        return cls(**values)

    @property
    def database(self) -> Path:
        return Path(self.db_path) if self.db_path else Path(self.data_dir) / "study.sqlite3"

    @property
    def flag_rules(self) -> FlagRules:
        """When a participant is flagged (``study.scoring.flag_participants``)."""
        return FlagRules(fast_ms=self.fast_ms, too_right=self.too_right_percent / 100)

    @property
    def scored_pairs(self) -> int:
        return self.batches * self.pairs_per_batch

    @property
    def photos_per_participant(self) -> int:
        return self.practice_pairs + self.scored_pairs


@dataclass(frozen=True)
class Account:
    """A signed-in participant's account: ``id`` stays the same for the account for good (Hugging Face's "sub"),
    ``name`` is its user name (shown to the organiser)."""

    id: str
    name: str


SIGN_IN_FIRST = ("This study counts each person once: **sign in with your Hugging Face account** (the button above) "
                 "to take part. Only your user name is stored with your answers.")


class StudySetupError(RuntimeError):
    """The study cannot run as configured; the message says why and what to change."""


SEED_FILE = "plan-seed.secret"


def plan_seed(settings: StudySettings) -> str:
    """The seed of the assignment: the organiser's ``STUDY_SEED`` (a reproducible pilot), or else a secret made
    on the study's first start and kept in its data folder, so the public code cannot replay the plan (with a
    known seed, re-running ``assign_trials`` gives away every participant's answer key)."""
    if settings.seed is not None:
        return str(settings.seed)
    derived = derived_key(SEED_FILE)  # from STUDY_SECRET (a Space secret) when set: nothing on disk
    if derived:
        return derived
    path = Path(settings.data_dir) / SEED_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:  # created once, atomically: two apps starting on one folder agree on it
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32))
    for _ in range(50):  # another process may be between creating and writing it
        seed = path.read_text().strip()
        if seed:
            return seed
        time.sleep(0.01)
    raise StudySetupError(f"the study's seed file {SEED_FILE} in STUDY_DATA_DIR is empty; delete it and restart")


class StartLimiter:
    """At most ``per_hour`` new participants per client in any hour (a sliding window), so a script cannot
    enrol participants by the hundred."""

    def __init__(self, per_hour: int, window_s: float = 3600.0):
        self.per_hour, self.window_s = per_hour, window_s
        self._starts: dict[str, deque] = {}
        self._lock = threading.Lock()

    def allow(self, client: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        with self._lock:
            starts = self._starts.setdefault(client, deque())
            while starts and starts[0] <= now - self.window_s:
                starts.popleft()
            if len(starts) >= self.per_hour:
                return False
            starts.append(now)
            return True


# -------------------------------------------------------------------------------------------------- assignment


def practice_photos(photos: Sequence[str], settings: StudySettings) -> list[str]:
    """The photos reserved for the practice round (the same for everyone, never in a scored pair)."""
    _check_seed(settings)
    return random.Random(f"practice/{settings.seed}").sample(sorted(photos), settings.practice_pairs)


def assign_trials(photos: Sequence[str], models: Sequence[str], settings: StudySettings,
                  participant_number: int) -> list[TrialSpec]:
    """The pairs of the participant who arrived ``participant_number``-th (0-based): practice first, then
    ``batches`` x ``pairs_per_batch`` scored pairs. Pure and seeded by ``settings.seed`` (``plan_seed``) and the
    number.

    No photo appears twice, and practice photos are never scored. The scored photos are ``scored_photos``: with
    a pool large enough, consecutive participants get disjoint sets (a program comparing sessions finds no photo
    twice), and over many participants every photo is shown equally often. Each participant sees every model
    ``scored_pairs // len(models)`` or one more times; which models get the extra pairs rotates with the
    participant number, so over consecutive participants every model is shown equally often. The models come in
    shuffled rounds (every model once per round), which spreads them over the batches. Half the recolourings are
    on the left (one more on one side when the count is odd).
    """
    if len(photos) < settings.photos_per_participant:
        raise StudySetupError(photo_shortage(len(photos), settings))
    if not models:
        raise StudySetupError("no model to study")
    _check_seed(settings)
    rng = random.Random(f"participant/{settings.seed}/{participant_number}")
    practice = practice_photos(photos, settings)
    scored_pool = sorted(set(photos) - set(practice))

    models = list(models)
    rounds, extra = divmod(settings.scored_pairs, len(models))
    start = participant_number * extra % len(models)
    extras = [models[(start + i) % len(models)] for i in range(extra)]
    sequence = [m for _ in range(rounds) for m in rng.sample(models, len(models))] + rng.sample(extras, extra)

    sides = [SIDES[i % 2] for i in range(settings.scored_pairs)]
    rng.shuffle(sides)
    trials = [TrialSpec("practice", 0, photo, rng.choice(models), rng.choice(SIDES)) for photo in practice]
    photos_in_order = scored_photos(scored_pool, settings.scored_pairs, settings.seed, participant_number)
    rng.shuffle(photos_in_order)
    for i, (photo, model, side) in enumerate(zip(photos_in_order, sequence, sides)):
        trials.append(TrialSpec("scored", i // settings.pairs_per_batch + 1, photo, model, side))
    return trials


def scored_photos(pool: Sequence[str], count: int, seed: object, participant_number: int) -> list[str]:
    """The ``count`` scored photos of the ``participant_number``-th participant (0-based): positions
    ``n * count`` to ``n * count + count - 1`` of ``photo_stream``.

    So the ``len(pool) // count`` consecutive participants of one pass over the pool get disjoint sets, a photo
    comes back only on the next pass, and over any run of participants from the first every photo has been shown
    equally often, give or take one."""
    passes = photo_stream(pool, count, seed, (participant_number + 1) * count // max(len(pool), 1) + 1)
    flat = participant_number * count
    return [passes[(flat + i) // len(pool)][(flat + i) % len(pool)] for i in range(count)]


_STREAMS: dict[tuple, list[list[str]]] = {}
_STREAMS_LOCK = threading.Lock()


def photo_stream(pool: Sequence[str], window: int, seed: object, passes: int) -> list[list[str]]:
    """The first ``passes`` passes of the study's photo stream: each pass is the whole ``pool`` in a seeded
    shuffle, adjusted so that no photo comes twice within ``window`` consecutive positions of the stream (the
    next pass delays a photo the last pass showed near its end, keeping the shuffle's order otherwise).

    Pass ``k`` depends on pass ``k - 1``, so passes are computed once per pool and kept."""
    pool = sorted(pool)
    if window > len(pool):
        raise StudySetupError(f"{window} photos per participant asked of a pool of {len(pool)}")
    key = (tuple(pool), window, str(seed))
    with _STREAMS_LOCK:
        stream = _STREAMS.setdefault(key, [])
        while len(stream) < passes:
            shuffled = random.Random(f"photos/{seed}/{len(stream)}").sample(pool, len(pool))
            if not stream:
                stream.append(shuffled)
                continue
            # A photo at position j of the last pass may come at position i of this one only when the two are a
            # window apart: (len - j) + i >= window. Fill positions in order with the earliest photo of the
            # shuffle that is allowed there (always one: by position i, len - window + i + 1 photos are).
            last = {photo: j for j, photo in enumerate(stream[-1])}
            rank = {photo: r for r, photo in enumerate(shuffled)}
            release = sorted(shuffled, key=lambda x: max(0, window - len(pool) + last[x]))
            ready: list[tuple[int, str]] = []
            ordered, k = [], 0
            for i in range(len(pool)):
                while k < len(release) and max(0, window - len(pool) + last[release[k]]) <= i:
                    heapq.heappush(ready, (rank[release[k]], release[k]))
                    k += 1
                ordered.append(heapq.heappop(ready)[1])
            stream.append(ordered)
        return stream[:passes]


def _check_seed(settings: StudySettings) -> None:
    if settings.seed is None:
        raise ValueError("no seed: plan with the settings' resolved seed (replace(settings, seed=plan_seed(...)))")


def servable(trial: Trial, photos: Iterable[str], weights: Mapping[str, str]) -> bool:
    """Whether ``trial`` can still be shown as planned: its model is under test (``weights``: model under test ->
    identity of its loaded weights) with the weights it was planned with, and its photo is still there."""
    return weights.get(trial.model) == trial.weights and trial.photo in photos


def replan_trials(trials: Sequence[Trial], photos: Sequence[str], weights: Mapping[str, str],
                  settings: StudySettings) -> dict[str, TrialSpec]:
    """New plans, by trial id, for the participant's unanswered trials that are no longer ``servable`` (after a
    restart with other weights, models or photos). Each keeps its phase, batch and side, and its model and photo
    where they are still there; other weights of the same model just get the trial re-served with them. A model
    no longer under test is replaced by the one under test this participant has been given least; a photo that
    is gone by one they have not been given (not a practice photo for a scored pair, unless no other is left),
    so no photo is shown twice."""
    stale = [t for t in trials if not t.answered and not servable(t, photos, weights)]
    if not stale:
        return {}
    rng = random.Random(f"replan/{settings.seed}/{stale[0].participant_id}")
    models = list(weights)
    kept = [t for t in trials if t.answered or servable(t, photos, weights)]
    given = Counter(t.model for t in kept if t.phase == "scored")
    used = {t.photo for t in trials}
    practice = set(practice_photos(photos, settings)) if len(photos) >= settings.practice_pairs else set()
    plans = {}
    for trial in stale:
        model = trial.model
        if model not in weights:
            model = min(rng.sample(models, len(models)), key=given.__getitem__)  # random among the least given
        if trial.phase == "scored":
            given[model] += 1
        photo = trial.photo
        if photo not in photos:
            unused = [p for p in sorted(photos) if p not in used]
            candidates = [p for p in unused if trial.phase == "practice" or p not in practice] or unused
            if not candidates:
                raise StudySetupError(photo_shortage(len(photos), settings))
            photo = rng.choice(candidates)
            used.add(photo)
        plans[trial.id] = TrialSpec(trial.phase, trial.batch, photo, model, trial.recoloured_side)
    return plans


def photo_shortage(have: int, settings: StudySettings) -> str:
    return (f"The study needs {settings.photos_per_participant} different photos per participant "
            f"({settings.practice_pairs} practice + {settings.batches} batches x {settings.pairs_per_batch} "
            f"scored pairs) but {settings.photos_dir} has only {have}. Add photos there, point STUDY_PHOTOS at a "
            "bigger folder, or lower STUDY_PRACTICE_PAIRS, STUDY_BATCHES or STUDY_PAIRS_PER_BATCH.")


# -------------------------------------------------------------------------------------------------- the study


@dataclass(frozen=True)
class Screen:
    """What a participant sees next. ``kind``: "intro" (press start), "trial" (a pair to judge), "feedback"
    (a practice answer explained) or "done". Nothing here tells which image is real until it has been answered."""

    kind: str
    participant_id: str | None = None
    trial_id: str | None = None
    pair: Path | None = None  # one image: the left side, a gap, the right side (``stimuli.compose_pair``)
    progress: str = ""
    message: str = ""


class Study:
    """Runs participants through the study: balanced pairs, blind images, every answer stored at once.

    ``available``: the loaded models (name -> Colorizer). Raises ``StudySetupError`` when the study cannot run
    (no model, unknown or unavailable models asked for, too few photos)."""

    def __init__(self, settings: StudySettings, available: Mapping[str, Colorizer], serve_dir: Path | None = None):
        settings = replace(settings, seed=plan_seed(settings))
        self.settings = settings
        self.models = study_models(settings, available)
        self.stimuli = Stimuli(settings.photos_dir, {m: available[m] for m in self.models},
                               Path(settings.data_dir) / "recolourings")
        if len(self.stimuli.photos) < settings.photos_per_participant:
            raise StudySetupError(photo_shortage(len(self.stimuli.photos), settings))
        self.store = StudyStore(settings.database)
        self.serve_dir = Path(serve_dir or tempfile.mkdtemp(prefix="study-"))
        self.serve_dir.mkdir(parents=True, exist_ok=True)
        self._served: dict[str, Path] = {}
        self._served_lock = threading.Lock()
        self.starts = StartLimiter(settings.starts_per_hour)
        self.clock = time.time  # when pairs are shown and answered (tests set their own)

    def warm_cache_in_background(self) -> threading.Thread:
        """Compute the missing recolourings in a background thread at low priority, which stops when the
        interpreter exits."""
        stop = threading.Event()

        def warm():
            lower_thread_priority()  # participants' and the Compare tab's requests come first on a shared CPU
            self.stimuli.warm(self.models, stop)

        thread = threading.Thread(target=warm, daemon=True, name="study-recolourings")
        thread.start()
        atexit.register(lambda: (stop.set(), thread.join()))  # never kill it inside torch at exit
        return thread

    def _signed_in(self, participant_id: str | None, account: Account | None) -> str | None:
        """With sign-in on, the participant is the account's own, whatever id the page sends (None before it has
        taken part); without, the page's."""
        if not self.settings.sign_in:
            return participant_id
        return self.store.participant_of(account.id) if isinstance(account, Account) else None

    def start(self, participant_id: str | None, client: str = "local", account: Account | None = None) -> Screen:
        """Continue the participant's study where they left off, or enrol a new participant (at most
        ``starts_per_hour`` per ``client`` an hour). With sign-in on, ``account`` is who is signed in: without
        one nothing starts, and an account that has taken part continues its one participation, from any
        browser."""
        if self.settings.sign_in and not isinstance(account, Account):
            return Screen("intro", message=SIGN_IN_FIRST)
        participant_id = self._signed_in(participant_id, account)
        trials = self.store.trials(participant_id) if participant_id else []
        if not trials:
            if not self.starts.allow(client):
                return Screen("intro", message=(
                    "Too many new participants have started from your network in the last hour. Please try again "
                    "later; if you already started, continue in the browser you started in."))
            participant_id = self.store.create_participant(
                lambda number: assign_trials(list(self.stimuli.photos), self.models, self.settings, number),
                self.stimuli.weights.__getitem__,
                *((account.id, account.name) if self.settings.sign_in else ()),
            )
            trials = self.store.trials(participant_id)  # an account's that started a moment ago has its own
        answered = sum(t.answered for t in trials)
        message = f"Welcome back: you have answered {answered} of {len(trials)} pairs." if answered else ""
        return self._next(participant_id, message)

    def answer(self, participant_id: str | None, trial_id: str | None, choice: str, confident: bool,
               account: Account | None = None) -> Screen:
        """Record the participant's pick (``choice``: the side they think is recoloured) for ``trial_id``. With
        sign-in on, the participant is ``account``'s."""
        if choice not in SIDES:
            raise ValueError(f"choice must be one of {SIDES}, got {choice!r}")
        if self.settings.sign_in and not isinstance(account, Account):
            return Screen("intro", message=SIGN_IN_FIRST)
        participant_id = self._signed_in(participant_id, account)
        trials = {t.id: t for t in self.store.trials(participant_id)} if participant_id else {}
        trial = trials.get(trial_id)
        if trial is None:
            return Screen("intro", message="This page has expired. Press the button to continue the study.")
        if not trial.answered:
            try:
                decision = self.store.record_answer(participant_id, trial.id, choice, confident, self.clock())
            except AnswerRejected:  # not the current pair (an old page), or answered a moment ago
                decision = None
        else:
            decision = None
        if decision is None:
            stored = self.store.decision(trial.id)
            if stored is None:  # an unanswered pair that is not the current one
                return self._next(participant_id, "That pair is not your current one; here is your current pair.")
            # Answered already: typically the answer was stored just before a crash and its reply never arrived,
            # so the page sends it again. The stored answer stands; the participant goes on as if it had arrived.
            decision = stored
        if trial.phase == "practice":
            real = "left" if trial.recoloured_side == "right" else "right"
            verdict = "Right!" if decision.correct else "Not this time."
            return Screen("feedback", participant_id, message=(
                f"{verdict} The **{trial.recoloured_side}** image was recoloured by a computer; the {real} one "
                "is the real photo. Practice answers are not scored."))
        return self._next(participant_id, "")

    def resume(self, participant_id: str | None, account: Account | None = None) -> Screen:
        """The participant's current pair (after a practice answer's feedback)."""
        if self.settings.sign_in and not isinstance(account, Account):
            return Screen("intro", message=SIGN_IN_FIRST)
        participant_id = self._signed_in(participant_id, account)
        if not participant_id or not self.store.trials(participant_id):
            return Screen("intro", message="Press the button to start the study.")
        return self._next(participant_id, "")

    def _next(self, participant_id: str, message: str) -> Screen:
        trials = self.store.trials(participant_id)
        current = next((t for t in trials if not t.answered), None)
        if current is not None and not servable(current, self.stimuli.photos, self.stimuli.weights):
            # Planned before a restart with other weights, models or photos: plan the rest afresh, keep the answers.
            self.store.replan(participant_id,
                              lambda now: replan_trials(now, list(self.stimuli.photos), self.stimuli.weights,
                                                        self.settings),
                              self.stimuli.weights.__getitem__)
            trials = self.store.trials(participant_id)
            current = next((t for t in trials if not t.answered), None)
        if current is None:
            self._forget_served(participant_id)
            return Screen("done", participant_id, message=message)
        pair = self._serve(current)
        self.store.mark_shown(current.id, self.clock(), self.stimuli.weights[current.model])
        return Screen("trial", participant_id, current.id, pair, _progress(trials, current), message)

    def _serve(self, trial: Trial) -> Path:
        """Write the trial's pair for the browser (one composed image under a random name, ``save_blind_pair``)
        and delete the participant's previous pair."""
        real = self.stimuli.photo(trial.photo)
        fake = self.stimuli.recolouring(trial.model, trial.photo)
        left, right = (fake, real) if trial.recoloured_side == "left" else (real, fake)
        path = save_blind_pair(left, right, self.serve_dir, self.settings.jpeg_quality)
        self._forget_served(trial.participant_id, keep=path)
        return path

    def _forget_served(self, participant_id: str, keep: Path | None = None) -> None:
        with self._served_lock:
            old = self._served.pop(participant_id, None)
            if keep:
                self._served[participant_id] = keep
        if old is not None:
            old.unlink(missing_ok=True)


def _progress(trials: Sequence[Trial], current: Trial) -> str:
    same_batch = [t for t in trials if t.phase == current.phase and t.batch == current.batch]
    pair = f"pair {same_batch.index(current) + 1} of {len(same_batch)}"
    if current.phase == "practice":
        return f"Practice round (not scored), {pair}"
    batches = max(t.batch for t in trials)
    return f"Batch {current.batch} of {batches}, {pair}"


def study_models(settings: StudySettings, available: Mapping[str, Colorizer]) -> list[str]:
    """The models under test: the organiser's list (all must be loaded) or every loaded model."""
    if not available:
        raise StudySetupError(
            "No trained model is available, so the study cannot run. Put trained weights in assets/weights "
            "(or point COLORIZERS_WEIGHTS at a weights folder or Hub repo) and restart the app.")
    if settings.models is None:
        return list(available)
    missing = [m for m in settings.models if m not in available]
    if missing:
        raise StudySetupError(
            f"STUDY_MODELS asks for {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not "
            f"loaded. Loaded models: {', '.join(available)}.")
    return list(dict.fromkeys(settings.models))
