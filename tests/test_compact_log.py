"""A decision's record names its catalog candidates by catalog version and still reads back whole.

``tests/fixtures/eventlog`` holds a log written by recbandit before catalog versions (log schema 2,
records of format 1: every candidate's features copied) and that log's export at the time.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.core import Engine, EngineConfig
from engine.eventlog import EventLog
from engine.features import frozen_features
from engine.logreader import LOG_SCHEMA_VERSION
from engine.records import candidate_to_json
from engine.rewards import RewardRules
from engine.types import Candidate, DecisionRequest, Item, RewardReport
from tests.conftest import exported

FIXTURES = Path(__file__).parent / "fixtures" / "eventlog"


def raw_record(data_dir: Path, event_id: str) -> str:
    return str(raw_columns(data_dir, event_id)[0])


def raw_columns(data_dir: Path, event_id: str) -> tuple[str, bytes]:
    with sqlite3.connect(data_dir / "events.db") as conn:
        return conn.execute("SELECT record, pmf FROM decisions WHERE event_id = ?", (event_id,)).fetchone()


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    running = Engine(EngineConfig(data_dir=tmp_path / "data", seed=3))
    try:
        yield running
    finally:
        running.close()


CATALOG = [
    Item(f"sku-{i}", {"category": f"cat-{i % 4}", "brand": f"brand-{i % 7}", "price": 10.0 + i,
                      "tags": ("sale",) if i % 2 else (), "in_stock": i % 3 != 0, "weight": 1.0})
    for i in range(20)
]


def test_catalog_candidates_are_logged_by_version_and_read_back_whole(engine: Engine, tmp_path: Path) -> None:
    engine.upsert_items(CATALOG)
    decision = engine.decide(DecisionRequest(
        user_id="u1", user_features={"segment": "sporty"}, candidates=tuple(Candidate(i.item_id) for i in CATALOG),
        event_id="ids-only"))
    record = json.loads(raw_record(tmp_path / "data", "ids-only"))
    assert all(isinstance(entry, int) for entry in record["candidates"])
    assert len(raw_record(tmp_path / "data", "ids-only")) < 300  # 20 catalog candidates: their pmf is apart
    pmf = raw_columns(tmp_path / "data", "ids-only")[1]
    assert pmf[:1] == b"f" and len(pmf) == 1 + 4 * 20  # VW's single-precision scores, which give the pmf back
    logged = engine.log.get_decision("ids-only")
    assert logged == decision
    assert logged.slots[0].pmf == decision.slots[0].pmf and sum(decision.slots[0].pmf) == pytest.approx(1.0)
    assert [dict(c.features) for c in logged.candidates] == [dict(i.features) for i in CATALOG]
    assert [list(c.features) for c in logged.candidates] == [list(i.features) for i in CATALOG]  # their order too


def test_what_the_request_changes_or_adds_is_stored_with_the_reference_and_the_rest_whole(engine: Engine, tmp_path: Path) -> None:
    engine.upsert_items(CATALOG[:3])
    candidates = (
        Candidate("sku-0", {"weight": True, "badge": "hot"}),  # True is not 1.0 to VW: it must stay True
        Candidate("sku-1"),
        Candidate("gift-card", {"kind": "card", "value": 25.0}),  # not in the catalog
    )
    decision = engine.decide(DecisionRequest(user_id="u1", candidates=candidates, num_results=2, event_id="mixed"))
    entries = json.loads(raw_record(tmp_path / "data", "mixed"))["candidates"]
    assert entries[0][1] == {"weight": True, "badge": "hot"} and isinstance(entries[0][0], int)
    assert isinstance(entries[1], int)
    assert entries[2] == ["gift-card", {"kind": "card", "value": 25.0}]
    logged = engine.log.get_decision("mixed")
    assert logged == decision
    weight = logged.candidates[0].features["weight"]
    assert weight is True
    assert list(logged.candidates[0].features) == [*CATALOG[0].features, "badge"]


def test_a_decision_keeps_the_features_it_was_made_with_when_the_catalog_changes(engine: Engine) -> None:
    engine.upsert_items(CATALOG[:2])
    engine.decide(DecisionRequest(user_id="u1", candidates=(Candidate("sku-0"), Candidate("sku-1")), event_id="before"))
    engine.upsert_items([Item("sku-0", {"category": "renamed", "price": 1.0})])
    engine.decide(DecisionRequest(user_id="u1", candidates=(Candidate("sku-0"), Candidate("sku-1")), event_id="after"))
    engine.upsert_items([CATALOG[0]])  # back to the first features: their version, not a new one
    decided = engine.log.decisions(["before", "after"])
    assert dict(decided["before"].candidates[0].features) == dict(CATALOG[0].features)
    assert dict(decided["after"].candidates[0].features) == {"category": "renamed", "price": 1.0}
    with sqlite3.connect(engine.log.path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM item_versions WHERE item_id = 'sku-0'").fetchone() == (2,)
        (version,) = conn.execute("SELECT version FROM items WHERE item_id = 'sku-0'").fetchone()
    first = json.loads(raw_record(Path(engine.log.path).parent, "before"))["candidates"][0]
    assert version == first


def test_the_export_holds_every_feature_as_before(engine: Engine) -> None:
    engine.upsert_items(CATALOG[:4])
    engine.decide(DecisionRequest(user_id="u1", candidates=tuple(Candidate(i.item_id) for i in CATALOG[:4]), event_id="e"))
    engine.record_reward(RewardReport("e", 1.0, label="click"))
    (record,) = exported(engine.log.reader.joined())
    assert record["candidates"] == exported([{"item_id": i.item_id, "features": dict(i.features)} for i in CATALOG[:4]])
    assert record["schema_version"] == 2 and record["slots"][0]["reward"] == 1.0


def test_a_log_written_before_catalog_versions_migrates_and_reads_exactly_as_it_exported(tmp_path: Path) -> None:
    shutil.copy(FIXTURES / "events-schema2.db", tmp_path / "events.db")
    then = [{**json.loads(line), "arm": "recbandit", "portrait": {}}  # the export now names the arm and the portrait
            for line in (FIXTURES / "events-schema2.jsonl").read_text().splitlines()]
    for record in then:  # and each slot's apprentice choices (none here)
        record["slots"] = [{**slot, "baseline_item_id": None, "model_item_id": None} for slot in record["slots"]]
    log = EventLog(tmp_path / "events.db", RewardRules())
    try:
        now = exported(log.reader.joined())
        assert sorted(now, key=lambda r: r["event_id"]) == sorted(then, key=lambda r: r["event_id"])
        assert [r["event_id"] for r in now] == [r["event_id"] for r in sorted(then, key=lambda r: (r["ts"], r["event_id"]))]
        assert {r["schema_version"] for r in now} == {1}
        items = log.catalog.items()
        assert len(items) == 5 and all(item.version > 0 for item in items)
        assert len({item.version for item in items}) == 5
        (schema,) = log._reader().execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        assert schema == str(LOG_SCHEMA_VERSION)
    finally:
        log.close()


def test_a_served_log_of_the_old_format_goes_on_deciding_with_references(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    shutil.copy(FIXTURES / "events-schema2.db", tmp_path / "data" / "events.db")
    engine = Engine(EngineConfig(data_dir=tmp_path / "data"))
    try:
        assert engine.model_info().examples_learned > 0  # the old log's outcomes were learned
        decision = engine.decide(DecisionRequest(user_id="u9", candidates=(Candidate("sku-1"), Candidate("sku-2")), event_id="new"))
        assert all(isinstance(entry, int) for entry in json.loads(raw_record(tmp_path / "data", "new"))["candidates"])
        assert engine.log.get_decision("new") == decision
        assert engine.log.get_decision("event-00").schema_version == 1
    finally:
        engine.close()


def test_a_pmf_its_scores_do_not_give_back_bit_for_bit_is_logged_as_doubles() -> None:
    from engine.exploration import normalised
    from engine.records import LoggedDecision, SlotChoice, decision_from_json, decision_pmfs, decision_to_json

    scores = (0.25, 0.5, 0.25)
    candidates = (Candidate("a"), Candidate("b"), Candidate("c"))

    def logged(slot: SlotChoice) -> LoggedDecision:
        return LoggedDecision("e", 1.0, "u", {}, {}, candidates, (slot,), "m", False, 2.0)

    from_scores = logged(SlotChoice("b", 0.5, tuple(normalised(scores)), scores))
    given = logged(SlotChoice("b", 0.5, (0.2, 0.5, 0.3), scores))  # e.g. an imported log's propensities
    assert decision_pmfs(from_scores)[:1] == b"f" and decision_pmfs(given)[:1] == b"d"
    for decision in (from_scores, given):
        back = decision_from_json(decision_to_json(decision), event_id="e", ts=1.0, user_id="u", model_version="m",
                                  deferred=False, deadline=2.0, pmfs=decision_pmfs(decision))
        assert back == decision and back.slots[0].probability == 0.5


def test_candidate_records_fall_back_to_whole_features_when_a_reference_cannot_rebuild_them() -> None:
    item = Item("sku-1", frozen_features({"a": "x", "b": 1.0}), True, 7)
    assert candidate_to_json(Candidate("sku-1", item.features, item)) == "7"
    assert candidate_to_json(Candidate("sku-1", {**item.features, "c": "y"}, item)) == '[7,{"c":"y"}]'
    assert candidate_to_json(Candidate("sku-1", {"a": "x"}, item)) == '["sku-1",{"a":"x"}]'  # "b" is gone
    unstored = Item("sku-1", item.features, True, 0)
    assert candidate_to_json(Candidate("sku-1", item.features, unstored)) == '["sku-1",{"a":"x","b":1.0}]'
