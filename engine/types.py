"""The storefront's vocabulary as plain, immutable values."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

FeatureValue = str | float | bool | tuple[str, ...]
"""A categorical string, a numeric weight, a flag, or a list of categorical strings (tags)."""

Features = Mapping[str, FeatureValue]


@dataclass(frozen=True, slots=True)
class Item:
    """A catalog item: the features every request inherits for it, and whether it may be shown.

    ``version`` names these features in the event log's catalog versions (content-addressed: the
    same item id and features always get the same one); 0 until the log has stored them.
    """

    item_id: str
    features: Features = field(default_factory=dict)
    active: bool = True
    version: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class Candidate:
    """An item offered to the bandit for one request.

    ``catalog`` is the catalog item whose features ``features`` extend (None: not from the
    catalog). The event log then stores the candidate as a reference to that item's version plus
    the features that differ from it, instead of all its features.
    """

    item_id: str
    features: Features = field(default_factory=dict)
    catalog: Item | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class DecisionRequest:
    """What Recommend asks: choose ``num_results`` items for one user in one context."""

    user_id: str
    user_features: Features = field(default_factory=dict)
    context: Features = field(default_factory=dict)
    candidates: tuple[Candidate, ...] = ()
    num_results: int = 1
    exclude_item_ids: tuple[str, ...] = ()
    defer_activation: bool = False
    event_id: str = ""


@dataclass(frozen=True, slots=True)
class RewardReport:
    """What Feedback reports: a reward for one shown item of one event."""

    event_id: str
    reward: float
    item_id: str = ""
    label: str = ""


class Status(enum.Enum):
    """Whether a Feedback or Activate call changed anything."""

    NEW = "new"
    DUPLICATE = "duplicate"
