"""Group commit under concurrency: batched inserts, a retried event id and a failing write in one
transaction, asyncio callers, and the encoded-candidate cache staying faithful to the features."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import MappingProxyType

import pytest

from engine.bandit import action_line
from engine.errors import UnknownEvent
from engine.eventlog import EventLog
from engine.features import EncodedCandidates, frozen_features, with_time_context
from engine.records import LoggedDecision, Reward, SlotChoice, candidate_to_json, decision_from_json, decision_pmfs, decision_to_json
from engine.rewards import RewardRules
from engine.types import Candidate, Status


def decision(event_id: str, user_id: str = "u1") -> LoggedDecision:
    return LoggedDecision(
        event_id=event_id,
        ts=1000.0,
        user_id=user_id,
        user_features={"segment": "sporty"},
        context={"channel": "app"},
        candidates=(Candidate("a", {"price": 9.5}), Candidate("b", {"new": True})),
        slots=(SlotChoice("b", 0.75, (0.25, 0.75)),),
        model_version="vw-test@0",
        deferred=False,
        deadline=1e12,
    )


def held_writer(log: EventLog) -> tuple[threading.Event, threading.Thread]:
    """Occupy the writer with one operation until the returned event is set, so that everything
    submitted meanwhile is committed together in the next batch."""
    entered, release = threading.Event(), threading.Event()

    def hold(conn: sqlite3.Connection) -> None:
        entered.set()
        release.wait(10)

    thread = threading.Thread(target=log._writer.submit, args=(hold,))
    thread.start()
    assert entered.wait(10)
    return release, thread


def run_in_one_batch(log: EventLog, calls: dict[str, tuple[object, ...]]) -> dict[str, object]:
    """Submit every ``name: (function, *args)`` from its own thread while the writer is held, so
    that they share one transaction; return each result or raised exception by name."""
    release, holder = held_writer(log)
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = {name: pool.submit(call[0], *call[1:]) for name, call in calls.items()}  # type: ignore[operator]
        while len(log._writer._queue) < len(calls):
            threading.Event().wait(0.01)
        release.set()
        holder.join()
        return {name: future.exception() or future.result() for name, future in futures.items()}


def test_a_batch_of_decisions_with_a_retried_and_a_taken_event_id(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events.db", RewardRules())
    log.append_decision(decision("old"))
    first, retry, other_user = decision("e1"), decision("e1"), decision("old", user_id="u2")
    fresh = [decision(f"n{i}") for i in range(30)]
    logged = run_in_one_batch(log, {
        "first": (log.append_decision, first),
        "retry": (log.append_decision, retry),
        "taken": (log.append_decision, other_user),
        **{d.event_id: (log.append_decision, d) for d in fresh},
    })
    assert (logged["first"] is first) != (logged["retry"] is retry)  # exactly one of them inserted
    assert logged["first"] == first and logged["retry"] == retry
    assert logged["taken"] is not other_user and logged["taken"].user_id == "u1"  # type: ignore[attr-defined]
    assert all(logged[d.event_id] is d for d in fresh)
    assert log.reader.counts()["decisions"] == 2 + len(fresh)
    log.close()


def test_a_failing_write_fails_alone_and_the_rest_of_its_batch_commits(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events.db", RewardRules())
    log.append_decision(decision("shown"))
    fresh = [decision(f"n{i}") for i in range(10)]
    results = run_in_one_batch(log, {
        "bad": (log.append_reward, Reward("missing", "", "click", 1.0, 1001.0)),
        "good": (log.append_reward, Reward("shown", "", "click", 1.0, 1001.0)),
        **{d.event_id: (log.append_decision, d) for d in fresh},
    })
    assert isinstance(results["bad"], UnknownEvent) and results["good"] is Status.NEW
    assert all(results[d.event_id] is d for d in fresh)
    assert log.reader.counts() == {"decisions": 11, "rewards": 1, "outcomes": 1, "items": 0}
    log.close()


def test_asyncio_callers_get_their_results_and_errors_from_the_writer(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events.db", RewardRules())

    async def traffic() -> list[object]:
        decisions = [decision(f"e{i}") for i in range(20)]
        logged = await asyncio.gather(*(log.append_decision_async(d) for d in decisions))
        assert all(a is b for a, b in zip(logged, decisions, strict=True))
        rewards = [Reward(f"e{i}", "", "click", 1.0, 1001.0) for i in range(20)] + [
            Reward("e3", "", "click", 5.0, 1002.0),  # same event, item and label: a duplicate
            Reward("nope", "", "click", 1.0, 1001.0),
        ]
        return await asyncio.gather(*(log.append_reward_async(r) for r in rewards), return_exceptions=True)

    statuses = asyncio.run(traffic())
    assert statuses[:20] == [Status.NEW] * 20
    assert statuses[20] is Status.DUPLICATE and isinstance(statuses[21], UnknownEvent)
    assert [o.reward for o in log.final_outcomes_after(0)] == [1.0] * 20
    log.close()


def test_records_built_from_cached_candidate_json_read_back_equal(tmp_path: Path) -> None:
    d = decision("e1")
    record = decision_to_json(d, [candidate_to_json(c) for c in d.candidates])
    assert record == decision_to_json(d)
    back = decision_from_json(record, event_id="e1", ts=d.ts, user_id="u1", model_version=d.model_version,
                              deferred=False, deadline=d.deadline, pmfs=decision_pmfs(d))
    assert back == d


def test_encoded_candidates_are_remembered_only_for_read_only_features() -> None:
    cache = EncodedCandidates(max_entries=4)
    frozen = Candidate("a", frozen_features({"price": 1.0, "flag": True}))
    assert isinstance(frozen.features, MappingProxyType)
    assert not cache.known(frozen)
    line, record = cache.encode(frozen)
    assert line == action_line("a", {"price": 1.0, "flag": True}) and cache.known(frozen)
    assert record == candidate_to_json(frozen)
    # a plain dict may change between calls: never remembered, always encoded afresh
    mutable = {"price": 1.0}
    plain = Candidate("b", mutable)
    assert cache.encode(plain)[0].endswith("price:1.0") and not cache.known(plain)
    mutable["price"] = 2.0
    assert cache.encode(plain)[0].endswith("price:2.0")
    # same values of another type encode differently (True == 1.0 in Python)
    assert cache.encode(Candidate("c", frozen_features({"x": True})))[0].endswith("x=true")
    assert cache.encode(Candidate("c", frozen_features({"x": 1.0})))[0].endswith("x:1.0")
    for i in range(10):  # over capacity: forgets, still correct
        assert cache.encode(Candidate(f"i{i}", frozen_features({"n": float(i)})))[0] == f"|Key id=i{i} |Item n:{float(i)!r}"


def test_a_batch_of_rewards_gets_what_each_would_get_alone(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events.db", RewardRules())
    for event_id in ("e1", "e2", "e3"):
        log.append_decision(decision(event_id))
    log.append_reward(Reward("e3", "", "click", 1.0, 1001.0))
    results = run_in_one_batch(log, {
        "e1 click": (log.append_reward, Reward("e1", "", "click", 2.0, 1001.0)),
        "e1 click again": (log.append_reward, Reward("e1", "b", "click", 9.0, 1001.5)),
        "e1 purchase": (log.append_reward, Reward("e1", "b", "purchase", 7.0, 1002.0)),
        "e2 wrong item": (log.append_reward, Reward("e2", "a", "click", 1.0, 1001.0)),
        "e2 late": (log.append_reward, Reward("e2", "", "click", 1.0, 2e12)),
        "e3 again": (log.append_reward, Reward("e3", "b", "click", 3.0, 1001.0)),
        "unknown": (log.append_reward, Reward("nope", "", "click", 1.0, 1001.0)),
    })
    assert results["e1 purchase"] is Status.NEW and results["e3 again"] is Status.DUPLICATE
    assert {results["e1 click"], results["e1 click again"]} == {Status.NEW, Status.DUPLICATE}
    assert isinstance(results["unknown"], UnknownEvent)
    assert "'a' was not recommended" in str(results["e2 wrong item"])
    assert "window" in str(results["e2 late"])
    assert log.reader.counts()["rewards"] == 3  # e3's first, one e1 click, e1's purchase
    finals = {(o.event_id, o.slot): o.reward for o in log.final_outcomes_after(0)}
    assert finals[("e3", 0)] == 1.0 and finals[("e1", 0)] in (2.0, 9.0, 7.0) and len(finals) == 2
    # whichever e1 reward the batch took first is the one that made the slot final
    first_e1 = log._reader().execute("SELECT value FROM rewards WHERE event_id = 'e1' ORDER BY rowid").fetchone()[0]
    assert finals[("e1", 0)] == first_e1
    log.close()


@pytest.mark.parametrize(("context", "added"), [
    ({}, {"hour": "0", "weekday": "thu", "daypart": "night", "weekend": False}),  # ts 0: Thursday 1970-01-01, 00 h UTC
    ({"hour": "19", "weekday": "sat"}, {"daypart": "evening", "weekend": True}),  # the caller's local clock wins
    ({"hour": 7.0, "weekday": "mon"}, {"daypart": "morning", "weekend": False}),  # gRPC numbers are doubles
    ({"hour": "12", "weekday": "sun", "daypart": "lunch"}, {"weekend": True}),  # the caller's own daypart stays
    ({"hour": "24", "weekday": "holiday"}, {}),  # no hour of the day, no weekday: no coarse form
    ({"hour": ["7"], "weekday": 3.0}, {}),
])
def test_the_clock_in_the_context_gets_its_coarse_forms(context: dict, added: dict) -> None:  # type: ignore[type-arg]
    assert with_time_context(context, 0.0) == {**context, **added}
