"""The Parquet event archive: exact round trips, day partitions, each event once, forgetting a user."""

from __future__ import annotations

import json
import math
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import engine.archive
from engine.archive import ARCHIVE_SCHEMA_VERSION, Archive, ArchiveUnreadable
from engine.logreader import one_history
from engine.records import JoinedEvent

MIDNIGHT = 1_750_032_000.0  # 2025-06-16T00:00:00Z
DAY = 86_400.0
JUST_BEFORE = math.nextafter  # the float just below a midnight is the day before


def joined(export: dict[str, object]) -> JoinedEvent:
    return JoinedEvent.from_export(export)


def record(event_id: str, ts: float, user_id: str = "u-1", **changes: object) -> dict[str, object]:
    """A joined record as the event log builds it: tuples for tags, bools, floats that are not short."""
    pmf = [0.1 + 0.2, 1 / 3, 1 - (0.1 + 0.2) - 1 / 3]
    built: dict[str, object] = {
        "event_id": event_id,
        "ts": ts,
        "user_id": user_id,
        "user_features": {"segment": "gold", "visits": 1.0, "logged_in": True, "tags": ("new", "eco")},
        "context": {"device": "mobile", "hour": 13.0, "returning": False, "count": 3},
        "candidates": [{"item_id": f"sku-{i}", "features": {"price": 9.99 + i, "on_sale": i == 1,
                                                           "tags": ("a", "b")}} for i in range(3)],
        "slots": [{"slot": 0, "item_id": "sku-1", "probability": pmf[1], "pmf": pmf,
                   "reward": None, "reward_source": None, "reward_final_ts": None}],
        "rewards": [],
        "model_version": "vw-3",
        "deferred": False,
        "undelivered": False,
        "activated_ts": None,
        "deadline": ts + 600.0,
        "schema_version": 1,
        "arm": "recbandit",
        "portrait": {},
    }
    return {**built, **changes}


def as_json(records: list[dict[str, object]]) -> list[object]:
    """What a reader must return: the records through JSON, ascending by (ts, event_id)."""
    return [json.loads(json.dumps(r)) for r in sorted(records, key=lambda r: (r["ts"], r["event_id"]))]


def files(archive: Archive) -> list[Path]:
    return sorted(archive.directory.glob("day=*/events-*.parquet"))


def damage(path: Path) -> None:
    path.write_bytes(b"PAR1 not really parquet, secret-user-42")


@pytest.fixture
def three_days(tmp_path: Path) -> tuple[Archive, list[dict[str, object]]]:
    """Records across three UTC days, at and next to the midnights, written in three batches."""
    stamps = [MIDNIGHT, MIDNIGHT + 10, JUST_BEFORE(MIDNIGHT + DAY, 0), MIDNIGHT + DAY, MIDNIGHT + DAY + 3600,
              JUST_BEFORE(MIDNIGHT + 2 * DAY, 0), MIDNIGHT + 2 * DAY, MIDNIGHT + 2 * DAY + 1]
    records = [record(f"e{i}", ts, user_id=f"u-{i % 3}") for i, ts in enumerate(stamps)]
    records.append(record("e1b", MIDNIGHT + 10))  # same ts as e1: event_id orders them
    archive = Archive(tmp_path / "archive")
    for batch in (records[5:], records[::2][:3], [r for r in records[:5] if r not in records[::2][:3]]):
        archive.write(batch)
    return archive, records


def test_round_trip_equals_the_record_through_json(tmp_path: Path) -> None:
    records = [record("b", MIDNIGHT + 1.5), record("a", MIDNIGHT + 0.25, activated_ts=MIDNIGHT + 2, deferred=True,
                                                      rewards=[{"item_id": "sku-1", "label": "click",
                                                                "value": 1.0, "ts": MIDNIGHT + 3}])]
    archive = Archive(tmp_path)
    assert archive.write(records) == 2

    back = list(archive.records())

    assert back == as_json(records)
    assert [list(r) for r in back] == [list(r) for r in as_json(records)]  # key order too
    assert list(back[0]["slots"][0]) == list(records[0]["slots"][0])  # type: ignore[index]
    first_pmf = back[1]["slots"][0]["pmf"]  # type: ignore[index]
    assert [p.hex() for p in first_pmf] == [p.hex() for p in records[0]["slots"][0]["pmf"]]  # type: ignore[index]
    features = back[1]["user_features"]
    assert features["logged_in"] is True and type(features["visits"]) is float  # type: ignore[index]
    assert features["tags"] == ["new", "eco"] and type(back[1]["context"]["count"]) is int  # type: ignore[index]
    assert back[1]["activated_ts"] is None and back[1]["rewards"] == [] and back[1]["deferred"] is False


def test_a_record_with_other_keys_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    archive = Archive(tmp_path / "archive")
    with pytest.raises(ValueError, match=r"unknown keys \['explanation'\] and lacks \['deferred'\]"):
        archive.write([record("a", MIDNIGHT), {k: v for k, v in record("b", MIDNIGHT + DAY, explanation="x").items()
                                                if k != "deferred"}])
    assert not archive.directory.exists()


def test_nothing_is_created_until_the_first_write(tmp_path: Path) -> None:
    archive = Archive(tmp_path / "archive")
    assert archive.write([]) == 0
    assert not archive.directory.exists()
    assert list(archive.records()) == [] and archive.count() == 0 and archive.days() == []


def test_days_are_utc_and_reads_are_ordered_both_ways(three_days: tuple[Archive, list[dict[str, object]]]) -> None:
    archive, records = three_days
    assert archive.days() == ["2025-06-16", "2025-06-17", "2025-06-18"]
    second_day = archive.directory.glob("day=2025-06-17/*.parquet")
    assert {e for path in second_day for e in pq.read_table(path).column("event_id").to_pylist()} == {"e3", "e4", "e5"}
    assert len(files(archive)) == 7 and archive.count() == len(records)

    assert list(archive.records()) == as_json(records)
    assert list(archive.records_newest_first()) == as_json(records)[::-1]


@pytest.mark.parametrize(("start", "end", "expected"), [
    (MIDNIGHT + DAY, MIDNIGHT + 2 * DAY, ["e3", "e4", "e5"]),
    (JUST_BEFORE(MIDNIGHT + DAY, 0), MIDNIGHT + DAY + 1, ["e2", "e3"]),
    (None, MIDNIGHT + 10, ["e0"]),
    (MIDNIGHT + 10, MIDNIGHT + 11, ["e1", "e1b"]),
    (MIDNIGHT + 2 * DAY, None, ["e6", "e7"]),
    (MIDNIGHT + 3 * DAY, None, []),
])
def test_a_range_holds_start_and_not_end(three_days: tuple[Archive, list[dict[str, object]]], start: float | None,
                                         end: float | None, expected: list[str]) -> None:
    archive, _ = three_days
    assert [r["event_id"] for r in archive.records(start=start, end=end)] == expected
    if end is None:
        assert [r["event_id"] for r in archive.records_newest_first(start=start)] == expected[::-1]


def test_a_range_opens_only_the_days_that_can_hold_it(three_days: tuple[Archive, list[dict[str, object]]]) -> None:
    archive, _ = three_days
    first_day = next(archive.directory.glob("day=2025-06-16/*.parquet"))
    damage(first_day)
    assert [r["event_id"] for r in archive.records(start=MIDNIGHT + DAY)] == ["e3", "e4", "e5", "e6", "e7"]
    assert [r["event_id"] for r in archive.records_newest_first(start=MIDNIGHT + DAY)][-1] == "e3"

    last_day = next(archive.directory.glob("day=2025-06-18/*.parquet"))
    damage(last_day)
    assert [r["event_id"] for r in archive.records(start=MIDNIGHT + DAY, end=MIDNIGHT + 2 * DAY)] == ["e3", "e4", "e5"]
    with pytest.raises(ArchiveUnreadable, match=str(last_day)):
        list(archive.records(start=MIDNIGHT + DAY))


def test_an_event_archived_twice_comes_once_the_newest_copy(tmp_path: Path) -> None:
    archive = Archive(tmp_path)
    first = [record("a", MIDNIGHT + 1), record("b", MIDNIGHT + 2), record("c", MIDNIGHT + 3)]
    again = record("b", MIDNIGHT + 2, rewards=[{"item_id": "sku-1", "label": "buy", "value": 2.5, "ts": MIDNIGHT + 9}])
    archive.write(first)
    archive.write([again, record("d", MIDNIGHT + 2)])

    assert archive.count() == 5
    assert list(archive.records()) == as_json([first[0], again, record("d", MIDNIGHT + 2), first[2]])
    assert [r["event_id"] for r in archive.records_newest_first()] == ["c", "d", "b", "a"]
    assert next(r for r in archive.records_newest_first() if r["event_id"] == "b")["rewards"][0]["label"] == "buy"


def test_files_of_many_row_groups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine.archive, "ROWS_PER_GROUP", 3)
    archive = Archive(tmp_path)
    records = [record(f"e{i:02d}", MIDNIGHT + i, user_id=f"u-{i % 4}") for i in range(20)]
    archive.write(records[::2])
    archive.write(records[1::2])
    assert pq.ParquetFile(files(archive)[0]).num_row_groups == 4

    assert list(archive.records()) == as_json(records)
    assert list(archive.records_newest_first(start=MIDNIGHT + 7)) == as_json(records[7:])[::-1]
    assert [r["event_id"] for r in archive.records(start=MIDNIGHT + 8, end=MIDNIGHT + 13)] == [
        "e08", "e09", "e10", "e11", "e12"]
    assert archive.forget_user("u-1") == 5
    assert list(archive.records()) == as_json([r for r in records if r["user_id"] != "u-1"])


def test_files_whose_spans_touch_are_merged(tmp_path: Path) -> None:
    archive = Archive(tmp_path)
    archive.write([record("a", MIDNIGHT + 1), record("z", MIDNIGHT + 2), record("dup", MIDNIGHT + 2)])
    archive.write([record("b", MIDNIGHT + 2), record("dup", MIDNIGHT + 2), record("c", MIDNIGHT + 3)])

    assert [r["event_id"] for r in archive.records()] == ["a", "b", "dup", "z", "c"]
    assert [r["event_id"] for r in archive.records_newest_first()] == ["c", "z", "dup", "b", "a"]


def test_one_history_merges_in_order_and_prefers_the_live_copy() -> None:
    archived = [joined(record("a", 1.0)), joined(record("c", 3.0)), joined(record("d", 4.0))]
    live_d = joined(record("d", 4.0, undelivered=True))
    live = [joined(record("b", 2.0)), live_d, joined(record("e", 4.0)), joined(record("f", 5.0))]

    history = list(one_history(archived, live))

    assert [e.event_id for e in history] == ["a", "b", "c", "d", "e", "f"]
    assert history[3] is live_d


def test_one_history_refuses_input_out_of_order() -> None:
    with pytest.raises(ValueError, match="live records are not ascending"):
        list(one_history([joined(record("a", 1.0))], [joined(record("c", 3.0)), joined(record("b", 2.0))]))


def test_forget_user_removes_their_records_from_every_file(three_days: tuple[Archive, list[dict[str, object]]]) -> None:
    archive, records = three_days
    archive.write([record("only-gone", MIDNIGHT + 5 * DAY, user_id="gone")])
    archive.write([record("mixed-gone", MIDNIGHT + 20, user_id="gone"), record("mixed-kept", MIDNIGHT + 21)])
    archive.write([record("again-gone", MIDNIGHT + DAY + 7, user_id="gone")] * 2)
    before = [r for r in archive.records() if r["user_id"] != "gone"]

    assert archive.forget_user("gone") == 4

    assert list(archive.records()) == before
    assert archive.days() == ["2025-06-16", "2025-06-17", "2025-06-18"]  # the day only "gone" had is gone
    assert archive.count() == len(records) + 1
    assert all(stat.S_IMODE(path.stat().st_mode) == 0o600 for path in files(archive))
    assert archive.forget_user("gone") == 0


def test_forget_user_deletes_a_file_that_held_only_them(tmp_path: Path) -> None:
    archive = Archive(tmp_path)
    archive.write([record("kept", MIDNIGHT + 1)])
    archive.write([record("x", MIDNIGHT + 2, user_id="gone"), record("y", MIDNIGHT + 3, user_id="gone")])
    kept_file, gone_file = files(archive)
    kept_bytes = kept_file.read_bytes()

    assert archive.forget_user("gone") == 2

    assert files(archive) == [kept_file] and not gone_file.exists()
    assert kept_file.read_bytes() == kept_bytes  # a file without the user is not rewritten


def test_files_and_folders_are_private_whatever_the_umask(tmp_path: Path) -> None:
    archive = Archive(tmp_path / "archive")
    umask = os.umask(0o277)
    try:
        archive.write([record("a", MIDNIGHT), record("b", MIDNIGHT + DAY)])
    finally:
        os.umask(umask)
    folders = [archive.directory, *archive.directory.glob("day=*")]
    assert {stat.S_IMODE(folder.stat().st_mode) for folder in folders} == {0o700}
    assert {stat.S_IMODE(path.stat().st_mode) for path in files(archive)} == {0o600}


def test_leftover_temporaries_and_strangers_are_ignored_and_stale_ones_removed(tmp_path: Path) -> None:
    archive = Archive(tmp_path)
    archive.write([record("a", MIDNIGHT + 1)])
    folder = tmp_path / "day=2025-06-16"
    stale, fresh = folder / ".events-1-dead.parquet.tmp", folder / ".events-2-beef.parquet.tmp"
    for leftover in (stale, fresh, folder / "notes.txt", tmp_path / "day=someday"):
        damage(leftover)
    os.utime(stale, (time.time() - 7200, time.time() - 7200))

    assert [r["event_id"] for r in archive.records()] == ["a"] and archive.count() == 1
    archive.write([record("b", MIDNIGHT + 2)])

    assert not stale.exists() and fresh.exists()
    assert [r["event_id"] for r in archive.records_newest_first()] == ["b", "a"]


@pytest.mark.parametrize("broken", ["garbage", "truncated"])
def test_an_unreadable_file_is_named_and_not_dumped(tmp_path: Path, broken: str) -> None:
    archive = Archive(tmp_path)
    archive.write([record("a", MIDNIGHT + 1, user_id="secret-user-42")])
    path, = files(archive)
    if broken == "garbage":
        damage(path)
    else:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    for read in (lambda: list(archive.records()), archive.count, lambda: archive.forget_user("x")):
        with pytest.raises(ArchiveUnreadable) as caught:
            read()
        assert caught.value.path == path and str(path) in str(caught.value)
        assert "secret-user-42" not in str(caught.value)


def test_a_file_from_a_newer_archive_schema_is_refused(tmp_path: Path) -> None:
    archive = Archive(tmp_path)
    archive.write([record("a", MIDNIGHT + 1)])
    path, = files(archive)
    table = pq.read_table(path)
    newer = {**table.schema.metadata, b"archive_schema_version": str(ARCHIVE_SCHEMA_VERSION + 1).encode()}
    pq.write_table(table.replace_schema_metadata(newer), path)

    refused = rf"{re.escape(str(path))}: .*archive_schema_version {ARCHIVE_SCHEMA_VERSION + 1}, newer .*upgrade recbandit"
    with pytest.raises(ArchiveUnreadable, match=refused):
        list(archive.records())


def test_a_file_of_the_first_archive_schema_reads_as_the_recbandit_arm(tmp_path: Path) -> None:
    archive = Archive(tmp_path)
    archive.write([record("a", MIDNIGHT + 1, arm="control")])
    path, = files(archive)
    table = pq.read_table(path)
    first = table.drop_columns(["arm"]).replace_schema_metadata(
        {**table.schema.metadata, b"archive_schema_version": b"1"})  # as the first archives were written
    pq.write_table(first, path)
    (back,) = archive.records()
    assert back["arm"] == "recbandit" and back["event_id"] == "a"


def test_importing_the_archive_does_not_import_pyarrow() -> None:
    code = "import sys, engine.archive; print('pyarrow' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.stdout.strip() == "False", done.stderr
