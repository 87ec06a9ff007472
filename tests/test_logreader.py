"""The log reader: typed joined events, read while a writer writes, never writing itself.

Every test runs on both backends: a SQLite file and a PostgreSQL schema.
"""

from __future__ import annotations

import time

import pytest

from engine.errors import StartupRefused
from engine.logreader import LOG_SCHEMA_VERSION, LogReader
from engine.records import JoinedEvent, Reward, SlotOutcome
from engine.types import Item
from tests.conftest import execute
from tests.test_eventlog import decision, open_log


def test_joined_events_are_typed_and_round_trip_through_the_export(store: str) -> None:
    log = open_log(store)
    now = time.time()
    log.append_decision(decision("e1", now))
    log.append_reward(Reward("e1", "b", "click", 1.0, now + 1))
    log.append_decision(decision("e2", now + 2))
    with LogReader.open(store) as reader:
        first, second = reader.history()
    log.close()

    assert isinstance(first, JoinedEvent) and (first.event_id, second.event_id) == ("e1", "e2")
    assert first.decision == decision("e1", now)
    assert first.outcomes[0] == SlotOutcome(1.0, "reward", now + 1) and first.outcomes[1] is None
    assert first.reward(0) == 1.0 and first.reward(1) is None and second.outcomes == (None, None)
    assert first.rewards == (Reward("e1", "b", "click", 1.0, now + 1),)
    assert JoinedEvent.from_export(first.to_export()) == first


def test_a_reader_sees_what_the_writer_commits_and_cannot_write(store: str) -> None:
    log = open_log(store)
    log.catalog.upsert_items([Item("sku", {"price": 1.0})])
    with LogReader.open(store) as reader:
        assert reader.log_id() == log.reader.log_id() and reader.items() == log.catalog.items()
        log.append_decision(decision("e1", time.time()))
        assert reader.counts()["decisions"] == 1  # committed by another connection: seen at once
        with pytest.raises(Exception, match="(?i)read.only|readonly"):
            reader.connection().execute("DELETE FROM decisions")
    assert log.reader.counts()["decisions"] == 1
    log.close()


def test_a_log_of_another_schema_version_is_refused_in_one_line(store: str) -> None:
    open_log(store).close()
    execute(store, "UPDATE meta SET value = '9' WHERE key = 'schema_version'")
    with pytest.raises(StartupRefused, match=rf"^the event log's schema version is 9; this recbandit reads {LOG_SCHEMA_VERSION}: upgrade recbandit$"):
        LogReader.open(store)
    execute(store, "UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    with pytest.raises(StartupRefused, match="start recbandit serve or learn on it once, which migrates it"):
        LogReader.open(store)


def test_a_store_without_a_log_is_refused_and_left_as_it_was(store: str) -> None:
    if not store.startswith("postgresql://"):
        execute(store, "CREATE TABLE unrelated (x INTEGER)")  # a SQLite file that is not an event log
    with pytest.raises(StartupRefused, match="holds no recbandit event log"):
        LogReader.open(store)
