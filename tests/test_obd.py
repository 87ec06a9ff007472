"""The Open Bandit Dataset importer on a small fixture with the dataset's real layout and columns."""

from __future__ import annotations

import csv
import json
import math
import shutil
import tarfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from engine.eventlog import EventLog
from engine.export import export_jsonl
from engine.rewards import RewardRules
from server.cli import main
from training.obd import OBDFormatError, SDIST_ROOT, import_obd, run_import, wilson_interval
from tests.conftest import exported

FIXTURE = Path(__file__).parent / "fixtures" / "obd"
FILES = {("random", "all"): 6, ("bts", "all"): 6, ("bts", "men"): 4}  # (policy, campaign) -> items


def rows(policy: str, campaign: str, root: Path = FIXTURE) -> list[dict[str, str]]:
    with open(root / policy / campaign / f"{campaign}.csv", newline="") as stream:
        return list(csv.DictReader(stream))


def expected() -> dict[str, tuple[str, str, dict[str, str]]]:
    """event id -> (policy, campaign, CSV row), read straight from the fixture."""
    return {f"obd-{p}-{c}-{row['']}": (p, c, row) for p, c in FILES for row in rows(p, c)}


@pytest.fixture
def log(tmp_path: Path) -> Iterator[EventLog]:
    event_log = EventLog(tmp_path / "events.db", RewardRules())
    yield event_log
    event_log.close()


def import_fixture(log: EventLog, source: Path = FIXTURE):  # type: ignore[no-untyped-def]
    return import_obd(log, source, policies=["random", "bts"], campaigns=["all"]) + import_obd(
        log, source, policies=["bts"], campaigns=["men"]
    )


def test_every_impression_becomes_one_event_with_its_propensity_click_and_position(log: EventLog) -> None:
    import_fixture(log)
    want = expected()
    records = {r["event_id"]: r for r in exported(log.reader.joined())}
    assert len(want) == 72 and set(records) == set(want)
    assert log.reader.counts() == {"decisions": 72, "rewards": 72, "outcomes": 72, "items": 0}
    for event_id, (policy, campaign, row) in want.items():
        record = records[event_id]
        assert record["model_version"] == f"obd-{policy}"
        assert record["ts"] == datetime.fromisoformat(row["timestamp"]).timestamp()
        assert record["context"]["position"] == row["position"]
        assert record["context"]["campaign"] == campaign
        assert record["user_features"] == {f"user_feature_{k}": row[f"user_feature_{k}"] for k in range(4)}
        candidates = record["candidates"]
        assert [c["item_id"] for c in candidates] == [f"{campaign}-{i}" for i in range(FILES[policy, campaign])]
        (slot,) = record["slots"]
        assert slot["item_id"] == f"{campaign}-{row['item_id']}"
        assert slot["probability"] == float(row["propensity_score"])
        assert slot["pmf"][int(row["item_id"])] == slot["probability"]
        assert math.isclose(sum(slot["pmf"]), 1.0)
        assert slot["reward"] == float(row["click"]) and slot["reward_source"] == "reward"
        assert record["rewards"] == [
            {"item_id": slot["item_id"], "label": "click", "value": float(row["click"]), "ts": record["ts"]}
        ]


def test_candidates_carry_the_item_context_and_the_rows_affinity(log: EventLog) -> None:
    import_fixture(log)
    with open(FIXTURE / "bts" / "men" / "item_context.csv", newline="") as stream:
        items = {row["item_id"]: row for row in csv.DictReader(stream)}
    row = rows("bts", "men")[3]
    record = next(r for r in exported(log.reader.joined()) if r["event_id"] == "obd-bts-men-3")
    for candidate in record["candidates"]:
        item = candidate["item_id"].removeprefix("men-")
        features = dict(candidate["features"])
        affinity = float(row[f"user-item_affinity_{item}"])
        assert features.pop("user_item_affinity", 0.0) == affinity
        assert features == {
            "item_feature_0": float(items[item]["item_feature_0"]),
            **{f"item_feature_{k}": items[item][f"item_feature_{k}"] for k in (1, 2, 3)},
        }
    assert any(float(row[f"user-item_affinity_{i}"]) for i in range(4))  # the row exercises the feature


def test_summary_gives_each_policys_click_rate_with_a_wilson_interval(log: EventLog) -> None:
    summaries = import_fixture(log)
    assert [(s.policy, s.campaign, s.events, s.new_events, s.items) for s in summaries] == [
        ("random", "all", 30, 30, 6),
        ("bts", "all", 30, 30, 6),
        ("bts", "men", 12, 12, 4),
    ]
    for s in summaries:
        clicks = sum(int(r["click"]) for r in rows(s.policy, s.campaign))
        assert s.clicks == clicks and s.click_rate == clicks / s.events
        assert (s.ci_low, s.ci_high) == wilson_interval(clicks, s.events)
        assert s.ci_low < s.click_rate < s.ci_high
    assert sum(s.clicks for s in summaries) > 0


def test_wilson_interval_matches_the_textbook_values() -> None:
    low, high = wilson_interval(5, 100)
    assert (round(low, 4), round(high, 4)) == (0.0215, 0.1118)
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and round(high, 4) == 0.2775
    with pytest.raises(ValueError, match="trials"):
        wilson_interval(0, 0)


def test_importing_again_adds_nothing(log: EventLog) -> None:
    import_fixture(log)
    before = (log.reader.counts(), log.last_outcome_seq())
    again = import_fixture(log)
    assert [s.new_events for s in again] == [0, 0, 0] and [s.events for s in again] == [30, 30, 12]
    assert (log.reader.counts(), log.last_outcome_seq()) == before


def test_the_export_holds_the_imported_rows(log: EventLog, tmp_path: Path) -> None:
    import_fixture(log)
    out = tmp_path / "events.jsonl"
    assert export_jsonl(log.reader, out) == 72
    exported = [json.loads(line) for line in out.read_text().splitlines()]
    want = expected()
    assert sorted(r["event_id"] for r in exported) == sorted(want)
    for record in exported:
        _, campaign, row = want[record["event_id"]]
        slot = record["slots"][0]
        assert (slot["item_id"], slot["probability"], slot["reward"]) == (
            f"{campaign}-{row['item_id']}",
            float(row["propensity_score"]),
            float(row["click"]),
        )


def test_reads_the_sdist_and_an_extracted_copy_alike(tmp_path: Path) -> None:
    sdist = tmp_path / "obp-0.5.7.tar.gz"
    with tarfile.open(sdist, "w:gz") as archive:
        archive.add(FIXTURE / "random", arcname=f"{SDIST_ROOT}/random")
        archive.add(FIXTURE / "bts", arcname=f"{SDIST_ROOT}/bts")
    extracted = tmp_path / "unpacked"
    with tarfile.open(sdist) as archive:
        archive.extractall(extracted, filter="data")
    results = []
    for name, source in (("tar", sdist), ("folder", extracted)):
        event_log = EventLog(tmp_path / f"{name}.db", RewardRules())
        try:
            summaries = import_fixture(event_log, source)
            results.append(([(s.events, s.clicks) for s in summaries], exported(event_log.reader.joined())))
        finally:
            event_log.close()
    assert results[0] == results[1]
    assert [n for n, _ in results[0][0]] == [30, 30, 12]


def test_the_command_imports_and_prints_the_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["import-obd", "--data-dir", str(tmp_path / "data"), "--source", str(FIXTURE), "--campaigns", "all"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    clicks = sum(int(r["click"]) for r in rows("random", "all"))
    assert f"random   all           30      30 {clicks:>6}     6  {clicks / 30:.4f}" in printed
    event_log = EventLog(tmp_path / "data" / "events.db", RewardRules())
    try:
        assert event_log.reader.counts()["decisions"] == 60
    finally:
        event_log.close()


def test_the_command_reports_a_missing_campaign_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["import-obd", "--data-dir", str(tmp_path), "--source", str(FIXTURE), "--campaigns", "women"]
    assert main(argv) == 2
    assert "random/women/item_context.csv" in capsys.readouterr().err


def broken_copy(tmp_path: Path, edit) -> Path:  # type: ignore[no-untyped-def]
    """A copy of the fixture whose random/all/all.csv rows went through ``edit``."""
    root = tmp_path / "broken"
    shutil.copytree(FIXTURE, root)
    table = rows("random", "all")
    columns = list(table[0])
    columns, table = edit(columns, table)
    with open(root / "random" / "all" / "all.csv", "w", newline="") as stream:
        writer = csv.DictWriter(stream, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(table)
    return root


def set_cell(line: int, column: str, value: str):  # type: ignore[no-untyped-def]
    def edit(columns, table):  # type: ignore[no-untyped-def]
        table[line - 2][column] = value
        return columns, table

    return edit


def drop_column(column: str):  # type: ignore[no-untyped-def]
    return lambda columns, table: ([c for c in columns if c != column], table)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (drop_column("propensity_score"), r"random/all/all.csv: missing column 'propensity_score'"),
        (drop_column("click"), r"random/all/all.csv: missing column 'click'"),
        (set_cell(5, "propensity_score", "0"), r"line 5: column 'propensity_score' must be in \(0, 1\], got 0.0"),
        (set_cell(9, "propensity_score", "1.5"), r"line 9: column 'propensity_score' must be in \(0, 1\], got 1.5"),
        (set_cell(3, "propensity_score", "n/a"), r"line 3: column 'propensity_score' must be a number, got 'n/a'"),
        (set_cell(4, "click", "2"), r"line 4: column 'click' must be 0 or 1, got '2'"),
        (set_cell(6, "position", "4"), r"line 6: column 'position' must be 1, 2 or 3, got '4'"),
        (set_cell(7, "item_id", "99"), r"line 7: column 'item_id' is '99', not in item_context.csv"),
        (set_cell(8, "timestamp", "yesterday"), r"line 8: column 'timestamp' is not a date and time"),
    ],
)
def test_bad_rows_are_refused_naming_the_line_and_column(tmp_path: Path, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    source = broken_copy(tmp_path, edit)
    with pytest.raises(OBDFormatError, match=message):
        run_import(tmp_path / "data", source=source, policies=["random"], campaigns=["all"])


def test_unknown_policy_campaign_or_source_is_refused(log: EventLog, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="policies: must be some of random, bts, got epsilon"):
        import_obd(log, FIXTURE, policies=["epsilon"])
    with pytest.raises(ValueError, match="campaigns: must be some of all, men, women, got kids"):
        import_obd(log, FIXTURE, campaigns=["kids"])
    with pytest.raises(FileNotFoundError, match="no Open Bandit Dataset folder"):
        import_obd(log, tmp_path, policies=["random"], campaigns=["all"])
