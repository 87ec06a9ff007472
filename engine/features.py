"""Feature preparation shared by deciding and learning: time context, catalog merging, encoding."""

from __future__ import annotations

import time
from collections.abc import Mapping
from types import MappingProxyType

from engine.bandit import action_line
from engine.cache import BoundedCache
from engine.records import candidate_to_json
from engine.types import Candidate, Features, FeatureValue

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DAYPARTS = ("night", "morning", "afternoon", "evening")
"""The day in quarters: night 0–5 h, morning 6–11 h, afternoon 12–17 h, evening 18–23 h."""


def with_time_context(context: Features, ts: float) -> dict[str, FeatureValue]:
    """The request's context with the clock added, the caller's own values winning.

    ``hour`` (``"0"``…``"23"``) and ``weekday`` (``"mon"``…) in UTC unless the caller sent them,
    and their coarse forms, ``daypart`` (:data:`DAYPARTS`) and ``weekend`` (``true`` on ``sat``
    and ``sun``), from whichever hour and weekday the context then has. The bandit crosses the
    coarse forms with the item and keeps the fine ones uncrossed (:func:`engine.bandit.shared_line`).
    """
    merged = dict(context)
    if "hour" not in merged or "weekday" not in merged:
        t = time.gmtime(ts)
        merged.setdefault("hour", str(t.tm_hour))
        merged.setdefault("weekday", WEEKDAYS[t.tm_wday])
    if "daypart" not in merged and (hour := _hour(merged["hour"])) is not None:
        merged["daypart"] = DAYPARTS[hour // 6]
    if "weekend" not in merged and merged["weekday"] in WEEKDAYS:
        merged["weekend"] = merged["weekday"] in ("sat", "sun")
    return merged


def _hour(value: FeatureValue) -> int | None:
    """``value`` as an hour of the day, if it is one: ``"7"``, ``"07"``, ``7`` or ``7.0`` (gRPC's
    numbers are doubles)."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 2:
        return int(value) if int(value) <= 23 else None
    if isinstance(value, int | float) and not isinstance(value, bool) and value in range(24):
        return int(value)
    return None


def merge_features(catalog: Mapping[str, FeatureValue] | None, request: Features) -> Features:
    """The item's catalog features overlaid with the request's own (the request wins)."""
    if not catalog:
        return request
    if not request:
        return catalog
    return {**catalog, **request}


def frozen_features(features: Mapping[str, FeatureValue]) -> Features:
    """A read-only view of a new copy of ``features``: the form :class:`EncodedCandidates` remembers."""
    return MappingProxyType(dict(features))


class EncodedCandidates:
    """The VW line and the log's JSON of recently seen candidates, computed once per candidate.

    Only candidates whose features are a read-only view (:func:`frozen_features`, as the server's
    converters and the catalog make them) are remembered, keyed by item id and the identity of
    that view. An entry holds the view itself, so its identity cannot pass to another object
    while the entry lives, and a view that nobody can change always encodes the same way. Other
    candidates are encoded on every call. The cache is bounded in entries and bytes, and forgets
    everything when full.
    """

    def __init__(self, max_entries: int = 1 << 15, max_bytes: int = 64 << 20) -> None:
        self._entries: BoundedCache[tuple[str, int], tuple[Features, str, str]] = BoundedCache(max_entries, max_bytes)

    def known(self, candidate: Candidate) -> bool:
        """Whether ``candidate`` was encoded before (so its features passed validation then)."""
        entry = self._entries.get((candidate.item_id, id(candidate.features)))
        return entry is not None and entry[0] is candidate.features

    def encode(self, candidate: Candidate) -> tuple[str, str]:
        """``(action_line, candidate_to_json)`` of ``candidate``."""
        features = candidate.features
        key = (candidate.item_id, id(features))
        entry = self._entries.get(key)
        if entry is not None and entry[0] is features:
            return entry[1], entry[2]
        line, record = action_line(candidate.item_id, features), candidate_to_json(candidate)
        if type(features) is MappingProxyType:
            self._entries.put(key, (features, line, record), 2 * (len(line) + len(record)))
        return line, record
