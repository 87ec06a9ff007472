"""What the event log holds: typed, versioned records and the one place that serialises them.

A :class:`LoggedDecision` is written before Recommend returns and carries everything needed to
replay or evaluate it later: the features the bandit saw, every candidate, and for each slot the
chosen item, its probability and the whole distribution it was drawn from.

A record names a catalog candidate by its item's catalog version (:attr:`engine.types.Item.version`)
and holds only the features the request changed or added; the log keeps each version once.
Request-supplied features (the user's, the context's, candidates not in the catalog) are stored
whole.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from engine.exploration import normalised
from engine.types import Candidate, Features, FeatureValue

SCHEMA_VERSION = 2
"""The record format written: 1 held every candidate's features whole and each slot's pmf as JSON
numbers; 2 may name a catalog candidate by its catalog version (:func:`candidate_to_json`) and
keeps the pmfs apart, in binary (:func:`decision_pmfs`). Both are read."""
READ_SCHEMA_VERSIONS = (1, 2)

RECBANDIT_ARM, CONTROL_ARM = "recbandit", "control"
"""A decision's campaign arm: the bandit's choice, or the storefront's own order (``--control-share``)."""

CatalogVersions = Callable[[int], tuple[str, Features]]
"""The item id and features of a catalog version, by its number: how a record's catalog candidates are read back."""


@dataclass(frozen=True, slots=True)
class SlotChoice:
    """One filled slot: the item drawn, its probability, and the pmf over all candidates.

    ``pmf[i]`` is the probability that candidate ``i`` was drawn for this slot given the items of
    the earlier slots (theirs is 0), so ``pmf[chosen] == probability``.
    """

    item_id: str
    probability: float
    pmf: tuple[float, ...]
    scores: tuple[float, ...] | None = field(default=None, compare=False, repr=False)
    """The bandit's scores ``pmf`` is :func:`~engine.exploration.normalised` from (same positions; 0
    for the earlier slots' items), when it drew this slot: the log keeps these, in half the bytes."""


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
    arm: str = RECBANDIT_ARM  # CONTROL_ARM: the storefront's order was served (engine.campaign)
    portrait: Features = field(default_factory=dict)  # the user's portrait as the decision saw it (engine.portraits)
    apprentice: tuple[tuple[str, str] | None, ...] = ()
    """Apprentice mode (:mod:`engine.apprentice`): per slot the baseline and the model's choice, None
    for a pinned slot; empty when the model served."""

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
            "schema_version": SCHEMA_VERSION,  # the layout written, whatever the decision was read from
            "user_features": _features_out(decision.user_features),
            "context": _features_out(decision.context),
        }
    )
    slots = _compact([s.item_id for s in decision.slots])
    arm = "" if decision.arm == RECBANDIT_ARM else f',"arm":{_compact(decision.arm)}'  # the default is not stored
    portrait = f',"portrait":{_compact(_features_out(decision.portrait))}' if decision.portrait else ""
    apprentice = f',"apprentice":{_compact(decision.apprentice)}' if decision.apprentice else ""
    return f'{head[:-1]},"candidates":[{",".join(candidates_json)}],"slots":{slots}{arm}{portrait}{apprentice}}}'


_PMF_DOUBLES, _PMF_SCORES = b"d", b"f"


def decision_pmfs(decision: LoggedDecision) -> bytes:
    """The ``pmf`` column of a record of format 2: every slot's pmf, one after the other, exactly.

    ``f`` and the slots' scores as little-endian single-precision floats, when the bandit's
    scores give back every pmf bit for bit (:func:`~engine.exploration.normalised`): 4 bytes a
    probability. Otherwise ``d`` and the pmfs as doubles: 8 bytes (their shortest decimal form
    takes about 20).
    """
    slots = decision.slots
    if all(s.scores is not None for s in slots):
        scores = tuple(v for s in slots for v in s.scores)  # type: ignore[union-attr]
        packed = struct.pack(f"<{len(scores)}f", *scores)
        if (struct.unpack(f"<{len(scores)}f", packed) == scores  # single precision holds them exactly
                and all(tuple(normalised(s.scores)) == s.pmf for s in slots)):  # type: ignore[arg-type]
            return _PMF_SCORES + packed
    values = [p for s in slots for p in s.pmf]
    return _PMF_DOUBLES + struct.pack(f"<{len(values)}d", *values)


def _unpacked(packed: bytes, kind: bytes, slots: int) -> list[tuple[float, ...]]:
    """Each slot's values (pmf or scores, by ``kind``) from :func:`decision_pmfs`' bytes after the kind."""
    values = struct.unpack(f"<{len(packed) // (4 if kind == _PMF_SCORES else 8)}{kind.decode()}", packed)
    size = len(values) // slots if slots else 0
    if size * slots != len(values):
        raise ValueError(f"the pmf column holds {len(values)} values, not a whole number for {slots} slots")
    return [values[i * size : (i + 1) * size] for i in range(slots)]


_ABSENT = object()


def candidate_to_json(candidate: Candidate) -> str:
    """One entry of the record's ``candidates``.

    - ``version``: the candidate is its catalog item's version ``version`` (item id and features);
    - ``[version, own]``: its features are that version's overlaid with ``own``, the features whose
      value is not the catalog's (the request's, LightFM's affinity);
    - ``[item_id, features]``: a candidate not in the catalog, whose features are all here.

    Reading ``{**version_features, **own}`` gives back the candidate's features, in their order.
    """
    item, features = candidate.catalog, candidate.features
    if item is None or not item.version or any(name not in features for name in item.features):
        return _compact([candidate.item_id, _features_out(features)])
    if features is item.features:
        return str(item.version)
    base = item.features
    own = {name: value for name, value in features.items() if base.get(name, _ABSENT) is not value}
    return _compact([item.version, own]) if own else str(item.version)


def _no_catalog(version: int) -> tuple[str, Features]:
    raise ValueError(f"the record names catalog version {version}: read it with the log's catalog versions")


def _candidate_from_json(entry: int | list[object], versions: CatalogVersions) -> Candidate:
    if isinstance(entry, int):
        return Candidate(*versions(entry))
    first, features = entry
    if isinstance(first, str):
        return Candidate(first, features_from_dict(features))  # type: ignore[arg-type]
    item_id, base = versions(first)  # type: ignore[arg-type]
    return Candidate(item_id, {**base, **features_from_dict(features)})  # type: ignore[arg-type]


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
    versions: CatalogVersions = _no_catalog,
    pmfs: bytes | None = None,
) -> LoggedDecision:
    """The decision a ``record`` column holds, with the row's other columns: ``versions`` reads the
    catalog versions it names (:func:`candidate_to_json`), ``pmfs`` is its :func:`decision_pmfs`
    (None for format 1, whose slots hold theirs)."""
    data = json.loads(record)
    if data["schema_version"] not in READ_SCHEMA_VERSIONS:
        raise ValueError(f"event {event_id!r}: unsupported schema_version {data['schema_version']}")
    candidates = tuple(_candidate_from_json(entry, versions) for entry in data["candidates"])
    return LoggedDecision(
        event_id=event_id,
        ts=ts,
        user_id=user_id,
        user_features=features_from_dict(data["user_features"]),
        context=features_from_dict(data["context"]),
        candidates=candidates,
        slots=_slots_from_json(data["slots"], pmfs, candidates) if data["schema_version"] > 1
        else tuple(SlotChoice(item_id, p, tuple(pmf)) for item_id, p, pmf in data["slots"]),
        model_version=model_version,
        deferred=deferred,
        deadline=deadline,
        schema_version=data["schema_version"],
        undelivered=undelivered,
        arm=data.get("arm", RECBANDIT_ARM),
        portrait=features_from_dict(data.get("portrait") or {}),
        apprentice=_apprentice_from(data.get("apprentice") or ()),
    )


def _apprentice_from(entries: Sequence[Sequence[str] | None]) -> tuple[tuple[str, str] | None, ...]:
    return tuple(None if entry is None else (str(entry[0]), str(entry[1])) for entry in entries)


def _slots_from_json(slots: list[str], pmfs: bytes | None, candidates: tuple[Candidate, ...]) -> tuple[SlotChoice, ...]:
    """The slots of a record of format 2: the chosen item ids, their pmfs in ``pmfs``, and each
    probability the pmf's entry of its item."""
    if not pmfs or pmfs[:1] not in (_PMF_SCORES, _PMF_DOUBLES):
        raise ValueError("a record of format 2 is read with its pmf column")
    kind = pmfs[:1]
    parts = _unpacked(pmfs[1:], kind, len(slots))
    if any(len(part) != len(candidates) for part in parts):
        raise ValueError(f"the pmf column does not hold {len(slots)} pmfs of {len(candidates)} candidates")
    if kind == _PMF_SCORES:
        pmfs_and_scores = [(tuple(normalised(part)), part) for part in parts]
    else:
        pmfs_and_scores = [(part, None) for part in parts]
    index = {c.item_id: i for i, c in enumerate(candidates)}
    return tuple(SlotChoice(item_id, pmf[index[item_id]], pmf, scores)
                 for item_id, (pmf, scores) in zip(slots, pmfs_and_scores, strict=True))


@dataclass(frozen=True, slots=True)
class SlotOutcome:
    """A slot's final reward: its value, where it came from (a label's aggregate, or ``default``), and when."""

    reward: float
    source: str
    ts: float


@dataclass(frozen=True, slots=True)
class JoinedEvent:
    """A decision with what came of it: each slot's final outcome (``None`` while the slot is open)
    and every reward reported for it. What :class:`engine.logreader.LogReader` reads, the archive
    keeps and ``export-log`` writes (as :meth:`to_export`)."""

    decision: LoggedDecision
    outcomes: tuple[SlotOutcome | None, ...]
    rewards: tuple[Reward, ...] = ()
    activated_ts: float | None = None

    @property
    def event_id(self) -> str:
        return self.decision.event_id

    @property
    def ts(self) -> float:
        return self.decision.ts

    @property
    def user_id(self) -> str:
        return self.decision.user_id

    def reward(self, slot: int) -> float | None:
        """Slot ``slot``'s final reward, or ``None`` while it is open."""
        outcome = self.outcomes[slot]
        return None if outcome is None else outcome.reward

    def to_export(self) -> dict[str, object]:
        """The export's JSON object (also the archive's row): the decision's fields, its slots with
        their final outcomes, and every reward."""
        decision = self.decision
        slots = [
            {
                "slot": i,
                "item_id": slot.item_id,
                "probability": slot.probability,
                "pmf": list(slot.pmf),
                "reward": None if final is None else final.reward,
                "reward_source": None if final is None else final.source,
                "reward_final_ts": None if final is None else final.ts,
                "baseline_item_id": None if not (choice := _apprentice_of(decision, i)) else choice[0],
                "model_item_id": None if not choice else choice[1],
            }
            for i, (slot, final) in enumerate(zip(decision.slots, self.outcomes, strict=True))
        ]
        return {
            "event_id": decision.event_id,
            "ts": decision.ts,
            "user_id": decision.user_id,
            "user_features": dict(decision.user_features),
            "context": dict(decision.context),
            "candidates": [{"item_id": c.item_id, "features": dict(c.features)} for c in decision.candidates],
            "slots": slots,
            "rewards": [{"item_id": r.item_id, "label": r.label, "value": r.value, "ts": r.ts} for r in self.rewards],
            "model_version": decision.model_version,
            "deferred": decision.deferred,
            "undelivered": decision.undelivered,
            "activated_ts": self.activated_ts,
            "deadline": decision.deadline,
            "schema_version": decision.schema_version,
            "arm": decision.arm,
            "portrait": dict(decision.portrait),
        }

    @classmethod
    def from_export(cls, record: Mapping[str, object]) -> JoinedEvent:
        """The inverse of :meth:`to_export`. Fields a Parquet export leaves out take their defaults:
        no rewards, delivered, not deferred, never activated, and the deadline at the decision."""
        slots: list[Mapping[str, object]] = record["slots"]  # type: ignore[assignment]
        ts = float(record["ts"])  # type: ignore[arg-type]
        decision = LoggedDecision(
            event_id=str(record["event_id"]),
            ts=ts,
            user_id=str(record["user_id"]),
            user_features=features_from_dict(record["user_features"]),  # type: ignore[arg-type]
            context=features_from_dict(record["context"]),  # type: ignore[arg-type]
            candidates=tuple(Candidate(c["item_id"], features_from_dict(c["features"]))
                             for c in record["candidates"]),  # type: ignore[attr-defined]
            slots=tuple(SlotChoice(s["item_id"], s["probability"], tuple(s["pmf"])) for s in slots),  # type: ignore[arg-type]
            model_version=str(record["model_version"]),
            deferred=bool(record.get("deferred", False)),
            deadline=float(record.get("deadline", ts)),  # type: ignore[arg-type]
            schema_version=int(record.get("schema_version", SCHEMA_VERSION)),  # type: ignore[call-overload]
            undelivered=bool(record.get("undelivered", False)),
            arm=str(record.get("arm") or RECBANDIT_ARM),
            portrait=features_from_dict(record.get("portrait") or {}),  # type: ignore[arg-type]
            apprentice=_apprentice_from([(s["baseline_item_id"], s["model_item_id"]) if s.get("model_item_id")
                                         else None for s in slots]) if any(s.get("model_item_id") for s in slots) else (),
        )
        outcomes = tuple(
            None if s.get("reward") is None
            else SlotOutcome(float(s["reward"]), str(s.get("reward_source") or ""), float(s.get("reward_final_ts") or ts))  # type: ignore[arg-type]
            for s in slots
        )
        rewards = tuple(Reward(decision.event_id, str(r["item_id"]), str(r["label"]), float(r["value"]), float(r["ts"]))
                        for r in record.get("rewards") or ())  # type: ignore[attr-defined]
        activated = record.get("activated_ts")
        return cls(decision, outcomes, rewards, None if activated is None else float(activated))  # type: ignore[arg-type]


def _apprentice_of(decision: LoggedDecision, slot: int) -> tuple[str, str] | None:
    """Slot ``slot``'s baseline and model choice in apprentice mode, else None."""
    return decision.apprentice[slot] if decision.apprentice else None


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
