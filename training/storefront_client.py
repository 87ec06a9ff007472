"""Drive a recbandit server exactly as a storefront would, through the client it is handed
(:class:`Recbandit`: what :class:`server.client.RecbanditClient` does; training does not import the server).

The simulated visits are served in order, in rounds of ``Behaviour.feedback_delay`` visits: the
storefront calls Recommend for every visit of a round (``concurrency`` at a time), and only then
do the users' reactions come back — so the server always has about a round of decisions waiting
for their rewards, as on a real site.

- A page is Recommend with the visit's candidates (ids only; the server knows their features from
  the catalog), the visit's slots (multi-slot: ``num_results``), user features and context, and
  an event id of the storefront's own (``visit-<index>``), so the seeded draws repeat run to run.
- Pages sent by email are prepared before anyone sees them: they are requested with
  ``defer_activation`` and activated (Activate) only when the email is opened; unopened ones are
  never seen, never rewarded and never learned.
- A click is reported with Feedback (reward 1, label ``click``), and a purchase after it (label
  ``purchase``, reward = its value); a share of clicks is lost on the way, and misses are not
  reported at all — the reward window closes and the default reward (0) is learned. With
  ``report_misses`` a miss is reported at once as reward 0 (label ``no_click``).
- Items that go on sale mid-run are published through the Catalog RPCs when they arrive.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from engine.types import Features, Item
from training.simulator import Storefront, Visit

SIMULATED_DEADLINE = 60.0
"""Seconds a simulated call may take, retries included: no page waits for it, and a machine busy
with the demo's training or a test suite must not turn a slow call into a lost visit."""


class RankedItem(Protocol):
    @property
    def probability(self) -> float: ...


class Recommendation(Protocol):
    """What the storefront reads of a Recommend reply."""

    @property
    def event_id(self) -> str: ...

    @property
    def item_ids(self) -> tuple[str, ...]: ...

    @property
    def items(self) -> Sequence[RankedItem]: ...


class Recbandit(Protocol):
    """The calls the storefront makes: :class:`server.client.RecbanditClient`'s, handed in by the caller."""

    def recommend(self, user_id: str, *, user_features: Features | None = None, context: Features | None = None,
                  candidates: Sequence[str] | None = None, num_results: int = 1, defer_activation: bool = False,
                  event_id: str | None = None) -> Recommendation: ...

    def feedback(self, event_id: str, reward: float, *, item_id: str = "", label: str = "") -> object: ...

    def activate(self, event_id: str) -> object: ...

    def upsert_items(self, items: Iterable[Item]) -> int: ...


@dataclass(frozen=True, slots=True)
class Behaviour:
    """How the simulated storefront and its users report back."""

    feedback_delay: int = 32  # visits served before the reactions to them come back
    feedback_loss: float = 0.05  # share of clicks whose Feedback never arrives
    deferred_channel: str = "email"  # pages for this channel wait for Activate
    open_rate: float = 0.5  # share of deferred pages that are seen (activated)
    report_purchases: bool = True
    report_misses: bool = False


@dataclass(frozen=True, slots=True)
class Page:
    """One Recommend round: what was shown, what happened, what each policy would expect to earn."""

    index: int
    event_id: str
    shown: tuple[str, ...]
    probabilities: tuple[float, ...]
    seen: bool  # False for a deferred page that was never activated
    clicks: int  # clicks the user made (reported or lost)
    reported_clicks: int
    purchases: int
    revenue: float
    expected_clicks: float
    expected_purchases: float
    random_clicks: float
    random_purchases: float
    oracle_clicks: float
    oracle_purchases: float


class StorefrontClient:
    """The simulated storefront, calling recbandit through ``recbandit`` (one client for every thread)."""

    def __init__(self, recbandit: Recbandit, world: Storefront, behaviour: Behaviour = Behaviour()) -> None:
        self.recbandit = recbandit
        self.world = world
        self.behaviour = behaviour
        self._published = 0

    def publish_catalog(self, index: int = 0) -> int:
        """Publish the items on sale at visit ``index`` that the server does not have yet."""
        on_sale = self.world.on_sale(index)
        if on_sale <= self._published:
            return 0
        items = self.world.items[self._published : on_sale]
        upserted = self.recbandit.upsert_items(items)
        self._published = on_sale
        return upserted

    def recommend(self, visit: Visit) -> Recommendation:
        return self.recbandit.recommend(
            visit.user_id,
            user_features=visit.user_features,
            context=visit.context,
            candidates=visit.candidates,
            num_results=visit.slots,
            defer_activation=visit.context["channel"] == self.behaviour.deferred_channel,
            event_id=f"visit-{visit.index:07d}",  # the storefront's own id: the seeded draws repeat run to run
        )

    def react(self, visit: Visit, response: Recommendation) -> Page:
        """The user's reaction to the page, reported through Activate and Feedback."""
        behaviour, world = self.behaviour, self.world
        shown = list(response.item_ids)
        rng = np.random.default_rng((world.config.seed, 3, visit.index))
        opened, *lost = rng.random(1 + len(shown))
        deferred = visit.context["channel"] == behaviour.deferred_channel
        seen = not deferred or opened < behaviour.open_rate
        outcome = world.react(visit, shown) if seen else [(False, 0.0)] * len(shown)
        if deferred and seen:
            self.recbandit.activate(response.event_id)
        reported = 0
        for slot, (item_id, (clicked, revenue)) in enumerate(zip(shown, outcome, strict=True)):
            if not seen or (clicked and lost[slot] < behaviour.feedback_loss):
                continue
            if clicked:
                reported += 1
                self.recbandit.feedback(response.event_id, 1.0, item_id=item_id, label="click")
                if revenue and behaviour.report_purchases:
                    self.recbandit.feedback(response.event_id, revenue, item_id=item_id, label="purchase")
            elif behaviour.report_misses:
                self.recbandit.feedback(response.event_id, 0.0, item_id=item_id, label="no_click")
        clicks, purchases = world.page_value(visit, shown)
        random_clicks, random_purchases = world.random_page_value(visit)
        oracle_clicks, oracle_purchases = world.page_value(visit, world.oracle(visit))
        return Page(
            index=visit.index,
            event_id=response.event_id,
            shown=tuple(shown),
            probabilities=tuple(item.probability for item in response.items),
            seen=seen,
            clicks=sum(c for c, _ in outcome),
            reported_clicks=reported,
            purchases=sum(1 for _, r in outcome if r),
            revenue=sum(r for _, r in outcome),
            expected_clicks=clicks,
            expected_purchases=purchases,
            random_clicks=random_clicks,
            random_purchases=random_purchases,
            oracle_clicks=oracle_clicks,
            oracle_purchases=oracle_purchases,
        )

    def play(
        self,
        count: int,
        *,
        start: int = 0,
        concurrency: int = 4,
        on_page: Callable[[Page], None] | None = None,
        after_round: Callable[[], object] | None = None,
    ) -> list[Page]:
        """Serve visits ``start … start+count-1`` of the world's stream, round by round, in index order.

        ``after_round`` runs once the reactions of a round are reported (a test can wait there for
        the server to learn them, so the outcome does not depend on how busy the machine is).
        """
        visits = self.world.visits(count, start)
        delay = self.behaviour.feedback_delay
        pages: list[Page] = []
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            for start in range(0, count, delay):
                batch = visits[start : start + delay]
                self.publish_catalog(batch[-1].index)
                responses = list(pool.map(self.recommend, batch))
                for page in pool.map(self.react, batch, responses):
                    pages.append(page)
                    if on_page is not None:
                        on_page(page)
                if after_round is not None:
                    after_round()
        return pages
