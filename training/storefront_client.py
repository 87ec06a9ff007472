"""Drive a recbandit server through gRPC exactly as a storefront would.

Each round: Recommend for a simulated visit (the catalog's active items are the candidates),
the simulated user clicks or not, and a click is reported with Feedback. By default a miss is
reported as nothing at all, as most storefronts do: the reward window closes and the default
reward (0) is learned. With ``report_misses`` a miss is reported at once as reward 0
(label ``no_click``), which removes the window's delay from the negatives.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc

from server._proto.recbandit.v1 import recbandit_pb2 as pb
from server._proto.recbandit.v1 import recbandit_pb2_grpc as pb_grpc
from server.converters import features_to_proto, item_to_proto
from training.simulator import Storefront


@dataclass(frozen=True, slots=True)
class Round:
    """One simulated round: what was shown and what each policy would expect to earn."""

    index: int
    event_id: str
    item_id: str
    probability: float
    clicked: bool
    expected_reward: float
    random_reward: float
    oracle_reward: float


class StorefrontClient:
    def __init__(self, channel: grpc.Channel, world: Storefront, *, report_misses: bool = False) -> None:
        self.recommender = pb_grpc.RecommenderStub(channel)
        self.catalog = pb_grpc.CatalogStub(channel)
        self.admin = pb_grpc.AdminStub(channel)
        self.world = world
        self.report_misses = report_misses
        self._items = {item.item_id: item for item in world.items}

    def publish_catalog(self) -> int:
        request = pb.UpsertItemsRequest(items=[item_to_proto(item) for item in self.world.items])
        return self.catalog.UpsertItems(request).upserted

    def play(self, index: int) -> Round:
        visit = self.world.visit(index)
        request = pb.RecommendRequest(user_id=visit.user_id)
        features_to_proto(visit.user_features, request.user_features)
        features_to_proto(visit.context, request.context)
        response = self.recommender.Recommend(request)
        shown = response.items[0]
        item = self._items[shown.item_id]
        clicked = self.world.clicked(visit, item)
        if clicked or self.report_misses:
            self.recommender.Feedback(
                pb.FeedbackRequest(
                    event_id=response.event_id, reward=float(clicked), label="click" if clicked else "no_click"
                )
            )
        items = list(self._items.values())
        return Round(
            index=index,
            event_id=response.event_id,
            item_id=shown.item_id,
            probability=shown.probability,
            clicked=clicked,
            expected_reward=self.world.click_probability(visit, item),
            random_reward=self.world.random_reward(visit, items),
            oracle_reward=self.world.oracle_reward(visit, items),
        )

    def play_many(
        self, count: int, *, concurrency: int = 4, start: int = 0, on_round: Callable[[Round], None] | None = None
    ) -> list[Round]:
        """Play rounds ``start … start+count-1`` with ``concurrency`` storefront threads, in index order."""
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            rounds = []
            for played in pool.map(self.play, range(start, start + count)):
                rounds.append(played)
                if on_round is not None:
                    on_round(played)
        return rounds
