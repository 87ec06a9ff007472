"""User portraits: the maths with exact numbers, then through a real server, the store's migration,
and the bandit's lift in a simulated world whose users remember."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from engine import portraitstore
from engine.bandit import decision_lines
from engine.eventlog import EventLog
from engine.logreader import LOG_SCHEMA_VERSION
from engine.portraits import (
    DAY,
    INTEREST_HALF_LIFE,
    MAX_CHANNEL,
    MAX_INTERESTS,
    MINUTE,
    MONETARY_BUCKETS,
    NO_PORTRAIT,
    RECENCY_BUCKETS,
    RFM_HALF_LIFE,
    SESSION_GAP,
    History,
    Portrait,
    Visits,
    bucket,
    decayed,
    history_from_json,
    history_to_json,
    portrait_features,
    rewarded,
    visited,
    visits_from_json,
    visits_to_json,
)
from engine.records import LoggedDecision, Reward, SlotChoice
from engine.retention import Retention
from engine.rewards import RewardRules
from engine.types import Candidate
from server._proto.recbandit.v1 import recbandit_pb2 as pb
from server.wire import features_to_proto
from tests.conftest import execute, postgres_schema
from training.bench_quality import oracle_and_random, play_stream, summary_rows
from training.simulator import WorldConfig

SHOES = {"category": "shoes", "brand": "acme", "tags": ("eco", "sale"), "price": 25.0}
HAT = {"category": "hats", "brand": "hatco", "tags": ("sale",), "price": 9.0}
T0 = 1_750_000_000.0


# -- the maths -------------------------------------------------------------------------------------


def test_buckets_take_the_first_whose_upper_bound_the_value_is_below() -> None:
    assert [bucket(x, RECENCY_BUCKETS) for x in (0.0, DAY - 1, DAY, 7 * DAY, 89 * DAY, 90 * DAY)] == [
        "1d", "1d", "7d", "30d", "90d", "older"]
    assert [bucket(x, MONETARY_BUCKETS) for x in (0.0, 9.99, 10.0, 199.0, 200.0, 5000.0)] == [
        "0", "<10", "10-50", "50-200", "200-1000", "1000+"]


def test_counts_halve_every_half_life_and_a_late_write_does_not_grow_them() -> None:
    assert decayed(8.0, 2 * INTEREST_HALF_LIFE, INTEREST_HALF_LIFE) == 2.0
    assert decayed(8.0, -DAY, INTEREST_HALF_LIFE) == 8.0


def test_clicks_make_decayed_interests_and_purchases_make_rfm() -> None:
    history = rewarded(History(), T0, "click", 1.0, SHOES)
    assert history == History(T0, (("brand=acme", 1.0), ("category=shoes", 1.0), ("tags=eco", 1.0), ("tags=sale", 1.0)))
    later = T0 + INTEREST_HALF_LIFE  # the first click weighs half by now
    history = rewarded(history, later, "purchase", 40.0, HAT)
    assert dict(history.interests) == {"tags=sale": 1.5, "brand=hatco": 1.0, "category=hats": 1.0,
                                       "brand=acme": 0.5, "category=shoes": 0.5, "tags=eco": 0.5}
    assert history.interests[0] == ("tags=sale", 1.5)  # strongest first
    assert (history.last_purchase_ts, history.purchases, history.spent) == (later, 1.0, 40.0)
    history = rewarded(history, later + RFM_HALF_LIFE, "purchase", 80.0, HAT)
    assert (history.purchases, history.spent) == (1.5, 100.0)  # 1·½ + 1 and 40·½ + 80
    assert rewarded(history, later, "click", 0.0, SHOES) is history  # no reward above 0: nothing learned
    assert rewarded(history, later, "click", -1.0, SHOES) is history


def test_a_reward_arriving_late_adds_what_it_would_weigh_now() -> None:
    history = rewarded(History(), T0 + INTEREST_HALF_LIFE, "click", 1.0, {"category": "hats"})
    history = rewarded(history, T0, "click", 1.0, {"category": "shoes"})
    assert history.ts == T0 + INTEREST_HALF_LIFE and dict(history.interests) == {"category=hats": 1.0, "category=shoes": 0.5}


def test_a_portrait_keeps_at_most_its_strongest_interests() -> None:
    history = History()
    for day in range(MAX_INTERESTS + 8):
        history = rewarded(history, T0 + day * DAY, "click", 1.0, {"category": f"c{day:02d}"})
    assert len(history.interests) == MAX_INTERESTS
    assert {k for k, _ in history.interests} == {f"category=c{d:02d}" for d in range(8, MAX_INTERESTS + 8)}


def test_visits_less_than_the_session_gap_apart_are_one_session() -> None:
    first = visited(Visits(), T0, {"channel": "app"})
    assert first == Visits(T0, 1, "app")
    second = visited(first, T0 + 10 * MINUTE, {"channel": "web"})
    assert second == Visits(T0 + 10 * MINUTE, 2, "web")
    assert visited(second, T0 + 10 * MINUTE + SESSION_GAP, {}) == Visits(T0 + 10 * MINUTE + SESSION_GAP, 1, "")


def test_the_features_a_decision_sees() -> None:
    assert portrait_features(NO_PORTRAIT, T0, {"channel": "app"}) == {}  # a first visit: nothing known
    history = rewarded(rewarded(History(), T0, "click", 1.0, SHOES), T0, "purchase", 25.0, SHOES)
    history = rewarded(history, T0, "click", 1.0, HAT)
    portrait = Portrait(visited(visited(Visits(), T0 - 5 * MINUTE, {"channel": "email"}), T0, {"channel": "email"}),
                        history)
    assert portrait_features(portrait, T0 + 2 * DAY, {"channel": "app"}) == {
        "likes_brand": ("acme",),  # acme 2 (a click and a purchase), hatco 1
        "likes_category": ("shoes",),
        "likes_tags": ("sale",),  # sale 3, eco 2
        "recency": "7d",
        "frequency": "1",
        "monetary": "10-50",
        "since_last_visit": "7d",
        "came_from": "email",
    }
    assert portrait_features(portrait, T0 + 10 * MINUTE, {"channel": "email"}) == {
        "likes_brand": ("acme",), "likes_category": ("shoes",), "likes_tags": ("sale",),
        "recency": "1d", "frequency": "1", "monetary": "10-50",
        "since_last_visit": "session", "session_visits": "3-5"}
    faded = portrait_features(portrait, T0 + 3 * INTEREST_HALF_LIFE, {"channel": "email"})  # weights ⅛ of theirs
    assert {n: v for n, v in faded.items() if n.startswith("likes_")} == {  # 2/8 = 0.25 is shown, 1/8 is not
        "likes_brand": ("acme",), "likes_category": ("shoes",), "likes_tags": ("sale",)}
    assert portrait_features(Portrait(history=History(0.0, (("category=shoes", 0.25 - 1e-9),))), 0.0, {}) == {}
    assert not any(n.startswith("likes_") for n in portrait_features(portrait, T0 + 4 * INTEREST_HALF_LIFE, {}))


def test_a_long_channel_is_compared_as_kept() -> None:
    channel = "c" * (MAX_CHANNEL + 6)
    portrait = Portrait(visited(Visits(), T0, {"channel": channel}))
    assert portrait.visits.channel == channel[:MAX_CHANNEL]
    assert "came_from" not in portrait_features(portrait, T0 + MINUTE, {"channel": channel})
    assert portrait_features(portrait, T0 + MINUTE, {"channel": "app"})["came_from"] == channel[:MAX_CHANNEL]


def test_portraits_round_trip_through_their_columns() -> None:
    history = rewarded(rewarded(History(), T0, "purchase", 25.0, SHOES), T0 + DAY, "click", 1.0, HAT)
    visits = Visits(T0, 3, "app")
    assert history_from_json(history_to_json(history)) == history
    assert visits_from_json(visits_to_json(visits)) == visits
    assert history_from_json("") == History() and visits_from_json("") == Visits()


# -- through a real server -------------------------------------------------------------------------

CATALOG = {"sku-shoes": SHOES, "sku-hat": HAT}


def recommend(client, user_id: str, event_id: str, items: tuple[str, ...] = tuple(CATALOG),  # type: ignore[no-untyped-def]
              channel: str = "app") -> pb.RecommendResponse:
    message = pb.RecommendRequest(user_id=user_id, event_id=event_id)
    features_to_proto({"segment": "regular"}, message.user_features)
    features_to_proto({"channel": channel}, message.context)
    for item_id in items:
        features_to_proto(CATALOG[item_id], message.candidates.add(item_id=item_id).features)
    return client.recommender.Recommend(message)


def click_and_buy(client, user_id: str, event_id: str) -> None:  # type: ignore[no-untyped-def]
    """u bought the shoes: a decision with them alone, a click and a purchase of 25."""
    recommend(client, user_id, event_id, ("sku-shoes",))
    for label, value in (("click", 1.0), ("purchase", 25.0)):
        client.recommender.Feedback(pb.FeedbackRequest(event_id=event_id, item_id="sku-shoes", reward=value, label=label))


def portrait_rows(data_dir: Path, user_id: str) -> int:
    with sqlite3.connect(data_dir / "events.db") as db:
        return int(db.execute("SELECT COUNT(*) FROM portraits WHERE user_id = ?", (user_id,)).fetchone()[0])


def explained_features(client, event_id: str, item_id: str) -> set[str]:  # type: ignore[no-untyped-def]
    why = client.admin.Explain(pb.ExplainRequest(event_id=event_id, item_id=item_id, max_features=100))
    return {c.feature for c in why.contributions}


def test_after_feedback_the_next_decision_carries_the_portrait_in_the_log_the_example_and_the_explanation(
        start_server) -> None:  # type: ignore[no-untyped-def]
    running, client = start_server()
    click_and_buy(client, "u1", "e1")
    recommend(client, "u1", "e2", channel="web")
    recommend(client, "u2", "f1")

    logged = running.engine.log.get_decision("e2")
    assert logged.portrait == {
        "likes_brand": ("acme",), "likes_category": ("shoes",), "likes_tags": ("eco",),  # eco and sale tie: by name
        "recency": "1d", "frequency": "1", "monetary": "10-50",
        "since_last_visit": "session", "session_visits": "2", "came_from": "app"}
    assert running.engine.log.get_decision("e1").portrait == {}  # u1's first visit
    assert running.engine.log.get_decision("f1").portrait == {}  # another user's
    shared, _ = decision_lines(logged)  # what learning, replay and reports rebuild
    assert " |Portrait likes_brand=acme likes_category=shoes likes_tags=eco recency=1d frequency=1" in shared
    (event,) = [e for e in running.engine.log.reader.history() if e.event_id == "e2"]
    assert event.to_export()["portrait"] == logged.portrait
    info = client.admin.GetModelInfo(pb.GetModelInfoRequest())
    assert "--quadratic PI" in info.vw_arguments
    features = explained_features(client, "e2", "sku-shoes")
    assert {"Portrait^likes_category=shoes*Item^category=shoes", "Portrait^recency=1d*Item^brand=acme"} <= features


def test_with_portraits_off_no_decision_carries_one_and_none_is_kept(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    running, client = start_server(portraits="off")
    click_and_buy(client, "u1", "e1")
    recommend(client, "u1", "e2")
    assert running.engine.log.get_decision("e2").portrait == {}
    assert "Portrait" not in decision_lines(running.engine.log.get_decision("e2"))[0]
    assert not any(f.startswith("Portrait^") or "*Portrait^" in f for f in explained_features(client, "e2", "sku-shoes"))
    assert "--quadratic PI" not in client.admin.GetModelInfo(pb.GetModelInfoRequest()).vw_arguments
    assert portrait_rows(tmp_path / "data", "u1") == 0


def test_interests_come_from_the_item_features_the_settings_name(start_server) -> None:  # type: ignore[no-untyped-def]
    running, client = start_server(portrait_interests="category")
    click_and_buy(client, "u1", "e1")
    recommend(client, "u1", "e2")
    portrait = running.engine.log.get_decision("e2").portrait
    assert portrait["likes_category"] == ("shoes",) and "likes_brand" not in portrait and "likes_tags" not in portrait


def test_forget_user_deletes_the_portrait(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    running, client = start_server()
    click_and_buy(client, "u1", "e1")
    click_and_buy(client, "u2", "f1")
    assert portrait_rows(tmp_path / "data", "u1") == 1
    client.admin.ForgetUser(pb.ForgetUserRequest(user_id="u1"))
    assert portrait_rows(tmp_path / "data", "u1") == 0
    assert portrait_rows(tmp_path / "data", "u2") == 1  # only theirs
    recommend(client, "u1", "e3")
    recommend(client, "u2", "f2")
    assert running.engine.log.get_decision("e3").portrait == {}  # a first visit again: nothing remembered
    assert running.engine.log.get_decision("f2").portrait["likes_category"] == ("shoes",)


# -- the store -------------------------------------------------------------------------------------


def logged(log: EventLog, user_id: str, event_id: str, ts: float = T0) -> None:
    """Log a decision of ``user_id`` (a portrait's writes need theirs)."""
    log.append_decision(LoggedDecision(event_id, ts, user_id, {}, {}, (Candidate("sku-shoes"),),
                                       (SlotChoice("sku-shoes", 1.0, (1.0,)),), "v", False, ts + 60))


def stored(store: str, user_id: str) -> Portrait:
    """The user's portrait as the store holds it, read by a process of its own (no cache of this one's)."""
    log = EventLog(store, RewardRules(), join_later=True)
    try:
        return log.portraits.get(user_id)
    finally:
        log.close()


def test_a_schema_4_store_migrates_and_keeps_portraits(store: str) -> None:
    EventLog(store, RewardRules()).close()
    execute(store, "DROP TABLE portraits")  # the store as recbandit with schema 4 left it
    execute(store, "UPDATE meta SET value = '4' WHERE key = 'schema_version'")
    log = EventLog(store, RewardRules())
    try:
        (version,) = log._reader().execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        assert version == str(LOG_SCHEMA_VERSION) == "5"
        logged(log, "u1", "e1")
        log.portraits.reward("u1", Reward("e1", "sku-shoes", "click", 1.0, T0), SHOES)
        log.portraits.visit("u1", log.portraits.get("u1"), T0, {"channel": "app"})
    finally:
        log.close()
    log = EventLog(store, RewardRules())  # read back from the store, not from a cache
    try:
        portrait = log.portraits.get("u1")
        assert portrait.visits == Visits(T0, 1, "app") and dict(portrait.history.interests)["category=shoes"] == 1.0
    finally:
        log.close()


def test_a_process_takes_in_the_portraits_another_wrote_and_forgot_at_its_next_look(store: str) -> None:
    writer, replica = EventLog(store, RewardRules()), EventLog(store, RewardRules(), join_later=True)
    try:
        assert replica.portraits.get("u1") == NO_PORTRAIT  # cached
        logged(writer, "u1", "e1")
        writer.portraits.reward("u1", Reward("e1", "sku-shoes", "purchase", 25.0, T0), SHOES)
        assert replica.portraits.get("u1") == NO_PORTRAIT  # until it looks
        assert replica.portraits.follow() == 1
        assert replica.portraits.get("u1").history.spent == 25.0
        writer.forget_user("u1")
        replica.portraits.follow()
        assert replica.portraits.get("u1") == NO_PORTRAIT
    finally:
        writer.close()
        replica.close()


# -- the lift in a world whose users remember ------------------------------------------------------


@pytest.mark.slow
def test_in_a_world_with_history_the_bandit_with_portraits_beats_the_one_without() -> None:
    """Whole-stream reward / oracle on three small worlds (100 users, 8 of 40 items a visit, 8,000
    visits): +0.044, +0.071 and +0.012 measured, +0.042 on average. Without portrait features both
    bandits would see the same lines and draw the same items: a lift of exactly 0."""
    lifts = []
    for seed in (0, 1, 2):
        config = WorldConfig(multi_slot=False, seed=seed, history=True, n_users=100, n_items=40,
                             candidates_per_visit=8, taste_scale=0.5)
        oracle, _ = oracle_and_random(config, 8000)
        without, with_portraits = summary_rows(
            [play_stream(name, config, 8000, seed) for name in ("recbandit squarecb", "recbandit squarecb + portraits")],
            oracle)
        lifts.append(float(with_portraits["whole"]) - float(without["whole"]))
    assert min(lifts) > 0 and sum(lifts) / len(lifts) > 0.03, lifts


def test_retention_deletes_the_portraits_nothing_renewed_within_it(store: str) -> None:
    log = EventLog(store, RewardRules())
    try:
        for user_id in ("old", "new"):
            logged(log, user_id, f"e-{user_id}", time.time())
            log.portraits.reward(user_id, Reward(f"e-{user_id}", "sku-shoes", "click", 1.0, time.time()), SHOES)
        execute(store, "UPDATE portraits SET updated = updated - 7200 WHERE user_id = 'old'")
        Retention(log, 3600.0, None).run(learned_seq=0)
        assert [u for (u,) in log._reader().execute("SELECT user_id FROM portraits")] == ["new"]
    finally:
        log.close()


def test_two_processes_rewarding_a_new_user_at_once_both_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each waits, after reading the row, until the other has read it too (or for a second): without
    a row to lock, both would read no history and the later write would undo the earlier."""
    both_read = threading.Barrier(2)

    def rewarded_once_both_read(*args):  # type: ignore[no-untyped-def]
        try:
            both_read.wait(timeout=1.0)
        except threading.BrokenBarrierError:
            pass  # the other waited for this one's lock, as it should
        return rewarded(*args)

    with postgres_schema() as store:
        logs = [EventLog(store, RewardRules(), join_later=True) for _ in range(2)]
        try:
            logged(logs[0], "u1", "e1")
            logged(logs[0], "u1", "e2")
            monkeypatch.setattr(portraitstore, "rewarded", rewarded_once_both_read)
            rewards = [threading.Thread(target=log.portraits.reward, args=("u1", Reward(e, "", "click", 1.0, T0), item))
                       for log, e, item in zip(logs, ("e1", "e2"), (SHOES, HAT), strict=True)]
            for thread in rewards:
                thread.start()
            for thread in rewards:
                thread.join(10)
            monkeypatch.undo()
            interests = dict(stored(store, "u1").history.interests)
            assert interests["category=shoes"] == 1.0 and interests["category=hats"] == 1.0
        finally:
            for log in logs:
                log.close()


def test_retention_leaves_no_deleted_portrait_or_old_history_in_the_cache(store: str) -> None:
    now = time.time()
    log = EventLog(store, RewardRules())
    try:
        for user_id in ("gone", "kept"):
            logged(log, user_id, f"e-{user_id}", now)
            log.portraits.reward(user_id, Reward(f"e-{user_id}", "", "click", 1.0, now - 7200), SHOES)
        execute(store, "UPDATE portraits SET updated = updated - 7200")
        log.portraits.visit("kept", log.portraits.get("kept"), now, {"channel": "app"})  # renews the row only
        assert log.portraits.get("gone").history.interests  # in the cache
        Retention(log, 3600.0, None).run(learned_seq=0)
        assert log.portraits.get("gone") == NO_PORTRAIT
        assert log.portraits.get("kept") == Portrait(Visits(now, 1, "app"))
        for user_id in ("gone", "kept"):  # the next visits write no old history back
            log.portraits.visit(user_id, log.portraits.get(user_id), now + 60, {"channel": "app"})
            assert log.portraits.get(user_id).history == stored(store, user_id).history == History()
    finally:
        log.close()


def test_a_reward_or_visit_whose_decision_was_forgotten_meanwhile_writes_no_portrait(store: str) -> None:
    log = EventLog(store, RewardRules())
    try:
        logged(log, "u1", "e1")
        log.forget_user("u1")  # after Feedback read the decision, before the portrait's write
        log.portraits.reward("u1", Reward("e1", "", "click", 1.0, T0), SHOES)
        log.portraits.visit("u1", NO_PORTRAIT, T0, {"channel": "app"}, "e1")
        assert log.portraits.get("u1") == NO_PORTRAIT
        assert log._reader().execute("SELECT COUNT(*) FROM portraits").fetchone()[0] == 0
    finally:
        log.close()


def test_a_visit_read_before_forget_user_does_not_bring_the_forgotten_portrait_back(store: str) -> None:
    log = EventLog(store, RewardRules())
    try:
        logged(log, "u1", "e1")
        log.portraits.reward("u1", Reward("e1", "", "purchase", 25.0, T0), SHOES)
        log.portraits.visit("u1", log.portraits.get("u1"), T0, {"channel": "email"})
        read = log.portraits.get("u1")  # Recommend reads the portrait …
        log.forget_user("u1")  # … ForgetUser runs …
        log.portraits.visit("u1", read, T0 + 60, {"channel": "app"})  # … and the decision commits
        assert log.portraits.get("u1") == stored(store, "u1") == Portrait(Visits(T0 + 60, 1, "app"))
    finally:
        log.close()


def test_a_process_takes_in_every_write_once_whatever_the_writers_clock_said(store: str) -> None:
    writer, replica = EventLog(store, RewardRules()), EventLog(store, RewardRules(), join_later=True)
    try:
        logged(writer, "u1", "e1")
        logged(writer, "u2", "f1")
        assert replica.portraits.get("u1") == NO_PORTRAIT  # cached
        writer.portraits.reward("u1", Reward("e1", "", "purchase", 25.0, T0), SHOES)
        execute(store, "UPDATE portraits SET updated = updated - 3600")  # a writer's clock an hour behind, or a backlog
        assert replica.portraits.follow() == 1 and replica.portraits.follow() == 0
        assert replica.portraits.get("u1").history.spent == 25.0
        writer.portraits.reward("u2", Reward("f1", "", "purchase", 30.0, T0), SHOES)
        execute(store, "UPDATE portraits SET history = '' WHERE user_id = 'u1'")  # seen by a miss only
        writer.forget_user("nobody")  # deletes no portrait: the other processes keep their caches
        assert replica.portraits.follow() == 1
        assert replica.portraits.get("u1").history.spent == 25.0 and replica.portraits.get("u2").history.spent == 30.0
    finally:
        writer.close()
        replica.close()
