"""The event archive: joined records the retention pass deletes from the log, kept as Parquet.

``DIR/day=YYYY-MM-DD/events-<ns>-<hex>.parquet`` holds the records whose decision ``ts`` falls on
that UTC day, sorted by ``(ts, event_id)``. Files are immutable once written; ``forget_user``
replaces a file whole. Each file is written to a dot-name in its folder, fsynced and renamed, so a
reader sees a file whole or not at all, and skips every name that is not an archive file.

The scalar fields are native columns; the nested ones (features, candidates, slots, rewards) are
compact JSON text, so a record read back equals ``json.loads(json.dumps(record))``: the logged
propensities bit for bit, booleans as booleans.

An event may be archived twice (a crash after the file was written, before the log forgot the
event, and the next pass archives it again): readers yield it once, the copy from the newest file.

An archive belongs to one event log: ``archive.json`` names the log's id, and an archive opened
for another log (``Archive(directory, log_id)``) is refused rather than mixed with it.
"""

from __future__ import annotations

import heapq
import itertools
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.checkpoint import atomic_write

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq

ARCHIVE_SCHEMA_VERSION = 3
"""1: the joined record's fields; 2: and its campaign ``arm`` (files of 1 read as the recbandit arm);
3: and the user's ``portrait`` (files before read as none)."""
"""Written in every file's key-value metadata; a file with a newer version is refused."""

ROWS_PER_GROUP = 2_000
"""Rows per Parquet row group at most: what a reader holds in memory per open file."""

ROWS_PER_WRITE = 500
"""Records a write converts at once: its memory, and how long it holds the interpreter in pyarrow."""

OWNER_FILE = "archive.json"

STALE_TEMPORARY_SECONDS = 3_600.0
"""A dot-temporary older than this was left by a crash; ``write`` removes it from the days it touches."""

_VERSION_KEY = b"archive_schema_version"
_DAY_SECONDS = 86_400
_EPOCH = date(1970, 1, 1)
_FIRST_TS = (date.min - _EPOCH).days * float(_DAY_SECONDS)
_LAST_TS = (date.max - _EPOCH).days * float(_DAY_SECONDS)
_DAY_FOLDER = re.compile(r"day=(\d{4}-\d{2}-\d{2})")
_FILE_NAME = re.compile(r"events-\d{20}-[0-9a-f]{8}\.parquet")
_KEYS = ("event_id", "ts", "user_id", "user_features", "context", "candidates", "slots", "rewards",
         "model_version", "deferred", "undelivered", "activated_ts", "deadline", "schema_version", "arm", "portrait")
_ADDED = {"arm": "recbandit", "portrait": "{}"}
"""Fields added after the first archive version, with the value older files stand for."""
_KEY_SET = frozenset(_KEYS)
_JSON_KEYS = frozenset({"user_features", "context", "candidates", "slots", "rewards", "portrait"})
_WRITE_OPTIONS: dict[str, Any] = {"compression": "zstd", "compression_level": 6, "use_dictionary": True}
_compact = json.JSONEncoder(separators=(",", ":")).encode

_Row = tuple[float, str, int, int, dict[str, object]]
"""(ts, event_id, file rank, row in file, record): ordered by the first four, which are unique."""


class ArchiveUnreadable(ValueError):
    """An archive file cannot be read: damaged, not an archive file, written by a newer recbandit,
    or of another event log. Its message names the file: for the operator, never for a client."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        super().__init__(f"archive file {os.fspath(path)}: {reason}")
        self.path = Path(path)
        self.reason = reason


class Archive:
    """Day-partitioned Parquet files of joined records (the UTC day of each decision's ``ts``)."""

    def __init__(self, directory: str | os.PathLike[str], log_id: str | None = None) -> None:
        self.directory = Path(directory)
        self.log_id = log_id  # the event log this archive belongs to; None: not checked
        self._lock = threading.Lock()  # one write or forget at a time through this object

    def write(self, records: Iterable[Mapping[str, object]]) -> int:
        """Write ``records`` (any order) durably, one new file per UTC day they touch; return how many.

        Rows are sorted by ``(ts, event_id)``. Folders are 0700 and files 0600: they hold user ids
        and features. Empty input writes nothing. A record whose keys are not the joined record's is
        refused (``ValueError``) before anything is written, rather than archived in part.
        """
        records = list(records)
        for record in records:
            _check_keys(record)
        return self.write_sorted(sorted(records, key=_order))

    def write_sorted(self, records: Iterable[Mapping[str, object]]) -> int:
        """:meth:`write` for records already ascending by ``(ts, event_id)``, taken as they come:
        each day's file is written :data:`ROWS_PER_WRITE` rows at a time, so memory holds that many
        and serving threads get the interpreter between them. Out-of-order records are refused."""
        stamp = f"{time.time_ns():020d}"
        written = 0
        with self._lock:
            for day, rows in itertools.groupby(_ascending(records), key=lambda r: _day(float(r["ts"]))):  # type: ignore[arg-type]
                self._claim()
                folder = self.directory / f"day={day}"
                _private_folder(folder)
                _remove_temporaries(folder, older_than=time.time() - STALE_TEMPORARY_SECONDS)
                counted = _Counted(rows)
                atomic_write(folder / f"events-{stamp}-{secrets.token_hex(4)}.parquet", partial(_write_rows, counted))
                written += counted.count
        return written

    def _claim(self) -> None:
        """Make the archive's folder, naming this log in ``archive.json``; refuse another log's."""
        _private_folder(self.directory)
        owner = self.directory / OWNER_FILE
        if self.log_id is not None and not owner.exists():
            atomic_write(owner, lambda tmp: Path(tmp).write_text(json.dumps({"log_id": self.log_id}) + "\n"))
        self._check_owner()

    def _check_owner(self) -> None:
        if self.log_id is None:
            return
        try:
            found = json.loads((self.directory / OWNER_FILE).read_text()).get("log_id")
        except FileNotFoundError:
            return  # nothing written yet
        except (OSError, ValueError, AttributeError) as error:
            raise ArchiveUnreadable(self.directory / OWNER_FILE, "is not an archive's owner file") from error
        if found != self.log_id:
            raise ArchiveUnreadable(self.directory, f"belongs to event log {found}, not {self.log_id}")

    def records(self, *, start: float | None = None, end: float | None = None) -> Iterator[dict[str, object]]:
        """Each event with ``start <= ts < end`` once, ascending by ``(ts, event_id)``.

        Lazy: only the day folders that can hold the range are opened, and each open file holds
        one row group in memory.
        """
        self._check_owner()
        first = None if start is None else _day(start)
        last = None if end is None else _day_before(end)
        for folder in self._day_folders(first, last):
            yield from _once(_day_rows(folder, start, end, newest_first=False))

    def records_newest_first(self, *, start: float | None = None) -> Iterator[dict[str, object]]:
        """Each event with ``ts >= start`` once, descending by ``(ts, event_id)``."""
        self._check_owner()
        first = None if start is None else _day(start)
        for folder in reversed(self._day_folders(first, None)):
            yield from _once(_day_rows(folder, start, None, newest_first=True))

    def forget_user(self, user_id: str) -> int:
        """Remove every record of ``user_id``; return how many rows were removed.

        Only the ``user_id`` column is read to find them. A file holding one is replaced by a copy
        without them (written like :meth:`write`); a file left empty is deleted, and so is a day
        folder left empty. Every dot-temporary is removed too, whatever its age: it may hold the
        user's records (a concurrent writer in another process then fails, and retries).
        """
        removed = 0
        self._check_owner()
        with self._lock:
            for folder in self._day_folders(None, None):
                _remove_temporaries(folder, older_than=None)
                for path in _archive_files(folder):
                    removed += _forget_in_file(path, user_id)
                _remove_if_empty(folder)
        return removed

    def count(self) -> int:
        """Rows in the archive, from the files' metadata (an event archived twice counts twice)."""
        return sum(file.rows for folder in self._day_folders(None, None) for file in _file_summaries(folder))

    def days(self) -> list[str]:
        """The UTC days (``YYYY-MM-DD``) of the day folders, ascending."""
        return [folder.name.removeprefix("day=") for folder in self._day_folders(None, None)]

    def _day_folders(self, first: str | None, last: str | None) -> list[Path]:
        """The day folders from ``first`` to ``last`` (``YYYY-MM-DD``, inclusive; None: unbounded), ascending."""
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return []
        folders = []
        for entry in entries:
            match = _DAY_FOLDER.fullmatch(entry.name)
            if match and entry.is_dir() and (first is None or match[1] >= first) and (last is None or match[1] <= last):
                folders.append(Path(entry.path))
        return sorted(folders)


# -- reading ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _FileSummary:
    """An archive file as its footer describes it; ``rank`` orders the files of a day by age."""

    path: Path
    rank: int
    rows: int
    first_ts: float
    last_ts: float

    def overlaps(self, start: float | None, end: float | None) -> bool:
        return (start is None or self.last_ts >= start) and (end is None or self.first_ts < end)


def _day_rows(folder: Path, start: float | None, end: float | None, *, newest_first: bool) -> Iterator[_Row]:
    """The rows of one day in range, in order, duplicates included.

    Files whose time spans do not overlap are read one after the other; only overlapping ones are
    open together, merged with :func:`heapq.merge`. Retention archives in time order, so a day's
    many files rarely overlap and few are open at once.
    """
    files = [file for file in _file_summaries(folder) if file.overlaps(start, end)]
    groups = _overlapping(files)
    for group in reversed(groups) if newest_first else groups:
        streams = [_file_rows(file, start, end, newest_first=newest_first) for file in group]
        yield from heapq.merge(*streams, reverse=newest_first)


def _overlapping(files: list[_FileSummary]) -> list[list[_FileSummary]]:
    """``files`` in groups whose time spans overlap (touching counts: an event archived twice has one ts)."""
    groups: list[list[_FileSummary]] = []
    last_ts = float("-inf")
    for file in sorted(files, key=lambda f: (f.first_ts, f.rank)):
        if groups and file.first_ts <= last_ts:
            groups[-1].append(file)
            last_ts = max(last_ts, file.last_ts)
        else:
            groups.append([file])
            last_ts = file.last_ts
    return groups


def _file_rows(file: _FileSummary, start: float | None, end: float | None, *, newest_first: bool) -> Iterator[_Row]:
    """The rows of one file with ``start <= ts < end``, skipping row groups out of range by their statistics."""
    try:
        parquet = _open(file.path)
    except FileNotFoundError:  # deleted by forget_user since it was listed: all its rows were forgotten
        return
    with parquet:
        offsets = list(itertools.accumulate((parquet.metadata.row_group(g).num_rows
                                             for g in range(parquet.num_row_groups)), initial=0))
        groups = range(parquet.num_row_groups)
        for g in reversed(groups) if newest_first else groups:
            low, high = _ts_span(parquet.metadata.row_group(g))
            if (start is not None and high < start) or (end is not None and low >= end):
                continue
            columns = _read_group(parquet, g, file.path)
            rows = range(len(columns["ts"]))
            for i in reversed(rows) if newest_first else rows:
                ts = columns["ts"][i]
                if (start is None or ts >= start) and (end is None or ts < end):
                    row = offsets[g] + i
                    yield ts, columns["event_id"][i], file.rank, row, _record(columns, i, file.path, row)


def _read_group(parquet: pq.ParquetFile, group: int, path: Path) -> dict[str, list[Any]]:
    import pyarrow as pa

    try:
        table = parquet.read_row_group(group)
        return {key: table.column(key).to_pylist() if key in table.column_names or key not in _ADDED
                else [_ADDED[key]] * table.num_rows for key in _KEYS}
    except (pa.ArrowException, OSError, KeyError) as err:
        raise ArchiveUnreadable(path, f"row group {group} cannot be read") from err


def _record(columns: Mapping[str, list[Any]], i: int, path: Path, row: int) -> dict[str, object]:
    try:
        return {key: json.loads(columns[key][i]) if key in _JSON_KEYS else columns[key][i] for key in _KEYS}
    except (ValueError, TypeError) as err:
        raise ArchiveUnreadable(path, f"row {row} has a JSON column that cannot be decoded") from err


def _once(rows: Iterable[_Row]) -> Iterator[dict[str, object]]:
    """Rows ordered by (ts, event_id), each event once: of equal ones, the last by (rank, row)."""
    for _, same in itertools.groupby(rows, key=lambda row: row[:2]):
        yield max(same, key=lambda row: row[2:4])[4]


def _file_summaries(folder: Path) -> list[_FileSummary]:
    """The archive files of a day folder, oldest first, from their footers (a vanished one is skipped)."""
    summaries = []
    for rank, path in enumerate(_archive_files(folder)):
        try:
            parquet = _open(path)
        except FileNotFoundError:
            continue
        with parquet:
            spans = [_ts_span(parquet.metadata.row_group(g)) for g in range(parquet.num_row_groups)]
            first = min((low for low, _ in spans), default=float("inf"))
            last = max((high for _, high in spans), default=float("-inf"))
            summaries.append(_FileSummary(path, rank, parquet.metadata.num_rows, first, last))
    return summaries


def _open(path: Path) -> pq.ParquetFile:
    """The file opened, its version and columns checked; FileNotFoundError passes through."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError) as err:
        raise ArchiveUnreadable(path, "not a readable Parquet file (damaged or truncated)") from err
    problem = _problem(parquet)
    if problem:
        parquet.close()
        raise ArchiveUnreadable(path, problem)
    return parquet


def _problem(parquet: pq.ParquetFile) -> str | None:
    """Why an open Parquet file is not an archive file this code reads, or None."""
    raw = (parquet.metadata.metadata or {}).get(_VERSION_KEY)
    if raw is None or not raw.isdigit():
        return f"no {_VERSION_KEY.decode()} in its metadata: not an archive file"
    if int(raw) > ARCHIVE_SCHEMA_VERSION:
        return (f"written with {_VERSION_KEY.decode()} {int(raw)}, newer than this recbandit reads"
                f" ({ARCHIVE_SCHEMA_VERSION}); upgrade recbandit to read it")
    missing = _KEY_SET - set(parquet.schema_arrow.names) - _ADDED.keys()
    return f"columns missing: {', '.join(sorted(missing))}" if missing else None


def _ts_span(group: pq.RowGroupMetaData) -> tuple[float, float]:
    """The smallest and largest ts of a row group, from its statistics (unbounded without them)."""
    column = group.column(_KEYS.index("ts"))
    stats = column.statistics
    if stats is None or not stats.has_min_max:
        return float("-inf"), float("inf")
    return float(stats.min), float(stats.max)


# -- writing ---------------------------------------------------------------------------------------


def _schema() -> pa.Schema:
    import pyarrow as pa

    types = {"ts": pa.float64(), "deferred": pa.bool_(), "undelivered": pa.bool_(), "activated_ts": pa.float64(),
             "deadline": pa.float64(), "schema_version": pa.int32()}
    return pa.schema([(key, types.get(key, pa.string())) for key in _KEYS],
                     metadata={_VERSION_KEY: str(ARCHIVE_SCHEMA_VERSION).encode()})


def _check_keys(record: Mapping[str, object]) -> None:
    if record.keys() != _KEY_SET:
        unknown, missing = sorted(record.keys() - _KEY_SET), sorted(_KEY_SET - record.keys())
        raise ValueError(f"a joined record to archive has unknown keys {unknown} and lacks {missing};"
                         " a new field needs a new ARCHIVE_SCHEMA_VERSION")


def _table(records: Sequence[Mapping[str, object]]) -> pa.Table:
    import pyarrow as pa

    columns = {key: [_compact(r[key]) if key in _JSON_KEYS else r[key] for r in records] for key in _KEYS}
    return pa.table(columns, schema=_schema())


def _write_rows(rows: Iterable[Mapping[str, object]], path: str) -> None:
    """Write ``rows`` to the Parquet file ``path``, :data:`ROWS_PER_WRITE` at a time."""
    import pyarrow.parquet as pq

    with pq.ParquetWriter(path, _schema(), **_WRITE_OPTIONS) as writer:
        iterator = iter(rows)
        while chunk := list(itertools.islice(iterator, ROWS_PER_WRITE)):
            writer.write_table(_table(chunk), row_group_size=ROWS_PER_GROUP)


class _Counted:
    """An iterable that counts what it yielded."""

    def __init__(self, rows: Iterable[Mapping[str, object]]) -> None:
        self._rows = rows
        self.count = 0

    def __iter__(self) -> Iterator[Mapping[str, object]]:
        for row in self._rows:
            self.count += 1
            yield row


def _ascending(records: Iterable[Mapping[str, object]]) -> Iterator[Mapping[str, object]]:
    """``records``, checked: the joined record's keys, ascending by ``(ts, event_id)``."""
    last: tuple[float, str] | None = None
    for record in records:
        _check_keys(record)
        order = _order(record)
        if last is not None and order < last:
            raise ValueError(f"records to archive must ascend by (ts, event_id): {order} came after {last}")
        last = order
        yield record


def _forget_in_file(path: Path, user_id: str) -> int:
    """Rewrite ``path`` without ``user_id``'s rows (delete it if nothing is left); return how many went."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        parquet = _open(path)
    except FileNotFoundError:
        return 0
    with parquet:
        try:
            found = pc.sum(pc.equal(parquet.read(columns=["user_id"]).column("user_id"), user_id)).as_py() or 0
        except (pa.ArrowException, OSError) as err:
            raise ArchiveUnreadable(path, "its user_id column cannot be read") from err
        rows = parquet.metadata.num_rows
        if found and found < rows:
            atomic_write(path, lambda tmp: _copy_without(parquet, path, user_id, tmp))
    if found and found == rows:
        path.unlink()
        _fsync_folder(path.parent)
    return int(found)


def _copy_without(parquet: pq.ParquetFile, path: Path, user_id: str, tmp: str) -> None:
    """Write ``parquet``'s rows but ``user_id``'s to ``tmp``, one row group at a time."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    with pq.ParquetWriter(tmp, parquet.schema_arrow, **_WRITE_OPTIONS) as writer:
        for g in range(parquet.num_row_groups):
            try:
                table = parquet.read_row_group(g)
            except (pa.ArrowException, OSError) as err:
                raise ArchiveUnreadable(path, f"row group {g} cannot be read") from err
            kept = table.filter(pc.not_equal(table.column("user_id"), user_id))
            if kept.num_rows:
                writer.write_table(kept, row_group_size=ROWS_PER_GROUP)


# -- files and days --------------------------------------------------------------------------------


def _order(record: Mapping[str, object]) -> tuple[float, str]:
    return record["ts"], record["event_id"]  # type: ignore[return-value]


def _day(ts: float) -> str:
    """The UTC day of ``ts`` as ``YYYY-MM-DD``; exact at midnight (float floor division is exact)."""
    days = min(max(ts, _FIRST_TS), _LAST_TS) // _DAY_SECONDS
    return (_EPOCH + timedelta(days=int(days))).isoformat()


def _day_before(end: float) -> str:
    """The last UTC day holding a ts < ``end``: the day of ``end``, or the one before when ``end`` is a midnight."""
    end = min(max(end, _FIRST_TS + _DAY_SECONDS), _LAST_TS)
    days = -(-end // _DAY_SECONDS) - 1  # ceil(end / day) - 1, exactly
    return (_EPOCH + timedelta(days=int(days))).isoformat()


def _archive_files(folder: Path) -> list[Path]:
    """The archive files of a day folder, oldest first (their names start with the write's time)."""
    try:
        names = [entry.name for entry in os.scandir(folder) if _FILE_NAME.fullmatch(entry.name) and entry.is_file()]
    except FileNotFoundError:
        return []
    return [folder / name for name in sorted(names)]


def _private_folder(path: Path) -> None:
    """Create ``path`` readable by its owner alone, durably (its parent fsynced)."""
    if path.is_dir():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        return
    os.chmod(path, 0o700)  # mkdir's mode is cut by the umask
    _fsync_folder(path.parent)


def _remove_temporaries(folder: Path, *, older_than: float | None) -> None:
    """Remove the dot-temporaries a crashed write left (older than ``older_than``; None: all)."""
    for entry in os.scandir(folder):
        if entry.name.startswith(".") and entry.is_file(follow_symlinks=False):
            if older_than is None or entry.stat(follow_symlinks=False).st_mtime < older_than:
                Path(entry.path).unlink(missing_ok=True)


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:  # not empty, or already gone
        return
    _fsync_folder(folder.parent)


def _fsync_folder(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
