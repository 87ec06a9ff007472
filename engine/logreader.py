"""Reading the event log as typed records, without writing it.

:class:`LogReader` is what export, evaluation, embedding training and reports read the log with:
:class:`~engine.records.JoinedEvent` records, each decision with its slots' final outcomes and its
rewards, in time order. Opened on its own (:meth:`LogReader.open`) it takes read-only connections
and never migrates, locks or writes: it can read a log that a server or a learner is writing, on
SQLite or PostgreSQL alike. The event log's writer (:class:`engine.eventlog.EventLog`) reads with
one too.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from engine.archive import Archive
from engine.catalogstore import VersionCache, read_items
from engine.errors import StartupRefused, StorageUnavailable
from engine.logwrites import chunks
from engine.records import CatalogVersions, JoinedEvent, LoggedDecision, Reward, SlotOutcome, decision_from_json
from engine.storage import Connection, Database, is_postgres, open_database
from engine.types import Item

EVENT_LOG = "events.db"
"""The event log's file name in a data directory."""

LOG_SCHEMA_VERSION = 5
"""The version of the tables; each record's own format is :data:`engine.records.SCHEMA_VERSION`."""

DECISION_COLUMNS = "event_id, ts, user_id, model_version, deferred, deadline, record, undelivered, pmf"
"""The columns :func:`decision_from_row` reads a decision from, in its order."""


class LogReader:
    """Reads the event log of ``database``: one connection per thread, each seeing every commit.

    ``read_only`` connections cannot write, whatever the caller does (the writer's own reader
    takes ordinary ones: it folds SQLite's write-ahead log too).
    """

    def __init__(self, database: Database, *, read_only: bool = True) -> None:
        self.database = database
        self.versions = VersionCache()
        self._read_only = read_only
        self._local = threading.local()
        self._connections: list[Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    @classmethod
    def open(cls, store: str | Path) -> LogReader:
        """The reader of ``store``: a ``postgresql://`` URL, a data directory or its ``events.db``.

        FileNotFoundError when there is no log there; :class:`~engine.errors.StartupRefused` when
        its schema is not this recbandit's (a newer one, or an older one not yet migrated).
        """
        reader = cls(open_database(store if is_postgres(store) else event_log_path(store)))
        try:
            reader._check_schema()
        except BaseException:
            reader.close()
            raise
        return reader

    def _check_schema(self) -> None:
        try:
            row = self.connection().execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except Exception as e:
            if self.database.storage_failure(e) and not _no_such_table(e):
                raise
            row = None
        if row is None:
            raise StartupRefused(f"{self.database.name} holds no recbandit event log")
        found = str(row[0])
        if found != str(LOG_SCHEMA_VERSION):
            raise StartupRefused(
                f"the event log's schema version is {found}; this recbandit reads {LOG_SCHEMA_VERSION}: "
                + ("upgrade recbandit" if found.isdigit() and int(found) > LOG_SCHEMA_VERSION
                   else "start recbandit serve or learn on it once, which migrates it"))

    def connection(self) -> Connection:
        """This thread's connection."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            with self._lock:
                if self._closed:  # a thread that outlived its engine: never a connection nobody closes
                    raise StorageUnavailable()
                conn = self._local.conn = self.database.connect(read_only=self._read_only)
                self._connections.append(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()

    def __enter__(self) -> LogReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the log's own facts ------------------------------------------------------------------------

    def log_id(self) -> str:
        """This log's random id, given when it was created: a checkpoint records the log it learned from."""
        (value,) = self.connection().execute("SELECT value FROM meta WHERE key = 'log_id'").fetchone()
        return str(value)

    def archive_dir(self) -> Path | None:
        """The folder retention archives this log's deleted events to (:mod:`engine.archive`), once it has."""
        row = self.connection().execute("SELECT value FROM meta WHERE key = 'archive_dir'").fetchone()
        return None if row is None else Path(row[0])

    def counts(self) -> dict[str, int]:
        conn = self.connection()
        return {
            table: conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            for table in ("decisions", "rewards", "outcomes", "items")
        }

    def positive_rewards_since(self, ts: float) -> int:
        """How many rewards above 0 were reported after ``ts``: the interactions embeddings learn from."""
        (count,) = self.connection().execute("SELECT COUNT(*) FROM rewards WHERE value > 0 AND ts > ?", (ts,)).fetchone()
        return int(count)

    def items(self, *, active_only: bool = False) -> list[Item]:
        """The catalog's items, by id."""
        return read_items(self.connection(), active_only=active_only)

    # -- joined events --------------------------------------------------------------------------

    def history(self) -> Iterator[JoinedEvent]:
        """The whole history: what retention archived (:meth:`archive_dir`) and :meth:`joined`, as one,
        in the same order. FileNotFoundError when the log has archived to a folder that is gone.

        The log is read in one snapshot taken before the archive is listed: a retention pass
        meanwhile archives before it deletes, so every event is in one or the other.
        """
        directory = self.archive_dir()
        if directory is not None and not directory.is_dir():
            raise FileNotFoundError(f"the archive of this event log, {directory}, is missing")
        archive = None if directory is None else Archive(directory, self.log_id())
        return self._history(archive)

    def _history(self, archive: Archive | None) -> Iterator[JoinedEvent]:
        with self._snapshot() as conn:
            live = self._joined(conn)
            if archive is None:
                yield from live
            else:
                archived = (JoinedEvent.from_export(record) for record in archive.records())
                yield from one_history(archived, live)

    def joined(self, batch: int = 500) -> Iterator[JoinedEvent]:
        """Every decision the log holds in time order (by ``ts``, then ``event_id``: the archive's
        order too), with its slots' final outcomes and all its rewards; read in one snapshot."""
        with self._snapshot() as conn:
            yield from self._joined(conn, batch)

    def events(self, event_ids: Iterable[str]) -> list[JoinedEvent]:
        """The joined events of these ids (unknown ids are left out), in time order."""
        conn = self.connection()
        rows = []
        for chunk in chunks(list(event_ids), 500):
            marks = ",".join("?" * len(chunk))
            rows += conn.execute(f"SELECT activated_ts, {DECISION_COLUMNS} FROM decisions WHERE event_id IN ({marks})",
                                 chunk).fetchall()
        return list(self._joined_rows(conn, rows))

    @contextmanager
    def _snapshot(self) -> Iterator[Connection]:
        """A connection of its own in one read transaction, whose reads all see the log as it was at
        the first: a long read misses nothing that commits meanwhile out of time order."""
        conn = self.database.connect(read_only=self._read_only)
        try:
            conn.execute(self.database.begin_snapshot)
            conn.execute("SELECT COUNT(*) FROM meta").fetchone()  # the snapshot is taken here
            yield conn
        finally:
            conn.close()  # ends the transaction

    def decisions_since(self, since: float, batch: int = 500) -> Iterator[LoggedDecision]:
        """The decisions decided after ``since``, in time order, read in one snapshot (what the
        frequency caps count, :mod:`engine.frequency`)."""
        with self._snapshot() as conn:
            versions = self.versions.reader(conn)
            for rows in _pages(conn, since, batch):
                for row in sorted(rows, key=lambda row: (row[2], row[1])):
                    yield decision_from_row(row[1:], versions)

    def _joined(self, conn: Connection, batch: int = 500) -> Iterator[JoinedEvent]:
        for rows in _pages(conn, float("-inf"), batch):
            yield from self._joined_rows(conn, rows)

    def _joined_rows(self, conn: Connection, rows: list[tuple]) -> Iterator[JoinedEvent]:  # type: ignore[type-arg]
        """Rows of ``activated_ts`` and :data:`DECISION_COLUMNS` as joined events, by ``(ts, event_id)``."""
        rows = sorted(rows, key=lambda row: (row[2], row[1]))
        versions = self.versions.reader(conn)
        for chunk in chunks(rows, 500):
            ids = [row[1] for row in chunk]
            marks = ",".join("?" * len(ids))
            outcomes = {
                (e, s): SlotOutcome(r, src, ts)
                for e, s, r, src, ts in conn.execute(
                    f"SELECT event_id, slot, reward, source, ts FROM outcomes WHERE event_id IN ({marks})", ids
                )
            }
            rewards: dict[str, list[Reward]] = {}
            for e, item, label, value, ts in conn.execute(
                f"SELECT event_id, item_id, label, value, ts FROM rewards WHERE event_id IN ({marks}) ORDER BY ts",
                ids,
            ):
                rewards.setdefault(e, []).append(Reward(e, item, label, value, ts))
            for row in chunk:
                decision = decision_from_row(row[1:], versions)
                slots = tuple(outcomes.get((decision.event_id, i)) for i in range(len(decision.slots)))
                yield JoinedEvent(decision, slots, tuple(rewards.get(decision.event_id, ())), row[0])


def _pages(conn: Connection, after: float, batch: int) -> Iterator[list[tuple]]:  # type: ignore[type-arg]
    """Rows of ``activated_ts`` and :data:`DECISION_COLUMNS` decided after ``after``, about ``batch``
    at a time in time order; a page ends with every decision of its last ``ts``."""
    while True:
        bound = conn.execute("SELECT ts FROM decisions WHERE ts > ? ORDER BY ts LIMIT 1 OFFSET ?",
                             (after, batch - 1)).fetchone()
        rows = conn.execute(
            f"SELECT activated_ts, {DECISION_COLUMNS} FROM decisions WHERE ts > ? AND ts <= ?",
            (after, float("inf") if bound is None else bound[0]),
        ).fetchall()
        if not rows:
            return
        yield rows
        after = max(row[2] for row in rows)


def decision_from_row(row: tuple, versions: CatalogVersions) -> LoggedDecision:  # type: ignore[type-arg]
    """The decision of a row of :data:`DECISION_COLUMNS`."""
    event_id, ts, user_id, model_version, deferred, deadline, record, undelivered, pmfs = row
    return decision_from_json(
        record,
        versions=versions,
        pmfs=pmfs,
        event_id=event_id,
        ts=ts,
        user_id=user_id,
        model_version=model_version,
        deferred=bool(deferred),
        deadline=deadline,
        undelivered=bool(undelivered),
    )


def one_history(archived: Iterable[JoinedEvent], live: Iterable[JoinedEvent]) -> Iterator[JoinedEvent]:
    """The archive and the live log as one history, ascending by ``(ts, event_id)``.

    Both inputs must be ascending by ``(ts, event_id)`` (a ``ValueError`` says which is not). An
    event in both — archived, not yet deleted from the log — comes once: the live copy.
    """
    merged = heapq.merge(_ascending(archived, 0, "archived"), _ascending(live, 1, "live"))
    for _, same in itertools.groupby(merged, key=lambda row: row[:2]):
        yield max(same, key=lambda row: row[2])[3]


def _ascending(events: Iterable[JoinedEvent], rank: int, name: str) -> Iterator[tuple[float, str, int, JoinedEvent]]:
    previous: tuple[float, str] | None = None
    for event in events:
        key = (event.ts, event.event_id)
        if previous is not None and key < previous:
            raise ValueError(f"{name} records are not ascending by (ts, event_id): {key} after {previous}")
        previous = key
        yield key[0], key[1], rank, event


def event_log_path(source: str | Path) -> Path:
    """The log file of ``source``: a data directory's ``events.db`` (a path without a suffix is a
    directory, present or not), or the file itself; FileNotFoundError when it does not exist."""
    path = Path(source)
    if path.is_dir() or not path.suffix:
        path = path / EVENT_LOG
    if not path.exists():
        raise FileNotFoundError(f"no event log at {path}")
    return path


def _no_such_table(error: Exception) -> bool:
    return "no such table" in str(error) or "does not exist" in str(error)
