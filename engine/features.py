"""Feature preparation shared by deciding and learning: time context and catalog merging."""

from __future__ import annotations

import time
from collections.abc import Mapping

from engine.types import Features, FeatureValue

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def with_time_context(context: Features, ts: float) -> dict[str, FeatureValue]:
    """Add ``hour`` (``"0"``…``"23"``) and ``weekday`` (``"mon"``…) in UTC unless the caller sent them."""
    merged = dict(context)
    if "hour" not in merged or "weekday" not in merged:
        t = time.gmtime(ts)
        merged.setdefault("hour", str(t.tm_hour))
        merged.setdefault("weekday", WEEKDAYS[t.tm_wday])
    return merged


def merge_features(catalog: Mapping[str, FeatureValue] | None, request: Features) -> Features:
    """The item's catalog features overlaid with the request's own (the request wins)."""
    if not catalog:
        return request
    if not request:
        return catalog
    return {**catalog, **request}
