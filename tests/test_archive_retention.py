"""--archive-dir: what retention deletes goes to Parquet first, and every reader reads the archive
and the live log as one history, equal to the log had nothing been deleted."""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.archive import Archive
from engine.core import Engine, EngineConfig
from engine.errors import StartupRefused
from engine.eventlog import EventLog
from engine.records import LoggedDecision, Reward, SlotChoice
from engine.report import ReportRequest
from engine.rewards import RewardRules
from engine.types import Candidate, Item
from tests.conftest import exported
from server.cli import main
from training.evaluate import EvaluationConfig, evaluate
from training.replay import PolicyCandidate

DAY = 86_400.0
WINDOW = 60.0


def write_history(path: Path, now: float) -> list[str]:
    """A log of 120 decisions over the last ten days, catalog candidates by version and request
    candidates whole, a third rewarded, every window closed: 100 of them older than a day."""
    log = EventLog(path, RewardRules(window_seconds=WINDOW))
    try:
        items = [Item(f"sku-{i}", {"category": f"cat-{i % 3}", "price": 10.0 + i, "tags": ("sale",) * (i % 2)})
                 for i in range(6)]
        catalog = [Item(i.item_id, i.features, True, v) for i, v in zip(items, log.catalog.upsert_items(items), strict=True)]
        event_ids = []
        for n in range(120):
            ts = now - 10 * DAY + n * (8.8 * DAY / 100) if n < 100 else now - 3600.0 + n
            candidates = (*(Candidate(i.item_id, i.features, i) for i in catalog[n % 3 : n % 3 + 3]),
                          Candidate(f"gift-{n % 4}", {"kind": "card", "value": float(n % 4)}))
            pmf = (0.4, 0.3, 0.2, 0.1) if n % 2 else (0.1, 0.2, 0.3, 0.4)
            chosen = n % 4
            event_id = f"event-{n:03d}"
            log.append_decision(LoggedDecision(
                event_id=event_id, ts=ts, user_id=f"user-{n % 7}", user_features={"segment": f"s{n % 2}", "visits": float(n)},
                context={"channel": "app"}, candidates=candidates,
                slots=(SlotChoice(candidates[chosen].item_id, pmf[chosen], pmf),),
                model_version="vw-test@0", deferred=False, deadline=ts + WINDOW))
            if n % 3 == 0:
                log.append_reward(Reward(event_id, "", "click", 1.0, ts + 1.0))
            event_ids.append(event_id)
        log.close_windows(now)
        return event_ids
    finally:
        log.close()


@pytest.fixture
def pruned(tmp_path: Path) -> Iterator[tuple[Engine, Path, Path]]:
    """An engine with one day of retention and an archive, over a log of ten days; and an unpruned copy of that log."""
    data = tmp_path / "data"
    data.mkdir()
    write_history(data / "events.db", time.time())
    unpruned = tmp_path / "unpruned"
    unpruned.mkdir()
    shutil.copy(data / "events.db", unpruned / "events.db")
    engine = Engine(EngineConfig(data_dir=data, rewards=RewardRules(window_seconds=WINDOW),
                                 retention_seconds=DAY, archive_dir=tmp_path / "archive"))
    try:
        deadline = time.monotonic() + 30
        while engine.log.reader.counts()["decisions"] > 20:  # the learner re-learns the log, then its pass archives
            assert time.monotonic() < deadline, engine.log.reader.counts()
            time.sleep(0.1)
        yield engine, unpruned, tmp_path / "archive"
    finally:
        engine.close()


def test_pruned_events_are_archived_by_day_and_the_history_equals_the_unpruned_log(pruned) -> None:  # type: ignore[no-untyped-def]
    engine, unpruned, archive_dir = pruned
    archive = Archive(archive_dir)
    assert archive.count() == 100 and len(archive.days()) >= 10
    assert engine.log.reader.counts()["decisions"] == 20
    assert engine.log.reader.archive_dir() == archive_dir.resolve()
    whole = EventLog(unpruned / "events.db", RewardRules(window_seconds=WINDOW))
    try:
        expected = exported(whole.reader.joined())
    finally:
        whole.close()
    assert exported(engine.log.reader.history()) == expected
    assert exported(engine.log.reader.history())[:100] == exported(archive.records())


def test_estimates_from_archive_and_log_equal_those_of_the_unpruned_log(pruned, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    engine, unpruned, _ = pruned
    engine.close()
    config = EvaluationConfig(candidates=(PolicyCandidate(),), n_resamples=50, compare_python_replay=False)
    estimates = [
        {p.name: {k: (e.value, e.ci_low, e.ci_high) for k, e in p.overall.items()} for p in evaluate(source, config).policies}
        for source in (engine.log.path, unpruned)
    ]
    assert estimates[0] == estimates[1]
    assert estimates[0]["logging"]["ips"][0] == pytest.approx(40 / 120)  # every third decision was rewarded


def test_export_log_train_embeddings_and_the_learning_report_read_the_archive_too(pruned, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from training.embeddings import EmbeddingConfig, load_training_data

    engine, unpruned, _ = pruned
    report = engine.learning_report(ReportRequest(window_seconds=30 * DAY, max_decisions=1000))
    assert report.overall.decisions == 120
    engine.close()
    interactions = [load_training_data(source, EmbeddingConfig()).interactions for source in (Path(engine.log.path).parent, unpruned)]
    assert len(interactions[0]) == 40 and interactions[0] == interactions[1]
    out = tmp_path / "events.jsonl"
    assert main(["export-log", "--data-dir", str(Path(engine.log.path).parent), "--out", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 120


def test_forgetting_a_user_removes_their_archived_events(pruned) -> None:  # type: ignore[no-untyped-def]
    engine, _, archive_dir = pruned
    forgotten = engine.forget_user("user-3")
    archived = sum(1 for n in range(100) if n % 7 == 3)
    assert forgotten.archived == archived and len(forgotten.log.event_ids) == sum(1 for n in range(100, 120) if n % 7 == 3)
    assert all(e.user_id != "user-3" for e in engine.log.reader.history())
    assert Archive(archive_dir).count() == 100 - archived


def test_an_archive_elsewhere_than_the_logs_or_without_retention_is_refused(pruned, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    engine, _, archive_dir = pruned
    engine.close()
    data = Path(engine.log.path).parent
    with pytest.raises(StartupRefused, match=f"archives to {archive_dir.resolve()}"):
        Engine(EngineConfig(data_dir=data, retention_seconds=DAY, archive_dir=tmp_path / "elsewhere"))
    with pytest.raises(StartupRefused, match="set --retention too"):
        Engine(EngineConfig(data_dir=tmp_path / "fresh", archive_dir=tmp_path / "elsewhere"))


def test_a_missing_archive_is_named_rather_than_read_as_no_history(pruned, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    engine, _, archive_dir = pruned
    engine.close()
    shutil.rmtree(archive_dir)
    log = EventLog(engine.log.path, RewardRules())
    try:
        with pytest.raises(FileNotFoundError, match="the archive of this event log"):
            log.reader.history()
    finally:
        log.close()
    out = tmp_path / "events.jsonl"
    assert main(["export-log", "--data-dir", str(Path(engine.log.path).parent), "--out", str(out)]) == 2


def test_a_few_young_due_events_wait_for_a_fuller_archive_file(tmp_path: Path) -> None:
    """Fewer than ARCHIVE_MIN_EVENTS due, the oldest not yet past twice the retention: nothing is archived yet."""
    data = tmp_path / "data"
    data.mkdir()
    log = EventLog(data / "events.db", RewardRules(window_seconds=1.0))
    try:
        now = time.time()
        for n in range(5):
            ts = now - 90.0 + n
            log.append_decision(LoggedDecision(f"e{n}", ts, "u", {}, {}, (Candidate("a"), Candidate("b")),
                                               (SlotChoice("a", 0.5, (0.5, 0.5)),), "m", False, ts + 1.0))
        log.close_windows(now)
    finally:
        log.close()
    engine = Engine(EngineConfig(data_dir=data, rewards=RewardRules(window_seconds=1.0), retention_seconds=60.0,
                                 archive_dir=tmp_path / "archive"))
    try:
        assert engine.wait_until_learned()
        assert engine._learner.prune() == 0 and engine.log.reader.counts()["decisions"] == 5
        with sqlite3.connect(engine.log.path) as conn:
            assert conn.execute("SELECT value FROM meta WHERE key = 'archive_dir'").fetchone() is None
    finally:
        engine.close()


def test_a_history_read_while_a_pass_archives_and_deletes_misses_nothing(tmp_path: Path) -> None:
    from engine.retention import Retention

    write_history(tmp_path / "events.db", time.time())
    log = EventLog(tmp_path / "events.db", RewardRules(window_seconds=WINDOW))
    try:
        reading = log.reader.history()
        first = next(reading)  # the log's snapshot is taken: the pass below cannot take events from under it
        retention = Retention(log, DAY, Archive(tmp_path / "archive", log.reader.log_id()))
        assert retention.run(learned_seq=1 << 40) == 100 and log.reader.counts()["decisions"] == 20
        seen = [first.event_id, *(e.event_id for e in reading)]
        assert seen == [f"event-{n:03d}" for n in range(120)]
        assert [e.event_id for e in log.reader.history()] == seen  # and after it, from archive and log
    finally:
        log.close()


def test_a_missing_archive_or_another_logs_is_refused_at_start(pruned, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    engine, unpruned, archive_dir = pruned
    engine.close()
    data = Path(engine.log.path).parent
    shutil.move(archive_dir, tmp_path / "moved")
    with pytest.raises(StartupRefused, match="which is missing: put the archive back"):
        Engine(EngineConfig(data_dir=data, retention_seconds=DAY))
    shutil.move(tmp_path / "moved", archive_dir)
    stranger = EventLog(tmp_path / "stranger.db", RewardRules())
    try:
        with pytest.raises(ValueError, match="belongs to event log"):
            list(Archive(archive_dir, stranger.reader.log_id()).records())
    finally:
        stranger.close()


def test_an_archive_that_cannot_be_written_stops_neither_learning_nor_checkpoints(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    write_history(data / "events.db", time.time())
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the archive should go\n")
    engine = Engine(EngineConfig(data_dir=data, rewards=RewardRules(window_seconds=WINDOW), retention_seconds=DAY,
                                 archive_dir=blocked, checkpoint_interval=0.3))
    try:
        assert engine.wait_until_learned()
        engine._learner._prune_apart()  # fails, logged; raises nothing
        deadline = time.monotonic() + 10
        while engine.model_info().last_checkpoint_ts is None:  # the background loop goes on to checkpoint
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert engine.log.reader.counts()["decisions"] == 120  # nothing deleted that was not archived
    finally:
        engine.close()


def test_forget_user_with_a_damaged_archive_file_deletes_nothing_so_a_retry_can(pruned) -> None:  # type: ignore[no-untyped-def]
    engine, _, archive_dir = pruned
    victim = next(archive_dir.glob("day=*/events-*.parquet"))
    victim.write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="archive file"):
        engine.forget_user("user-3")
    assert any(e.user_id == "user-3" for e in engine.log.reader.joined())


def test_a_serving_process_forgets_a_user_and_the_learner_forgets_them_in_its_archive(pruned) -> None:  # type: ignore[no-untyped-def]
    engine, _, archive_dir = pruned
    engine.close()
    data = Path(engine.log.path).parent
    rules = RewardRules(window_seconds=WINDOW)
    learner = Engine(EngineConfig(data_dir=data, rewards=rules, role="learn", retention_seconds=DAY, archive_dir=archive_dir))
    serving = Engine(EngineConfig(data_dir=data, rewards=rules, role="serve"))  # no archive of its own
    try:
        forgotten = serving.forget_user("user-3")
        assert forgotten.archived == 0 and forgotten.log.event_ids  # the live events at once
        assert any(r["user_id"] == "user-3" for r in Archive(archive_dir).records())
        learner._learner.prune()  # the learner's next pass (every 5 s)
        assert all(r["user_id"] != "user-3" for r in Archive(archive_dir).records())
        assert learner.log.archive_forgets() == []
    finally:
        serving.close()
        learner.close()
