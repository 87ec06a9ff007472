"""--retention: events older than it, final and learned, are deleted in small batches by the
learner's background pass, and the event log's file gives their pages back."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from engine.errors import ConfigurationError
from server._proto.recbandit.v1 import recbandit_pb2 as pb
from server.bench import free_port
from server.settings import Settings
from tests.test_api import recommend_request
from tests.test_eventlog import decision
from tests.test_metrics import scrape


def pages(database: Path) -> tuple[int, int]:
    """The log file's pages in use and free, after its WAL is folded in."""
    with sqlite3.connect(database) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return conn.execute("PRAGMA page_count").fetchone()[0], conn.execute("PRAGMA freelist_count").fetchone()[0]


def test_old_final_learned_events_are_deleted_and_their_pages_given_back(start_server) -> None:  # type: ignore[no-untyped-def]
    metrics_port = free_port()
    running, client = start_server(retention="2s", reward_window="1s", metrics_port=metrics_port)
    request = recommend_request()
    for k in range(4):  # about a page per decision
        request.user_features[f"note{k}"].string_value = "x" * 1000
    old = []
    for i in range(60):
        request.event_id = f"old-{i}"
        old.append(client.recommender.Recommend(request).event_id)
        if i % 2 == 0:
            client.recommender.Feedback(pb.FeedbackRequest(event_id=old[-1], reward=1.0))
    assert running.engine.wait_until_learned()
    database = running.engine.log.path
    used_before, _ = pages(Path(database))
    deadline = time.monotonic() + 20
    while running.engine.log.reader.counts()["decisions"] > 0:  # windows close (1 s), then 2 s of retention
        assert time.monotonic() < deadline, running.engine.log.reader.counts()
        time.sleep(0.2)
    request.event_id = "new"
    client.recommender.Recommend(request)  # recent and its window open: kept
    counts = running.engine.log.reader.counts()
    assert (counts["decisions"], counts["rewards"], counts["outcomes"]) == (1, 0, 0)
    used_after, free_after = pages(Path(database))
    assert free_after == 0 and used_after < used_before / 2, (used_before, used_after)
    assert scrape(metrics_port)[("recbandit_events_pruned_total", ())] == 60
    assert [e.event_id for e in running.engine.log.reader.joined()] == ["new"]
    assert running.engine.model_info().examples_learned == 60  # the model keeps what it learned


def test_an_event_not_yet_learned_is_kept_however_old(start_server) -> None:  # type: ignore[no-untyped-def]
    running, client = start_server(retention="1s", reward_window="1h")
    event_id = client.recommender.Recommend(recommend_request()).event_id  # its window stays open
    time.sleep(1.5)
    assert running.engine.log.prunable(time.time() - 1.0, running.engine.model_info().examples_learned, 10) == []
    assert running.engine.log.get_decision(event_id) is not None


@pytest.mark.parametrize("text, says", [("soon", "not a duration"), ("0s", "must be above 0")])
def test_a_bad_retention_is_refused_naming_it(text: str, says: str) -> None:
    with pytest.raises(ConfigurationError, match=rf"^retention: .*{says}"):
        Settings(retention=text).engine_config()


def test_a_log_made_before_retention_reuses_its_pages_without_a_vacuum_per_page(tmp_path: Path) -> None:
    """A log without incremental vacuum cannot give pages back: pruning must not try, page by page."""
    from engine.eventlog import EventLog
    from engine.rewards import RewardRules

    path = tmp_path / "events.db"
    with sqlite3.connect(path) as conn:  # as an older recbandit made it: auto_vacuum off
        conn.execute("CREATE TABLE placeholder (x)")
    log = EventLog(path, RewardRules())
    try:
        log.append_decision(decision("e1", time.time() - 10))
        assert not log.database.vacuums and log.delete_events(["e1", "unknown"]) == 1 and log.reader.counts()["decisions"] == 0
    finally:
        log.close()
    fresh = EventLog(tmp_path / "fresh.db", RewardRules())
    try:
        assert fresh.database.vacuums
    finally:
        fresh.close()
