"""A simulated storefront with known ground truth, to see whether and how well a policy learns.

Users belong to a segment and a region; items have a category, a brand and a price band; a visit
comes through a channel at an hour. The click probability of item ``i`` for a visit is

    p = sigmoid(bias + taste[segment, category] + price_fit[segment, price_band]
                + channel_fit[channel, price_band] + daypart_fit[daypart(hour), category])

so the best item depends on who the user is and where and when they shop. The oracle knows ``p``
for every candidate and picks the highest; the uniform-random policy's expected reward is the
mean of ``p`` over the candidates. Everything is drawn from ``numpy.random.default_rng(seed)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from engine.types import Features, Item

CATEGORIES = ("shoes", "bags", "jackets", "beauty", "sports", "home")
PRICE_BANDS = ("low", "mid", "high")
SEGMENTS = ("bargain", "premium", "sporty", "family")
REGIONS = ("north", "south", "east", "west")
CHANNELS = ("web", "app", "email")
DAYPARTS = ("night", "morning", "afternoon", "evening")


@dataclass(frozen=True, slots=True)
class Visit:
    """One Recommend call's worth of context: who, through which channel, at what hour."""

    index: int
    user_id: str
    user_features: Features
    context: Features


@dataclass(frozen=True, slots=True)
class WorldConfig:
    n_items: int = 24
    n_users: int = 400
    bias: float = -2.0
    taste_scale: float = 1.6
    context_scale: float = 1.0  # 0 makes the best item depend on the user alone
    seed: int = 0


class Storefront:
    """The ground truth: catalog, users, and click probabilities."""

    def __init__(self, config: WorldConfig = WorldConfig()) -> None:
        self.config = config
        rng = np.random.default_rng(config.seed)
        self.items = [
            Item(
                f"item-{i:03d}",
                {
                    "category": CATEGORIES[i % len(CATEGORIES)],
                    "price_band": PRICE_BANDS[int(rng.integers(len(PRICE_BANDS)))],
                    "brand": f"brand-{int(rng.integers(8))}",
                },
            )
            for i in range(config.n_items)
        ]
        self._users = [
            (f"user-{u:04d}", SEGMENTS[int(rng.integers(len(SEGMENTS)))], REGIONS[int(rng.integers(len(REGIONS)))])
            for u in range(config.n_users)
        ]
        s = config.taste_scale
        self._taste = rng.normal(0, s, (len(SEGMENTS), len(CATEGORIES)))
        self._price_fit = rng.normal(0, s / 2, (len(SEGMENTS), len(PRICE_BANDS)))
        c = s * config.context_scale
        self._channel_fit = rng.normal(0, c / 3, (len(CHANNELS), len(PRICE_BANDS)))
        self._daypart_fit = rng.normal(0, c / 3, (len(DAYPARTS), len(CATEGORIES)))
        self._seed = config.seed

    def visit(self, index: int) -> Visit:
        """The ``index``-th visit of the stream; the same seed and index give the same visit."""
        rng = np.random.default_rng((self._seed, index))
        user_id, segment, region = self._users[int(rng.integers(len(self._users)))]
        hour = int(rng.integers(24))
        return Visit(
            index,
            user_id,
            {"segment": segment, "region": region},
            {"channel": CHANNELS[int(rng.integers(len(CHANNELS)))], "hour": str(hour), "weekday": "tue"},
        )

    def click_probability(self, visit: Visit, item: Item) -> float:
        seg = SEGMENTS.index(str(visit.user_features["segment"]))
        cat = CATEGORIES.index(str(item.features["category"]))
        band = PRICE_BANDS.index(str(item.features["price_band"]))
        channel = CHANNELS.index(str(visit.context["channel"]))
        daypart = int(str(visit.context["hour"])) // 6
        logit = (
            self.config.bias
            + self._taste[seg, cat]
            + self._price_fit[seg, band]
            + self._channel_fit[channel, band]
            + self._daypart_fit[daypart, cat]
        )
        return 1.0 / (1.0 + math.exp(-logit))

    def clicked(self, visit: Visit, item: Item, slot: int = 0) -> bool:
        """Whether the user clicks ``item`` shown in ``slot`` — seeded by the visit and the slot."""
        u = np.random.default_rng((self._seed, visit.index, 1_000_003 + slot)).random()
        return bool(u < self.click_probability(visit, item))

    def oracle_reward(self, visit: Visit, items: list[Item]) -> float:
        return max(self.click_probability(visit, item) for item in items)

    def random_reward(self, visit: Visit, items: list[Item]) -> float:
        return float(np.mean([self.click_probability(visit, item) for item in items]))
