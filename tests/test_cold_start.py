"""Answers before any training: a Recommend without candidates from a catalog larger than
max_candidates, with no embeddings, gets the cold-start set (popular, newest, explore)."""

from __future__ import annotations

import random
import time
from collections import Counter

import pytest

from engine.coldstart import ColdStart, ColdStartConfig, RecentRewards
from engine.errors import ConfigurationError
from engine.records import Outcome
from engine.types import Item
from server._proto.recbandit.v1 import recbandit_pb2 as pb
from server.settings import Settings

CATALOG = 2_000


def outcome(seq: int, item_id: str, reward: float, ts: float) -> Outcome:
    return Outcome(seq, f"e{seq}", 0, item_id, reward, "reward", ts)


def catalog_of(n: int) -> dict[str, Item]:
    return {f"sku-{i}": Item(f"sku-{i}", {"category": f"c{i % 7}"}, True, version=i + 1) for i in range(n)}


def test_a_fresh_server_with_a_large_catalog_answers_without_candidates(start_server) -> None:  # type: ignore[no-untyped-def]
    running, client = start_server()
    for start in range(0, CATALOG, 1000):
        client.catalog.UpsertItems(pb.UpsertItemsRequest(items=[
            pb.Item(item_id=f"sku-{i}", active=True, features={"category": pb.FeatureValue(string_value=f"c{i % 7}")})
            for i in range(start, start + 1000)]))
    client.catalog.UpsertItems(pb.UpsertItemsRequest(items=[pb.Item(item_id="sku-1999", active=False)]))

    newest = {f"sku-{i}" for i in range(1988, 1998)}  # the last written active items

    def offered_now() -> set[str]:
        reply = client.recommender.Recommend(pb.RecommendRequest(user_id="probe", exclude_item_ids=["sku-1998"]))
        return {c.item_id for c in running.engine.log.get_decision(reply.event_id).candidates}

    deadline = time.monotonic() + 10
    while not newest <= offered_now():  # the slices are ranked off the request path, just after a write
        assert time.monotonic() < deadline, "the newest items never reached the cold-start set"
        time.sleep(0.05)
    seen: Counter[str] = Counter()
    for n in range(40):
        reply = client.recommender.Recommend(pb.RecommendRequest(user_id=f"u{n}", num_results=2,
                                                                exclude_item_ids=["sku-1998"]))
        logged = running.engine.log.get_decision(reply.event_id)
        offered = [c.item_id for c in logged.candidates]
        assert len(offered) == 50 == len(set(offered))  # no reward yet: 10 newest and 40 explored
        assert "sku-1999" not in offered and "sku-1998" not in offered  # inactive, excluded
        assert newest <= set(offered)
        for slot, item in zip(logged.slots, reply.items, strict=True):
            assert slot.item_id == item.item_id and slot.pmf[offered.index(item.item_id)] == slot.probability
            assert sum(slot.pmf) == pytest.approx(1.0)
        seen.update(set(offered) - newest)
    assert len(seen) > 600  # the explore slice spreads over the catalog, not a fixed few


def test_the_popular_slice_ranks_by_smoothed_recent_reward() -> None:
    now = 1_000_000.0
    outcomes = [
        *(outcome(n, "steady", float(n % 2), now - 60) for n in range(1000)),  # 50% of 1,000
        outcome(1001, "lucky", 1.0, now - 60), outcome(1002, "lucky", 1.0, now - 60),  # 2 of 2
        *(outcome(1003 + n, "stale", 1.0, now - 30 * 86_400) for n in range(1000)),  # 100%, a month ago
        *(outcome(2003 + n, "dud", 0.0, now - 60) for n in range(500)),
    ]
    recent = RecentRewards(half_life_seconds=86_400.0, prior_strength=10.0)
    recent.add(outcomes)
    rates = recent.rates(now)
    assert rates["steady"] == pytest.approx(0.5, abs=0.01)
    assert rates["steady"] > rates["lucky"]  # two clicks in two shows are shrunk toward the mean
    assert recent.top(2, now, lambda i: True) == ["steady", "lucky"]
    assert recent.top(1, now, lambda i: i != "steady") == ["lucky"]
    assert rates["dud"] < 0.05


def test_the_set_is_popular_then_newest_then_a_uniform_sample_of_the_rest() -> None:
    catalog = catalog_of(CATALOG)
    popular = [outcome(n, f"sku-{n % 5}", 1.0, time.time()) for n in range(1, 101)]
    cold = ColdStart(ColdStartConfig(popular=5, newest=10, explore=20), lambda after, limit: popular[after:after + limit])
    assert cold.refresh(time.time(), catalog) == 100
    active = tuple(catalog)

    counts: Counter[str] = Counter()
    rng = random.Random(7)
    draws = 4_000
    for _ in range(draws):
        ids = cold.candidate_ids(catalog, active, {"sku-3"}, rng)
        assert set(ids[:4]) == {"sku-0", "sku-1", "sku-2", "sku-4"}  # the rewarded five, sku-3 excluded
        assert set(ids[4:14]) == {f"sku-{i}" for i in range(1990, 2000)} and len(ids) == 35 == len(set(ids))
        counts.update(ids[14:])
    rest = CATALOG - 5 - 10
    expected = draws * 21 / rest  # the sample takes the popular slice's empty place: about 42.3 each
    assert set(counts) <= {f"sku-{i}" for i in range(5, 1990)}
    assert len(counts) > 0.99 * rest
    assert max(counts.values()) < 2.2 * expected and sum(counts.values()) == draws * 21
    deviation = sum((counts.get(f"sku-{i}", 0) - expected) ** 2 / expected for i in range(5, 1990))
    assert deviation < rest + 5 * (2 * rest) ** 0.5  # chi-square with rest - 1 degrees of freedom, 5 sigma


def test_before_any_ranking_the_set_is_a_bounded_sample_of_the_current_catalog() -> None:
    catalog = catalog_of(CATALOG)
    cold = ColdStart(ColdStartConfig(popular=5, newest=10, explore=20), lambda after, limit: [])
    ids = cold.candidate_ids(catalog, tuple(catalog), set(), random.Random(3))  # refresh has not run yet
    assert len(ids) == 35 == len(set(ids))  # every place goes to the sample
    again = cold.candidate_ids(catalog, tuple(catalog), set(), random.Random(3))
    assert ids == again  # a seeded draw: the same event gets the same set
    gone = {i: Item(i, {}, active=False, version=1) for i in list(catalog)[:1990]}
    shrunk = {**catalog, **gone}  # a bulk deactivation the ranking has not seen: only current actives come back
    assert set(cold.candidate_ids(shrunk, tuple(i for i in shrunk if shrunk[i].active), set(), random.Random(4))) == {
        f"sku-{i}" for i in range(1990, 2000)}


def test_the_slices_are_configurable_and_checked() -> None:
    assert Settings(data_dir="d", cold_start_candidates="5,0,45").engine_config().cold_start.explore == 45
    with pytest.raises(ConfigurationError, match="cold_start_candidates: must be POPULAR,NEWEST,EXPLORE"):
        Settings(data_dir="d", cold_start_candidates="5,5").engine_config()
    with pytest.raises(ConfigurationError, match="more than max_candidates 500"):
        Settings(data_dir="d", cold_start_candidates="400,100,1").engine_config()
    with pytest.raises(ConfigurationError, match="cold_start_half_life"):
        Settings(data_dir="d", cold_start_half_life="soon").engine_config()
