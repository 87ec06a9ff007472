"""The event log's reward joining: each event slot becomes final exactly once, by the rules.

The tests that take ``store`` run on every backend: a SQLite file and a PostgreSQL schema.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from engine.errors import ConfigurationError, InvalidRequest, LeaseLost, PreconditionFailed, UnknownEvent
from engine.eventlog import EventLog
from engine.logreader import LOG_SCHEMA_VERSION
from engine.records import LoggedDecision, Reward, SlotChoice
from engine.rewards import Aggregation, RewardRules, parse_duration
from engine.types import Candidate, Status
from tests.conftest import execute


def decision(event_id: str, ts: float, *, deferred: bool = False, window: float = 60.0) -> LoggedDecision:
    return LoggedDecision(
        event_id=event_id,
        ts=ts,
        user_id="u1",
        user_features={"segment": "sporty", "tags": ("a", "b")},
        context={"channel": "app", "hour": "9"},
        candidates=(Candidate("a", {"price": 9.5}), Candidate("b", {"new": True}), Candidate("c")),
        slots=(SlotChoice("b", 0.5, (0.25, 0.5, 0.25)), SlotChoice("a", 0.75, (0.75, 0.0, 0.25))),
        model_version="vw-test@0",
        deferred=deferred,
        deadline=ts + window,
    )


def open_log(store: str | Path, **rules: object) -> EventLog:
    """The log of ``store`` (a ``store`` fixture's value, or a folder for its ``events.db``)."""
    where = store / "events.db" if isinstance(store, Path) else store
    return EventLog(where, RewardRules(**rules))  # type: ignore[arg-type]


def finals(log: EventLog) -> list[tuple[str, int, str, float, str]]:
    return [(o.event_id, o.slot, o.item_id, o.reward, o.source) for o in log.final_outcomes_after(0)]


def test_decisions_round_trip_with_every_feature_type(store: str) -> None:
    log = open_log(store)
    original = decision("e1", 1000.0)
    assert log.append_decision(original) is original
    assert log.get_decision("e1") == original
    log.close()


def test_earliest_learns_the_first_reward_and_defaults_the_rest(store: str) -> None:
    log = open_log(store, default_reward=-0.5)
    now = time.time()
    log.append_decision(decision("e1", now))
    assert log.append_reward(Reward("e1", "", "click", 1.0, now)) is Status.NEW  # "" means slot 0: b
    assert log.append_reward(Reward("e1", "b", "click", 1.0, now)) is Status.DUPLICATE
    assert log.append_reward(Reward("e1", "b", "purchase", 30.0, now)) is Status.NEW
    assert finals(log) == [("e1", 0, "b", 1.0, "reward")]
    assert log.close_windows(now + 61) == 1
    assert finals(log) == [("e1", 0, "b", 1.0, "reward"), ("e1", 1, "a", -0.5, "default")]
    assert log.close_windows(now + 120) == 0
    log.close()


def test_sum_waits_for_the_window_and_adds_up(store: str) -> None:
    log = open_log(store, aggregation=Aggregation.SUM)
    now = time.time()
    log.append_decision(decision("e1", now))
    log.append_reward(Reward("e1", "a", "click", 1.0, now))
    log.append_reward(Reward("e1", "a", "purchase", 30.0, now))
    assert finals(log) == []
    log.close_windows(now + 61)
    assert finals(log) == [("e1", 0, "b", 0.0, "default"), ("e1", 1, "a", 31.0, "sum")]
    log.close()


def test_deferred_events_need_activation_and_are_never_learned_without_it(store: str) -> None:
    log = open_log(store)
    now = time.time()
    log.append_decision(decision("shown", now, deferred=True))
    log.append_decision(decision("never", now, deferred=True))
    with pytest.raises(PreconditionFailed, match="not activated; call Activate first"):
        log.append_reward(Reward("shown", "b", "click", 1.0, now))
    assert log.activate("shown", now) is Status.NEW
    assert log.activate("shown", now) is Status.DUPLICATE
    assert log.append_reward(Reward("shown", "b", "click", 1.0, now)) is Status.NEW
    log.close_windows(now + 61)
    assert [f[0] for f in finals(log)] == ["shown", "shown"]
    with pytest.raises(PreconditionFailed, match="closed before activation"):
        log.activate("never", now + 62)
    log.close()


def test_rewards_are_refused_when_they_cannot_count(store: str) -> None:
    log = open_log(store)
    now = time.time()
    log.append_decision(decision("e1", now))
    with pytest.raises(UnknownEvent, match="no decision with event_id 'nope'"):
        log.append_reward(Reward("nope", "", "", 1.0, now))
    with pytest.raises(InvalidRequest, match="item_id: 'c' was not recommended in event 'e1'"):
        log.append_reward(Reward("e1", "c", "", 1.0, now))
    with pytest.raises(PreconditionFailed, match="reward window of this event has closed"):
        log.append_reward(Reward("e1", "a", "", 1.0, now + 61))
    assert log.reader.counts()["rewards"] == 0
    log.close()


def test_a_reopened_log_holds_everything_committed(store: str) -> None:
    log = open_log(store)
    now = time.time()
    for i in range(50):
        log.append_decision(decision(f"e{i}", now))
        log.append_reward(Reward(f"e{i}", "", "click", float(i), now))
    log.close()
    reopened = open_log(store)
    assert reopened.reader.counts() == {"decisions": 50, "rewards": 50, "outcomes": 50, "items": 0}
    assert [f[3] for f in finals(reopened)] == [float(i) for i in range(50)]
    assert len(list(reopened.reader.joined(batch=7))) == 50
    reopened.close()


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("45s", 45), ("10m", 600), ("2h", 7200), ("7d", 604800),
                                               ("500ms", 0.5)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_bad_duration_names_the_setting() -> None:
    with pytest.raises(ConfigurationError, match="reward_window: not a duration"):
        parse_duration("ten minutes")


def test_a_log_written_before_undelivered_existed_is_migrated_and_still_reads(tmp_path: Path) -> None:
    import sqlite3

    log = open_log(tmp_path)
    log.append_decision(decision("old", time.time()))
    log.close()
    with sqlite3.connect(tmp_path / "events.db") as conn:  # make it the version-1 layout
        conn.execute("DROP INDEX decisions_user")
        conn.execute("ALTER TABLE decisions DROP COLUMN undelivered")
        conn.execute("ALTER TABLE decisions DROP COLUMN pmf")
        conn.execute("UPDATE decisions SET record = json_set(record, '$.schema_version', 1, '$.slots',"
                     " json('[[\"b\",0.5,[0.25,0.5,0.25]],[\"a\",0.75,[0.75,0.0,0.25]]]'))")
        conn.execute("DROP INDEX rewards_unjoined")
        conn.execute("ALTER TABLE rewards DROP COLUMN joined")
        conn.execute("DROP TABLE snapshots")
        conn.execute("DROP TABLE embeddings")
        conn.execute("ALTER TABLE items DROP COLUMN version")
        conn.execute("DROP TABLE item_versions")
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    log = open_log(tmp_path)
    try:
        old = log.get_decision("old")
        assert old == dataclasses.replace(decision("old", old.ts), schema_version=1) and not old.undelivered
        (version,) = log._reader().execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        assert version == str(LOG_SCHEMA_VERSION)
    finally:
        log.close()


def test_a_log_of_a_newer_schema_is_refused_in_one_line(store: str) -> None:
    from engine.errors import StartupRefused

    open_log(store).close()
    execute(store, "UPDATE meta SET value = '9' WHERE key = 'schema_version'")
    with pytest.raises(StartupRefused, match=f"schema version is 9, newer than the {LOG_SCHEMA_VERSION} this recbandit reads"):
        open_log(store)


def test_superseded_catalog_versions_go_once_no_decision_in_the_log_can_name_them(store: str) -> None:
    from engine.types import Item

    log = open_log(store)
    try:
        [first] = log.catalog.upsert_items([Item("sku", {"price": 1.0})])
        [current] = log.catalog.upsert_items([Item("sku", {"price": 2.0})])
        log.catalog.upsert_items([Item("gone", {"x": "y"})])
        log.catalog.delete_items(["gone"])
        assert log.catalog.upsert_items([Item("sku", {"price": 2.0})]) == [current]  # unchanged: the same version, kept
        log.append_decision(decision("old", time.time() - 100))  # made before the changes: may name the old ones
        assert log.catalog.forget_superseded_versions(margin=0.0) == 0
        log.delete_events(["old"])
        assert log.catalog.forget_superseded_versions(margin=3600.0) == 0  # superseded too recently
        assert log.catalog.forget_superseded_versions(margin=-1.0) == 2  # the first price and the deleted item
        [item] = log.catalog.items()
        assert item.version == current and item.version != first
        assert log.catalog.upsert_items([Item("sku", {"price": 2.0})]) == [current]
    finally:
        log.close()


def test_rewards_a_serving_process_logs_are_made_final_by_the_learner_in_order(store: str) -> None:
    serving = EventLog(store, RewardRules(window_seconds=60.0), join_later=True)
    learner = EventLog(store, RewardRules(window_seconds=60.0))
    try:
        now = time.time()
        serving.append_decision(decision("e1", now))
        serving.append_decision(decision("e2", now))
        serving.append_reward(Reward("e1", "a", "click", 0.5, now + 2))
        serving.append_reward(Reward("e1", "a", "buy", 3.0, now + 1))  # the earlier one decides slot "a"
        serving.append_reward(Reward("e2", "", "click", 1.0, now + 1))
        assert finals(learner) == []  # logged, not yet final
        assert learner.join_rewards() == 2 and learner.join_rewards() == 0
        assert sorted(finals(learner)) == [("e1", 1, "a", 3.0, "reward"), ("e2", 0, "b", 1.0, "reward")]
        serving.append_reward(Reward("e2", "a", "click", 1.0, now + 3))  # logged, then the window closes
        assert learner.close_windows(now + 61) == 2  # e2's "a" from its reward; e1's "b" by default
        assert ("e2", 1, "a", 1.0, "reward") in finals(learner) and ("e1", 0, "b", 0.0, "default") in finals(learner)
    finally:
        serving.close()
        learner.close()


def test_a_learner_whose_term_ended_cannot_publish_snapshots_or_embeddings(store: str) -> None:
    first, second = open_log(store), open_log(store)
    old = first.take_learner_term()
    assert first.publish_snapshot("{}", 1, b"model-1", term=old) == 1
    new = second.take_learner_term()  # a standby took the lease
    assert new == old + 1
    with pytest.raises(LeaseLost, match=f"learner term {old} has ended"):
        first.publish_snapshot("{}", 2, b"stale", term=old)
    assert second.newest_snapshot() == (1, "{}", b"model-1")  # nothing of the old term's stored
    assert second.publish_snapshot("{}", 2, b"model-2", term=new) == 2
    with pytest.raises(LeaseLost, match=f"learner term {old} has ended"):
        first.publish_embeddings("embeddings-old.npz", b"stale", term=old)  # embeddings are fenced alike
    assert second.newest_embeddings() is None
    assert second.publish_embeddings("embeddings-new.npz", b"artifact", term=new) == 1
    assert first.newest_embeddings() == (1, "embeddings-new.npz", b"artifact")
    first.close()
    second.close()
