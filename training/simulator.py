"""A simulated storefront with known ground truth, to see whether and how well a policy learns.

**Catalog.** Items have a category, a brand, a price band (and a price within it) and two tags.
**Users** have a segment, a region, an age band and two interests, and hidden tastes. **Visits**
come through a channel (web, app, email) onto a surface (home, product, cart) at an hour of a
weekday, and offer a page of candidates drawn from the items on sale.

**Ground truth.** The chance that a user clicks item ``i`` when they look at it is

    p = sigmoid(bias + taste[segment, category] + price_fit[age_band, price_band]
                + interest_match · |interests ∩ tags| + brand_fit[region, brand]
                + channel_fit[channel, price_band] + daypart_fit[daypart(hour), category]
                + weekend_fit[weekend, category] + surface_fit[surface, category] + quality[i])

so the best item depends on who the user is, and where and when they shop. A click becomes a
purchase with probability ``sigmoid(purchase_bias + buy_fit[segment, price_band])``, worth the
item's price. Slot ``k`` of a page is looked at with probability ``EXAMINATION[k]`` (position
effects), so the expected clicks of a page are ``Σ_k EXAMINATION[k] · p(item in slot k)``. The
oracle knows ``p`` and puts the best candidates first; uniform random earns the mean of ``p``
over the candidates in every slot.

**Users with a history** (``history=True``; off by default). The world remembers what each user
clicked and bought (:meth:`Storefront.remember`), and four terms join the logit above:

    + favourite · [category = favourite[user]]         a favourite category, which no feature names
    + loyalty · min(1, clicks[user, category])        category loyalty: decayed clicks in the category
    + repeat · min(1, purchases[user, brand])          repeat purchases: decayed purchases of the brand
    + recency · (+1 low, 0 mid, −1 high price band)    within a day of the user's last purchase

Only the user's history shows their favourite: what they clicked. Counts halve every
:data:`HISTORY_HALF_LIFE` of simulated time; visit ``n`` happens at
``n · seconds_per_visit``. The oracle is then myopic: it shows the best candidate given the
history so far.

**Changes mid-run.** With ``drift_at`` the segments' tastes are drawn anew from that visit on;
with ``new_items_at`` the catalog gains ``new_items`` items that only then go on sale (cold start).

Everything is drawn from ``numpy.random.default_rng`` seeded by ``seed``: the same config gives
the same catalog, users, visits and clicks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.types import Features, Item

CATEGORIES = ("shoes", "bags", "jackets", "beauty", "sports", "home", "kids", "electronics")
BRANDS = tuple(f"brand-{b:02d}" for b in range(12))
PRICE_BANDS = ("low", "mid", "high")
PRICE_RANGES = ((5.0, 30.0), (30.0, 90.0), (90.0, 300.0))
TAGS = ("eco", "new", "sale", "premium", "outdoor", "gift", "trending", "classic")
SEGMENTS = ("bargain", "premium", "sporty", "family", "trendy")
REGIONS = ("north", "south", "east", "west")
AGE_BANDS = ("18-24", "25-34", "35-49", "50+")
CHANNELS = ("web", "app", "email")
SURFACES = ("home", "product", "cart")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
SLOTS_BY_SURFACE = {"home": 3, "product": 2, "cart": 1}
EXAMINATION = (1.0, 0.65, 0.45)
"""The chance that the user looks at slot 0, 1, 2 of a page: the position effect."""
HISTORY_HALF_LIFE = 7 * 86400.0
"""Simulated seconds in which a user's remembered clicks and purchases lose half their weight."""
RECENT_PURCHASE = 86400.0
"""Simulated seconds after a purchase during which the recency term applies."""


def daypart(hour: int) -> int:
    """0 night (0–5), 1 morning (6–11), 2 afternoon (12–17), 3 evening (18–23)."""
    return hour // 6


@dataclass(frozen=True, slots=True)
class WorldConfig:
    """The size and shape of the simulated storefront."""

    n_items: int = 200
    n_users: int = 2000
    candidates_per_visit: int = 20
    multi_slot: bool = True  # False: every page has one slot (offline comparisons)
    bias: float = -3.0
    taste_scale: float = 1.5  # spread of segment × category tastes, the strongest signal
    context_scale: float = 1.0  # 0 makes the best item depend on the user alone
    interest_match: float = 0.7
    quality_scale: float = 0.3
    purchase_bias: float = -1.5
    drift_at: int | None = None
    new_items_at: int | None = None
    new_items: int = 0
    seed: int = 0
    history: bool = False  # users' clicks depend on what they clicked and bought before
    favourite: float = 2.5
    loyalty: float = 1.0
    repeat: float = 1.0
    recency: float = 1.0
    seconds_per_visit: float = 60.0  # simulated time between two visits of the stream


@dataclass(frozen=True, slots=True)
class Visit:
    """One Recommend call's worth of situation: who, where, when, and which candidates."""

    index: int
    session: int
    user_id: str
    user_features: Features
    context: Features
    candidates: tuple[str, ...]
    slots: int
    ts: float = 0.0  # simulated seconds since the stream began


class Storefront:
    """The ground truth: catalog, users, visits, click and purchase probabilities, the oracle."""

    def __init__(self, config: WorldConfig = WorldConfig()) -> None:
        if config.candidates_per_visit > config.n_items:
            raise ValueError("candidates_per_visit must be at most n_items")
        self.config = config
        rng = np.random.default_rng(config.seed)
        total = config.n_items + config.new_items
        self._category = rng.integers(len(CATEGORIES), size=total)
        self._brand = rng.integers(len(BRANDS), size=total)
        self._band = rng.integers(len(PRICE_BANDS), size=total)
        self._tags = np.array([rng.choice(len(TAGS), size=2, replace=False) for _ in range(total)])
        low, high = np.array(PRICE_RANGES).T
        self.price = np.round(low[self._band] + rng.random(total) * (high - low)[self._band], 2)
        self._quality = rng.normal(0, config.quality_scale, total)
        self.items = [self._item(i) for i in range(total)]
        self.item_index = {item.item_id: i for i, item in enumerate(self.items)}

        self._segment = rng.integers(len(SEGMENTS), size=config.n_users)
        self._region = rng.integers(len(REGIONS), size=config.n_users)
        self._age = rng.integers(len(AGE_BANDS), size=config.n_users)
        self._interests = np.array([rng.choice(len(TAGS), size=2, replace=False) for _ in range(config.n_users)])

        s, c = config.taste_scale, config.taste_scale * config.context_scale
        self._taste = rng.normal(0, s, (len(SEGMENTS), len(CATEGORIES)))
        self._drifted_taste = rng.normal(0, s, (len(SEGMENTS), len(CATEGORIES)))
        self._price_fit = rng.normal(0, s / 3, (len(AGE_BANDS), len(PRICE_BANDS)))
        self._brand_fit = rng.normal(0, s / 5, (len(REGIONS), len(BRANDS)))
        self._channel_fit = rng.normal(0, c / 3, (len(CHANNELS), len(PRICE_BANDS)))
        self._daypart_fit = rng.normal(0, c / 2.5, (4, len(CATEGORIES)))
        self._weekend_fit = rng.normal(0, c / 4, (2, len(CATEGORIES)))
        self._surface_fit = rng.normal(0, c / 4, (len(SURFACES), len(CATEGORIES)))
        self._buy_fit = rng.normal(0, 0.8, (len(SEGMENTS), len(PRICE_BANDS)))
        # history (config.history): decayed counts as of each user's last update, and purchases' times
        self._clicked = np.zeros((config.n_users, len(CATEGORIES)))
        self._bought = np.zeros((config.n_users, len(BRANDS)))
        self._remembered_ts = np.zeros(config.n_users)
        self._last_purchase = np.full(config.n_users, -np.inf)
        self._spent: dict[int, float] = {}
        self._favourite = np.random.default_rng((config.seed, 3)).integers(len(CATEGORIES), size=config.n_users)

    def _item(self, i: int) -> Item:
        return Item(
            f"item-{i:04d}",
            {
                "category": CATEGORIES[self._category[i]],
                "brand": BRANDS[self._brand[i]],
                "price_band": PRICE_BANDS[self._band[i]],
                "tags": tuple(TAGS[t] for t in self._tags[i]),
            },
        )

    # -- the stream of visits --------------------------------------------------------------------

    def on_sale(self, index: int) -> int:
        """How many catalog items are on sale at visit ``index`` (new items arrive mid-run)."""
        arrived = self.config.new_items_at is not None and index >= self.config.new_items_at
        return self.config.n_items + (self.config.new_items if arrived else 0)

    def initial_items(self) -> list[Item]:
        return self.items[: self.config.n_items]

    def new_items(self) -> list[Item]:
        return self.items[self.config.n_items :]

    def visits(self, count: int, start: int = 0) -> list[Visit]:
        """Visits ``start … start+count-1``, grouped in sessions of 1–4 visits of the same user."""
        rng = np.random.default_rng((self.config.seed, 1))
        visits: list[Visit] = []
        index, session = 0, 0
        while index < start + count:
            user = int(rng.integers(self.config.n_users))
            channel = CHANNELS[int(rng.choice(3, p=(0.5, 0.35, 0.15)))]
            hour = int(rng.choice(24, p=_HOURLY_TRAFFIC))
            weekday = WEEKDAYS[int(rng.integers(7))]
            for _ in range(int(rng.integers(1, 5))):
                surface = SURFACES[int(rng.choice(3, p=(0.5, 0.35, 0.15)))]
                pool = self.on_sale(index)
                candidates = rng.choice(pool, size=self.config.candidates_per_visit, replace=False)
                if index >= start:
                    visits.append(self._visit(index, session, user, channel, surface, hour, weekday, candidates))
                index += 1
                if index >= start + count:
                    break
            session += 1
        return visits

    def _visit(self, index, session, user, channel, surface, hour, weekday, candidates) -> Visit:  # type: ignore[no-untyped-def]
        return Visit(
            index=index,
            session=session,
            user_id=f"user-{user:05d}",
            user_features={
                "segment": SEGMENTS[self._segment[user]],
                "region": REGIONS[self._region[user]],
                "age_band": AGE_BANDS[self._age[user]],
                "interests": tuple(TAGS[t] for t in self._interests[user]),
            },
            context={"channel": channel, "surface": surface, "hour": str(hour), "weekday": weekday},
            candidates=tuple(self.items[int(i)].item_id for i in candidates),
            slots=SLOTS_BY_SURFACE[surface] if self.config.multi_slot else 1,
            ts=index * self.config.seconds_per_visit,
        )

    # -- ground truth ----------------------------------------------------------------------------

    def click_probabilities(self, visit: Visit, item_ids: tuple[str, ...] | None = None) -> np.ndarray:
        """The click probability of each item (default: the visit's candidates) if looked at."""
        items = np.array([self.item_index[i] for i in (item_ids or visit.candidates)])
        user = int(visit.user_id.removeprefix("user-"))
        segment, region, age = self._segment[user], self._region[user], self._age[user]
        category, band = self._category[items], self._band[items]
        context = visit.context
        hour = int(str(context["hour"]))
        taste = self._drifted_taste if self._drifted(visit.index) else self._taste
        matches = np.isin(self._tags[items], self._interests[user]).sum(axis=1)
        logit = (
            self.config.bias
            + taste[segment, category]
            + self._price_fit[age, band]
            + self.config.interest_match * matches
            + self._brand_fit[region, self._brand[items]]
            + self._channel_fit[CHANNELS.index(str(context["channel"])), band]
            + self._daypart_fit[daypart(hour), category]
            + self._weekend_fit[int(context["weekday"] in ("sat", "sun")), category]
            + self._surface_fit[SURFACES.index(str(context["surface"])), category]
            + self._quality[items]
        )
        if self.config.history:
            logit = logit + self._history_terms(user, visit.ts, category, self._brand[items], band)
        return 1.0 / (1.0 + np.exp(-logit))

    def _history_terms(self, user: int, ts: float, category: np.ndarray, brand: np.ndarray,
                       band: np.ndarray) -> np.ndarray:
        """Category loyalty, repeat purchases of a brand and the recency of the last purchase."""
        keep = 0.5 ** (max(0.0, ts - self._remembered_ts[user]) / HISTORY_HALF_LIFE)
        config = self.config
        recent = ts - self._last_purchase[user] < RECENT_PURCHASE
        return (config.favourite * (category == self._favourite[user])
                + config.loyalty * np.minimum(1.0, keep * self._clicked[user, category])
                + config.repeat * np.minimum(1.0, keep * self._bought[user, brand])
                + (config.recency * (1.0 - band) if recent else 0.0))

    def remember(self, visit: Visit, shown: list[str], outcome: list[tuple[bool, float]]) -> None:
        """With ``history``: the user clicked and bought what ``outcome`` (of :meth:`react`) says."""
        if not self.config.history:
            return
        user = int(visit.user_id.removeprefix("user-"))
        keep = 0.5 ** (max(0.0, visit.ts - self._remembered_ts[user]) / HISTORY_HALF_LIFE)
        self._clicked[user] *= keep
        self._bought[user] *= keep
        self._remembered_ts[user] = max(visit.ts, self._remembered_ts[user])
        spent = 0.0
        for item_id, (clicked, value) in zip(shown, outcome, strict=True):
            i = self.item_index[item_id]
            self._clicked[user, self._category[i]] += clicked
            if value > 0:
                self._bought[user, self._brand[i]] += 1.0
                self._last_purchase[user] = visit.ts
                spent += value
        if spent:
            self._spent[visit.index] = spent

    def spent(self, visit: Visit) -> float:
        """What the user of ``visit`` spent on it (with ``history``; 0 otherwise), told once."""
        return self._spent.pop(visit.index, 0.0)

    def purchase_probabilities(self, visit: Visit, item_ids: tuple[str, ...] | None = None) -> np.ndarray:
        """The chance that a click on each item (default: the candidates) becomes a purchase."""
        items = np.array([self.item_index[i] for i in (item_ids or visit.candidates)])
        segment = self._segment[int(visit.user_id.removeprefix("user-"))]
        return 1.0 / (1.0 + np.exp(-(self.config.purchase_bias + self._buy_fit[segment, self._band[items]])))

    def _drifted(self, index: int) -> bool:
        return self.config.drift_at is not None and index >= self.config.drift_at

    def page_value(self, visit: Visit, shown: list[str]) -> tuple[float, float]:
        """Expected (clicks, purchases) of a page showing ``shown`` in slot order."""
        p = self.click_probabilities(visit, tuple(shown))
        q = self.purchase_probabilities(visit, tuple(shown))
        looks = EXAMINATION[: len(shown)]
        return float(np.dot(looks, p)), float(np.dot(looks, p * q))

    def oracle(self, visit: Visit) -> list[str]:
        """The page with the most expected clicks: the most clickable candidates, best first."""
        best = np.argsort(-self.click_probabilities(visit), kind="stable")[: visit.slots]
        return [visit.candidates[i] for i in best]

    def random_page_value(self, visit: Visit) -> tuple[float, float]:
        """Expected (clicks, purchases) of a uniformly random page: each slot earns the mean candidate."""
        p, q = self.click_probabilities(visit), self.purchase_probabilities(visit)
        looks = sum(EXAMINATION[: visit.slots])
        return float(p.mean() * looks), float((p * q).mean() * looks)

    # -- the user's reaction ---------------------------------------------------------------------

    def react(self, visit: Visit, shown: list[str]) -> list[tuple[bool, float]]:
        """Per shown slot: (clicked, purchase value). Seeded by the visit, the same for any policy.

        The uniform numbers depend only on the visit and the slot, so two policies showing the same
        item in the same slot see the same outcome (common random numbers).
        """
        rng = np.random.default_rng((self.config.seed, 2, visit.index))
        looks, clicks, buys = rng.random((3, len(EXAMINATION)))
        p = self.click_probabilities(visit, tuple(shown))
        q = self.purchase_probabilities(visit, tuple(shown))
        outcome = []
        for k, item_id in enumerate(shown):
            clicked = bool(looks[k] < EXAMINATION[k] and clicks[k] < p[k])
            bought = clicked and bool(buys[k] < q[k])
            outcome.append((clicked, float(self.price[self.item_index[item_id]]) if bought else 0.0))
        return outcome


# More visits in the evening than at night.
_HOURLY_TRAFFIC = np.array([1, 1, 1, 1, 1, 1, 2, 3, 4, 4, 4, 5, 6, 5, 4, 4, 5, 6, 8, 9, 9, 7, 4, 2], dtype=float)
_HOURLY_TRAFFIC /= _HOURLY_TRAFFIC.sum()
