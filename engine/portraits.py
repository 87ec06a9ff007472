"""User portraits: what a user's history says, kept per user and turned into features at decision time.

A portrait holds three of the marketer's four kinds of facts (the fourth, fixed attributes, is the
``user_features`` the storefront sends):

- **interests**: the categorical attributes (``category``, ``brand``, ``tags`` by default) of the
  items the user rewarded (a reward above 0: a click, a purchase), as counts that halve every
  :data:`INTEREST_HALF_LIFE`; at most :data:`MAX_INTERESTS` are kept, the weakest dropped first;
- **consumption (RFM)**: when the user last purchased, how many purchases and how much money
  (the purchase rewards' values), both counts halving every :data:`RFM_HALF_LIFE`;
- **dynamic state**: when the user last visited (a decision is a visit), the visits of the session
  (visits less than :data:`SESSION_GAP` apart) and the channel of the last visit.

:class:`History` changes as rewards arrive (:func:`rewarded`), :class:`Visits` as decisions commit
(:func:`visited`); :func:`portrait_features` gives what a decision at time ``t`` sees, in buckets,
for VW's ``Portrait`` namespace. A decayed count ``w`` written at ``t0`` is worth
``w · 2^(−(t − t0) / half_life)`` at ``t``. Everything here is pure: the engine, the simulator and
the quality benchmark share it.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from engine.types import Features, FeatureValue

MINUTE, HOUR, DAY = 60.0, 3600.0, 86400.0
INTEREST_HALF_LIFE = 14 * DAY
"""A click's weight in the interests halves every two weeks."""
RFM_HALF_LIFE = 90 * DAY
"""A purchase's weight in frequency and money halves every quarter."""
SESSION_GAP = 30 * MINUTE
"""Visits less than this apart are one session (the web-analytics convention)."""
MAX_INTERESTS = 32
"""Interests a portrait keeps at most (the weakest leave first): a portrait never grows without bound."""
TOP_INTERESTS = 1
"""Interests a decision sees per attribute: the strongest, if it weighs :data:`MIN_INTEREST` at least.
Two per attribute earned no more where history matters and cost more where it does not (README)."""
MIN_INTEREST = 0.25
"""The weight below which an interest is not shown (one click, four weeks ago)."""
MAX_CHANNEL = 64
"""Characters of the channel a portrait keeps."""

# Buckets: (upper bounds, names); a value falls in the first bucket whose bound it is below.
RECENCY_BUCKETS = ((DAY, 7 * DAY, 30 * DAY, 90 * DAY), ("1d", "7d", "30d", "90d", "older"))
FREQUENCY_BUCKETS = ((0.5, 1.5, 3.5, 7.5), ("0", "1", "2-3", "4-7", "8+"))
MONETARY_BUCKETS = ((0.005, 10.0, 50.0, 200.0, 1000.0), ("0", "<10", "10-50", "50-200", "200-1000", "1000+"))
SINCE_VISIT_BUCKETS = ((SESSION_GAP, DAY, 7 * DAY, 30 * DAY), ("session", "1d", "7d", "30d", "older"))
SESSION_BUCKETS = ((2, 3, 6), ("1", "2", "3-5", "6+"))
_NOTHING_KNOWN = frozenset({"0"})
"""Bucket values a portrait leaves out: a feature in almost every example would only repeat the item's
own weights (``-q PI``), which slows learning; its absence says the same."""


@dataclass(frozen=True, slots=True)
class PortraitConfig:
    """Which item attributes make interests, and which reward labels are purchases."""

    interest_attributes: tuple[str, ...] = ("category", "brand", "tags")
    purchase_labels: tuple[str, ...] = ("purchase",)
    channel_feature: str = "channel"  # the context feature that names the channel


@dataclass(frozen=True, slots=True)
class Visits:
    """The dynamic state: the last visit's time and channel, and the visits of its session."""

    last_ts: float | None = None
    session_visits: int = 0
    channel: str = ""


@dataclass(frozen=True, slots=True)
class History:
    """Interests and RFM, their decayed counts as of ``ts``."""

    ts: float = 0.0
    interests: tuple[tuple[str, float], ...] = ()  # ("category=shoes", weight), strongest first
    last_purchase_ts: float | None = None
    purchases: float = 0.0
    spent: float = 0.0


@dataclass(frozen=True, slots=True)
class Portrait:
    visits: Visits = field(default_factory=Visits)
    history: History = field(default_factory=History)


NO_PORTRAIT = Portrait()


def decayed(weight: float, since: float, half_life: float) -> float:
    """``weight · 2^(−since / half_life)``; a negative ``since`` (a late write) counts as 0."""
    return weight * 0.5 ** (max(0.0, since) / half_life)


def bucket(value: float, buckets: tuple[Sequence[float], Sequence[str]]) -> str:
    """The name of the first bucket whose upper bound ``value`` is below."""
    bounds, names = buckets
    return names[bisect.bisect_right(bounds, value)]


def visited(visits: Visits, ts: float, context: Features, config: PortraitConfig = PortraitConfig()) -> Visits:
    """The dynamic state after a visit at ``ts`` in ``context``: a gap of :data:`SESSION_GAP` or more
    (or no earlier visit) starts a new session."""
    same_session = visits.last_ts is not None and ts - visits.last_ts < SESSION_GAP
    channel = context.get(config.channel_feature)
    return Visits(
        last_ts=ts if visits.last_ts is None else max(ts, visits.last_ts),
        session_visits=visits.session_visits + 1 if same_session else 1,
        channel=channel[:MAX_CHANNEL] if isinstance(channel, str) else "",
    )


def rewarded(history: History, ts: float, label: str, value: float, item_features: Features,
             config: PortraitConfig = PortraitConfig()) -> History:
    """The history after a reward of ``value`` (label ``label``) at ``ts`` for an item of ``item_features``.

    A reward above 0 adds 1 to each interest the item's attributes name (a tag list adds each tag);
    a purchase label with a value above 0 also adds 1 purchase and ``value`` to the money spent.
    Counts are decayed to ``max(ts, history.ts)`` first, so rewards may arrive out of order.
    """
    if value <= 0:
        return history
    now = max(ts, history.ts)
    keep, late = decayed(1.0, now - history.ts, INTEREST_HALF_LIFE), decayed(1.0, now - ts, INTEREST_HALF_LIFE)
    weights = {key: w * keep for key, w in history.interests}
    for key in interest_keys(item_features, config):
        weights[key] = weights.get(key, 0.0) + late
    strongest = sorted(weights.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_INTERESTS]
    purchased = label in config.purchase_labels
    rfm_keep, rfm_late = decayed(1.0, now - history.ts, RFM_HALF_LIFE), decayed(1.0, now - ts, RFM_HALF_LIFE)
    return History(
        ts=now,
        interests=tuple(strongest),
        last_purchase_ts=(max(ts, history.last_purchase_ts or ts) if purchased else history.last_purchase_ts),
        purchases=history.purchases * rfm_keep + (rfm_late if purchased else 0.0),
        spent=history.spent * rfm_keep + (value * rfm_late if purchased else 0.0),
    )


def interest_keys(item_features: Features, config: PortraitConfig = PortraitConfig()) -> list[str]:
    """``attribute=value`` for each interest attribute of the item (each tag of a tag list)."""
    keys = []
    for name in config.interest_attributes:
        value = item_features.get(name)
        if isinstance(value, str):
            keys.append(f"{name}={value}")
        elif isinstance(value, tuple):
            keys += [f"{name}={v}" for v in value]
    return list(dict.fromkeys(keys))


def portrait_features(portrait: Portrait, ts: float, context: Features,
                      config: PortraitConfig = PortraitConfig()) -> dict[str, FeatureValue]:
    """The features a decision at ``ts`` in ``context`` sees: VW's ``Portrait`` namespace.

    - ``likes_<attribute>``: the values of its :data:`TOP_INTERESTS` strongest interests (a list);
    - ``recency`` (since the last purchase), ``frequency``, ``monetary``: RFM buckets, once the user
      has purchased (``frequency`` and ``monetary`` leave out ``0``, what decay brings them to);
    - ``since_last_visit`` (from the second visit on), ``session_visits`` (this visit included,
      from the second of a session on), ``came_from`` (the last visit's channel, when it was another
      than this visit's: the context names this one).

    A feature with nothing to say is left out, not given a value that nearly every example would
    share: a first visit of a user without history has no portrait features at all.
    """
    visits, history = portrait.visits, portrait.history
    features: dict[str, FeatureValue] = {}
    liked: dict[str, list[str]] = {}
    shown = [(k, decayed(w, ts - history.ts, INTEREST_HALF_LIFE)) for k, w in history.interests]
    for key, weight in sorted(shown, key=lambda kv: (-kv[1], kv[0])):
        name, _, value = key.partition("=")
        values = liked.setdefault(f"likes_{name}", [])
        if weight >= MIN_INTEREST and len(values) < TOP_INTERESTS:
            values.append(value)
    features.update({name: tuple(values) for name, values in sorted(liked.items()) if values})
    if history.last_purchase_ts is not None:
        features["recency"] = bucket(ts - history.last_purchase_ts, RECENCY_BUCKETS)
        features["frequency"] = bucket(decayed(history.purchases, ts - history.ts, RFM_HALF_LIFE), FREQUENCY_BUCKETS)
        features["monetary"] = bucket(decayed(history.spent, ts - history.ts, RFM_HALF_LIFE), MONETARY_BUCKETS)
    if visits.last_ts is not None:
        features["since_last_visit"] = bucket(ts - visits.last_ts, SINCE_VISIT_BUCKETS)
    if (session := visited(visits, ts, context, config).session_visits) > 1:
        features["session_visits"] = bucket(session, SESSION_BUCKETS)
    here = context.get(config.channel_feature)
    if visits.channel and visits.channel != (here[:MAX_CHANNEL] if isinstance(here, str) else here):
        features["came_from"] = visits.channel
    return {name: value for name, value in features.items() if value not in _NOTHING_KNOWN}


def visits_to_json(visits: Visits) -> str:
    return json.dumps([visits.last_ts, visits.session_visits, visits.channel], separators=(",", ":"))


def visits_from_json(text: str) -> Visits:
    if not text:
        return Visits()
    last_ts, session_visits, channel = json.loads(text)
    return Visits(last_ts, int(session_visits), str(channel))


def history_to_json(history: History) -> str:
    return json.dumps([history.ts, [list(kv) for kv in history.interests], history.last_purchase_ts,
                       history.purchases, history.spent], separators=(",", ":"))


def history_from_json(text: str) -> History:
    if not text:
        return History()
    ts, interests, last_purchase_ts, purchases, spent = json.loads(text)
    return History(float(ts), tuple((str(k), float(w)) for k, w in interests), last_purchase_ts,
                   float(purchases), float(spent))
