"""Scoring of the realism study (ParaColorizer Table III): the four cases, the fooling score, per-model summaries
with bootstrap intervals over participants, and the per-batch case table.

    case 1: right, confident      0        case 3: wrong, not confident   0.75
    case 2: right, not confident  0.25     case 4: wrong, confident       1

The fooling score is the mean score over all decisions (Table III: 215 points over 400 decisions = 0.5375; the
paper's printed formula divides by batches x subjects instead, which does not give its own 0.5375). A
participant who cannot tell the images apart scores 0.5 whatever their confidence.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from .store import decision_case  # noqa: F401 (re-exported with the scoring)

#: Score of each case, cases 1..4 (index 0 is case 1).
CASE_SCORES = (0.0, 0.25, 0.75, 1.0)

# ``decision_case(correct, confident)`` (re-exported here) lives in ``study.store``, where each answer's case is
# derived from the stored answer key.


def fooling_score(case_counts: Sequence[Sequence[int]]) -> float:
    """Mean score over all decisions, from one ``[case1, case2, case3, case4]`` row of counts per batch."""
    counts = np.asarray(case_counts, dtype=float).reshape(-1, 4).sum(axis=0)
    if counts.sum() == 0:
        raise ValueError("no decisions to score")
    return float(counts @ np.asarray(CASE_SCORES) / counts.sum())


@dataclass(frozen=True)
class ModelSummary:
    model: str
    participants: int
    decisions: int
    fooling_score: float
    fooling_ci: tuple[float, float]
    fool_rate: float  # share of decisions where the participant picked the real photo
    fool_rate_ci: tuple[float, float]


def bootstrap_ratio_ci(numerators: np.ndarray, denominators: np.ndarray, rng: np.random.Generator,
                       samples: int, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of sum(numerators) / sum(denominators) when the units (participants) are resampled
    with replacement."""
    picks = rng.integers(0, len(numerators), size=(samples, len(numerators)))
    stats = numerators[picks].sum(axis=1) / denominators[picks].sum(axis=1)
    low, high = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def fast_participants(answers: Iterable, fast_ms: float) -> dict[str, float]:
    """Participants whose answers are implausibly fast: their median time per pair (from the pair being sent to
    the answer arriving, ``response_ms``) is under ``fast_ms``. Returns participant -> that median, in ms.
    A person needs well over a second to look at two photos; a script answers in milliseconds."""
    times: dict[str, list[float]] = {}
    for a in answers:
        if a.response_ms is not None:
            times.setdefault(a.participant_id, []).append(a.response_ms)
    medians = {pid: float(np.median(ms)) for pid, ms in times.items()}
    return {pid: median for pid, median in medians.items() if median < fast_ms}


#: What each flag means, for the organiser (``flag_participants``).
FLAG_TITLES = {
    "fast": "too fast",
    "steady": "the same time for every pair",
    "one_side": "every answer the same side",
    "one_confidence": "every answer equally sure",
    "too_right": "right far more often than people are",
}


@dataclass(frozen=True)
class FlagRules:
    """When a participant's answers look like a program's rather than a person's (``flag_participants``).

    ``fast_ms``: a median time per pair under this (a person needs seconds to look at two photos and click).
    ``steady_spread``: times whose spread (10th to 90th percentile) is under this share of their median: a
    script's fixed wait with network jitter; people take long on some pairs and short on others.
    ``too_right``: a share of right answers at or over this; recomputing the recolouring with the public models
    gets nearly every pair right, which people do not.
    ``min_answers``: the pattern flags (all but ``fast``) need at least this many answers, so that a person's
    few answers cannot match a pattern by chance (all 8 on one side: 2 in 256 for someone choosing at random)."""

    fast_ms: float = 1000.0
    steady_spread: float = 0.15
    too_right: float = 0.95
    min_answers: int = 8


def flag_participants(answers: Iterable, rules: FlagRules = FlagRules()) -> dict[str, dict[str, str]]:
    """Participants whose answers (objects with ``participant_id``, ``response_ms``, ``choice``, ``confident``,
    ``correct``) show patterns no person produces, each with why: participant -> {flag kind: what was seen}. The
    kinds are ``FLAG_TITLES``' keys. A flag is a reason to look, not a proof; the organiser decides whom to leave
    out (``summarize(exclude=...)``)."""
    mine: dict[str, list] = {}
    for a in answers:
        mine.setdefault(a.participant_id, []).append(a)
    flags: dict[str, dict[str, str]] = {}
    for pid, rows in mine.items():
        found: dict[str, str] = {}
        times = np.array([a.response_ms for a in rows if a.response_ms is not None], dtype=float)
        n = len(rows)
        if len(times):
            median = float(np.median(times))
            if median < rules.fast_ms:
                found["fast"] = f"median {median:.0f} ms per pair"
            if len(times) >= rules.min_answers and median > 0:
                low, high = np.percentile(times, [10, 90])
                if (high - low) / median < rules.steady_spread:
                    found["steady"] = f"{low:.0f} to {high:.0f} ms on most pairs"
        if n >= rules.min_answers:
            sides = {a.choice for a in rows}
            if len(sides) == 1:
                found["one_side"] = f"{n} of {n} on the {next(iter(sides))}"
            sure = sum(bool(a.confident) for a in rows)
            if sure in (0, n):
                found["one_confidence"] = f"{n} of {n} {'sure' if sure else 'not sure'}"
            right = sum(bool(a.correct) for a in rows)
            if right / n >= rules.too_right:
                found["too_right"] = f"{right} of {n} right"
        if found:
            flags[pid] = found
    return flags


def summarize(answers: Iterable, samples: int = 2000, seed: int = 0, level: float = 0.95,
              exclude: Iterable[str] = ()) -> list[ModelSummary]:
    """Per model: fooling score and fool rate, each with a bootstrap interval over participants. ``answers``:
    objects with ``participant_id``, ``model`` and ``case_number`` (e.g. ``StudyStore.answers()``); the
    participants in ``exclude`` (e.g. ``fast_participants``) are left out."""
    excluded = set(exclude)
    per_model: dict[str, dict[str, list[int]]] = {}
    for a in answers:
        if a.participant_id in excluded:
            continue
        per_model.setdefault(a.model, {}).setdefault(a.participant_id, []).append(a.case_number)
    rng = np.random.default_rng(seed)
    summaries = []
    for model, by_participant in per_model.items():
        cases = [np.asarray(c) for c in by_participant.values()]
        decisions = np.array([len(c) for c in cases], dtype=float)
        scores = np.array([np.take(CASE_SCORES, c - 1).sum() for c in cases])
        fooled = np.array([(c >= 3).sum() for c in cases], dtype=float)
        summaries.append(ModelSummary(
            model=model, participants=len(cases), decisions=int(decisions.sum()),
            fooling_score=float(scores.sum() / decisions.sum()),
            fooling_ci=bootstrap_ratio_ci(scores, decisions, rng, samples, level),
            fool_rate=float(fooled.sum() / decisions.sum()),
            fool_rate_ci=bootstrap_ratio_ci(fooled, decisions, rng, samples, level),
        ))
    return summaries


def case_table(answers: Iterable, exclude: Iterable[str] = ()) -> dict[str, dict[int, list[int]]]:
    """Table III per model: model -> batch -> [case1, case2, case3, case4] counts (without ``exclude``)."""
    excluded = set(exclude)
    table: dict[str, dict[int, list[int]]] = {}
    for a in answers:
        if a.participant_id in excluded:
            continue
        table.setdefault(a.model, {}).setdefault(a.batch, [0, 0, 0, 0])[a.case_number - 1] += 1
    return {model: dict(sorted(batches.items())) for model, batches in table.items()}
