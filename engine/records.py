"""What the event log holds: typed, versioned records and the one place that serialises them.

A :class:`LoggedDecision` is written before Recommend returns and carries everything needed to
replay or evaluate it later: the features the bandit saw, every candidate, and for each slot the
chosen item, its probability and the whole distribution it was drawn from.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from engine.types import Candidate, Features, FeatureValue

SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True)
class SlotChoice:
    """One filled slot: the item drawn, its probability, and the pmf over all candidates.

    ``pmf[i]`` is the probability that candidate ``i`` was drawn for this slot given the items of
    the earlier slots (theirs is 0), so ``pmf[chosen] == probability``.
    """

    item_id: str
    probability: float
    pmf: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class LoggedDecision:
    event_id: str
    ts: float
    user_id: str
    user_features: Features
    context: Features
    candidates: tuple[Candidate, ...]
    slots: tuple[SlotChoice, ...]
    model_version: str
    deferred: bool
    deadline: float
    schema_version: int = SCHEMA_VERSION
    undelivered: bool = False  # the caller was gone before the reply: never learned with the default reward

    @property
    def chosen_item_ids(self) -> tuple[str, ...]:
        return tuple(slot.item_id for slot in self.slots)


@dataclass(frozen=True, slots=True)
class Reward:
    event_id: str
    item_id: str
    label: str
    value: float
    ts: float


@dataclass(frozen=True, slots=True)
class Outcome:
    """The final reward of one slot of one event: what the bandit learns, exactly once.

    ``source`` is ``reward`` (the first reward, aggregation "earliest"), ``sum`` (rewards added up
    over the window) or ``default`` (the window closed without a reward).
    """

    seq: int
    event_id: str
    slot: int
    item_id: str
    reward: float
    source: str
    ts: float


def decision_to_json(decision: LoggedDecision, candidates_json: Sequence[str] | None = None) -> str:
    """The decision's ``record`` column: features, candidates and slots as compact JSON.

    ``candidates_json`` may give each candidate's :func:`candidate_to_json` already encoded (the
    engine keeps those of recently seen candidates), in the order of ``decision.candidates``.
    """
    if candidates_json is None:
        candidates_json = [candidate_to_json(c) for c in decision.candidates]
    head = _compact(
        {
            "schema_version": decision.schema_version,
            "user_features": _features_out(decision.user_features),
            "context": _features_out(decision.context),
        }
    )
    slots = _compact([[s.item_id, s.probability, s.pmf] for s in decision.slots])
    return f'{head[:-1]},"candidates":[{",".join(candidates_json)}],"slots":{slots}}}'


def candidate_to_json(candidate: Candidate) -> str:
    """One entry of the record's ``candidates``: ``[item_id, features]``."""
    return _compact([candidate.item_id, _features_out(candidate.features)])


def decision_from_json(
    record: str,
    *,
    event_id: str,
    ts: float,
    user_id: str,
    model_version: str,
    deferred: bool,
    deadline: float,
    undelivered: bool = False,
) -> LoggedDecision:
    data = json.loads(record)
    if data["schema_version"] != SCHEMA_VERSION:
        raise ValueError(f"event {event_id!r}: unsupported schema_version {data['schema_version']}")
    return LoggedDecision(
        event_id=event_id,
        ts=ts,
        user_id=user_id,
        user_features=features_from_dict(data["user_features"]),
        context=features_from_dict(data["context"]),
        candidates=tuple(Candidate(item_id, features_from_dict(f)) for item_id, f in data["candidates"]),
        slots=tuple(SlotChoice(item_id, p, tuple(pmf)) for item_id, p, pmf in data["slots"]),
        model_version=model_version,
        deferred=deferred,
        deadline=deadline,
        undelivered=undelivered,
    )


def features_to_json(features: Features) -> str:
    return _compact(_features_out(features))


def features_from_json(text: str) -> dict[str, FeatureValue]:
    return features_from_dict(json.loads(text))


def _features_out(features: Features) -> Mapping[str, object]:
    """Features as JSON can take them: a dict (tuples are written as JSON lists anyway)."""
    return features if type(features) is dict else dict(features)


_compact = json.JSONEncoder(separators=(",", ":")).encode  # one encoder, not one per call


def features_from_dict(data: Mapping[str, object]) -> dict[str, FeatureValue]:
    """Features decoded from JSON: its lists become the tuples that list-valued features are."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}  # type: ignore[misc]
