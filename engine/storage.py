"""Where the event log lives: a SQLite file in the data directory, or a PostgreSQL database.

:class:`~engine.eventlog.EventLog` writes its SQL once, in the subset both speak (``?``
placeholders, ``INSERT … ON CONFLICT``), against a :class:`Connection`: ``sqlite3``'s own, or
:class:`PostgresConnection`, which gives a psycopg connection the same few methods. What differs
lives here, in a :class:`Database`: how to connect, the tables' types, how a write transaction
begins, which errors mean the storage failed, the outcomes' sequence, and SQLite's upkeep of its
file (incremental vacuum, WAL checkpoints).

``--store postgresql://user@host:port/db`` selects PostgreSQL; otherwise the log is
``events.db`` in the data directory. Heavy imports (psycopg) stay inside the PostgreSQL code.
"""

from __future__ import annotations

import functools
import os
import re
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


class Connection(Protocol):
    """What the event log asks of a connection: ``sqlite3.Connection``'s methods that it uses."""

    total_changes: int
    in_transaction: bool

    def execute(self, sql: str, parameters: Sequence[Any] = ...) -> Cursor: ...
    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> Cursor: ...
    def close(self) -> None: ...


class Database(Protocol):
    """One kind of storage for the event log."""

    name: str
    """Where the log is, for messages: a path, or a URL without its password."""
    begin: str
    """The statement that starts a write transaction."""
    begin_snapshot: str
    """The statement that starts a read transaction whose reads see one snapshot."""
    integer_key: str
    """The type of a key that numbers rows in insertion order (the outcomes' ``seq``, catalog versions)."""
    real: str
    blob: str

    def connect(self, *, writer: bool = False) -> Connection: ...
    def storage_failure(self, error: BaseException) -> bool: ...
    def last_assigned(self, conn: Connection, table: str, column: str) -> int: ...
    def give_back_pages(self, conn: Connection) -> None: ...
    def fold_write_ahead_log(self, conn: Connection) -> bool: ...
    def claim(self) -> Claim: ...


class Claim(Protocol):
    """A hold on the store that one serving process has at a time; released by :meth:`release`."""

    def release(self) -> None: ...


class _NoClaim:
    def release(self) -> None:
        pass


def open_database(store: str | Path) -> Database:
    """The database of ``store``: a ``postgresql://`` URL, or the path of a SQLite file."""
    if isinstance(store, str) and store.startswith(POSTGRES_SCHEMES):
        return PostgresDatabase(store)
    return SQLiteDatabase(Path(store))


def is_postgres(store: str | Path | None) -> bool:
    return isinstance(store, str) and store.startswith(POSTGRES_SCHEMES)


def redacted(url: str) -> str:
    """``url`` without its password: what a message or a log line may show."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = (parts.username or "") + ":***"
    return urlunsplit(parts._replace(netloc=f"{user}@{netloc[-1]}"))


# -- SQLite ---------------------------------------------------------------------------------------


class SQLiteDatabase:
    """The embedded default: one file, WAL, ``synchronous=FULL``, readable by its owner only."""

    begin = "BEGIN IMMEDIATE"
    begin_snapshot = "BEGIN"  # WAL: the first read fixes the snapshot
    integer_key = "INTEGER PRIMARY KEY AUTOINCREMENT"
    real = "REAL"
    blob = "BLOB"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = str(path)
        self.vacuums = False  # whether the file can give deleted pages back: learned by the writer's connection

    def connect(self, *, writer: bool = False) -> sqlite3.Connection:
        """A connection; the writer's first makes a new file private and able to give pages back."""
        if writer:
            _create_private(str(self.path))
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        if writer:  # takes effect on a file without tables only: its deleted rows' pages can go back
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA secure_delete=ON")  # deleted rows (ForgetUser) are zeroed, not left in free pages
        if writer:
            self.vacuums = conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # INCREMENTAL: logs made since retention
        return conn

    def storage_failure(self, error: BaseException) -> bool:
        return isinstance(error, sqlite3.DatabaseError | OSError) and not isinstance(
            error, sqlite3.IntegrityError | sqlite3.ProgrammingError
        )

    def last_assigned(self, conn: Connection, table: str, column: str) -> int:
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
        return int(row[0]) if row else 0

    def give_back_pages(self, conn: Connection) -> None:
        """Return the pages deleted rows held to the file system, in the current transaction."""
        if self.vacuums:  # an older log reuses the freed pages but cannot give them back
            for _ in range(conn.execute("PRAGMA freelist_count").fetchone()[0]):
                conn.execute("PRAGMA incremental_vacuum(1)").fetchall()  # one page a statement: Python steps once

    def fold_write_ahead_log(self, conn: Connection) -> bool:
        """Copy the WAL into the file and empty it (deleted rows leave it too); False if busy."""
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return not busy

    def claim(self) -> Claim:
        return _NoClaim()  # the data directory's lock (engine.datadir) keeps its log to one process


def _create_private(path: str) -> None:
    """Make the log file readable by its owner alone (a new one is created so); SQLite gives its -wal and
    -shm files the same mode when it creates them."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        if os.stat(path).st_uid == os.getuid():
            os.chmod(path, 0o600)


# -- PostgreSQL -----------------------------------------------------------------------------------


class PostgresDatabase:
    """A PostgreSQL database (psycopg 3): every connection in autocommit, so each read sees what
    has committed and the writer's ``BEGIN``/``COMMIT`` delimit its transactions. Commits are
    durable by the server's own settings (``synchronous_commit`` on by default)."""

    begin = "BEGIN"
    begin_snapshot = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY"
    integer_key = "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"
    real = "DOUBLE PRECISION"
    blob = "BYTEA"

    def __init__(self, url: str) -> None:
        self.url = url
        self.name = redacted(url)

    def connect(self, *, writer: bool = False) -> PostgresConnection:
        import psycopg

        return PostgresConnection(psycopg.connect(self.url, autocommit=True, connect_timeout=10,
                                                  cursor_factory=psycopg.RawCursor))

    def storage_failure(self, error: BaseException) -> bool:
        import psycopg

        return isinstance(error, psycopg.OperationalError | OSError) or (
            isinstance(error, psycopg.DatabaseError) and not isinstance(
                error, psycopg.IntegrityError | psycopg.ProgrammingError | psycopg.DataError))

    def last_assigned(self, conn: Connection, table: str, column: str) -> int:
        (sequence,) = conn.execute("SELECT pg_get_serial_sequence(?, ?)", (table, column)).fetchone()
        last, called = conn.execute(f"SELECT last_value, is_called FROM {sequence}").fetchone()
        return int(last) if called else 0

    def give_back_pages(self, conn: Connection) -> None:
        pass  # autovacuum reclaims deleted rows

    def fold_write_ahead_log(self, conn: Connection) -> bool:
        return True

    def claim(self) -> Claim:
        """Hold the store's session-level advisory lock on a connection of its own: one server
        decides, logs and learns on a store at a time (it is released when the connection ends,
        a killed server's too). A second server is refused in one line."""
        from engine.errors import StartupRefused

        conn = self.connect()
        (held,) = conn.execute("SELECT pg_try_advisory_lock(?, hashtext(current_schema()))", (_SERVER_LOCK,)).fetchone()
        if not held:
            conn.close()
            raise StartupRefused(f"another recbandit server uses the store {self.name}: one server per store")
        return _Held(conn)


_SERVER_LOCK = 0x7265_6362
"""The advisory lock of the server that uses a PostgreSQL store: this ("recb") and the hash of the
schema the log is in, so that stores in other schemas of one database do not share it."""


class _Held:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def release(self) -> None:
        self._conn.close()


class PostgresConnection:
    """A psycopg connection with the methods of ``sqlite3.Connection`` the event log uses:
    ``?`` placeholders, ``executemany`` on the connection, ``total_changes`` and ``in_transaction``.

    Its cursors are psycopg's ``RawCursor``: the ``?`` become PostgreSQL's own ``$1``, ``$2``, …,
    which the server parses. (With ``%s``, psycopg parses a statement of more than 50 parameters
    in Python on every call, five times the CPU of a 100-row insert: ``server/bench_drivers.py``.)"""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self.total_changes = 0

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> Cursor:
        cursor = self._conn.execute(_placeholders(sql), parameters or None)
        if cursor.rowcount > 0 and not sql.lstrip().upper().startswith("SELECT"):
            self.total_changes += cursor.rowcount
        return cursor  # type: ignore[no-any-return]

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> Cursor:
        cursor = self._conn.cursor()
        cursor.executemany(_placeholders(sql), list(rows))
        self.total_changes += max(cursor.rowcount, 0)
        return cursor  # type: ignore[no-any-return]

    @property
    def in_transaction(self) -> bool:
        from psycopg.pq import TransactionStatus

        return self._conn.info.transaction_status != TransactionStatus.IDLE  # type: ignore[no-any-return]

    def close(self) -> None:
        self._conn.close()


@functools.lru_cache(maxsize=512)
def _placeholders(sql: str) -> str:
    """``sql`` with ``$1``, ``$2``, … for its ``?`` in order (the event log's SQL holds no other ``?``)."""
    numbers = iter(range(1, sql.count("?") + 1))
    return re.sub(r"\?", lambda _: f"${next(numbers)}", sql)
