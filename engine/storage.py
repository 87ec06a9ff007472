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

import fcntl
import functools
import os
import re
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from engine.errors import StorageUnavailable

POSTGRES_SCHEMES = ("postgresql://", "postgres://")
CONNECT_TIMEOUT = 3
"""Seconds a PostgreSQL connection may take: while the database is away, calls fail this fast at most."""


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
    schema_lock: str
    """A statement that, inside a transaction, keeps other processes out of the schema until it ends."""
    share_lock: str
    """What a ``SELECT`` of a row ends with to keep other transactions from changing it until this
    one ends ("" where write transactions run one at a time anyway)."""
    update_lock: str
    """What a ``SELECT`` of a row this transaction will update ends with ("" where write transactions
    run one at a time anyway): a second read-modify-write of the row waits for this one."""
    integer_key: str
    """The type of a key that numbers rows in insertion order (the outcomes' ``seq``, catalog versions)."""
    real: str
    blob: str

    def connect(self, *, writer: bool = False, read_only: bool = False) -> Connection:
        """A connection in autocommit; the ``writer``'s creates the store, a ``read_only`` one cannot write."""
    def storage_failure(self, error: BaseException) -> bool: ...
    def rolled_back(self, error: BaseException) -> bool:
        """Whether ``error`` says the database undid the transaction to resolve a conflict with
        another (a deadlock, a serialization failure): running it again may well succeed."""
    def last_assigned(self, conn: Connection, table: str, column: str) -> int: ...
    def give_back_pages(self, conn: Connection) -> None: ...
    def fold_write_ahead_log(self, conn: Connection) -> bool: ...
    def try_lock(self, name: str) -> Claim | None:
        """Hold the store's lock ``name`` (one process at a time, across machines for PostgreSQL),
        or None when another process holds it. A lock ends with its process, killed or not."""


class Claim(Protocol):
    """A lock on the store, held until :meth:`release`."""

    def held(self) -> bool:
        """Whether it is still held (a PostgreSQL lock ends with its connection, which may be cut)."""

    def release(self) -> None: ...


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
    share_lock = ""  # BEGIN IMMEDIATE: one writer at a time, across processes too
    update_lock = ""  # the same
    schema_lock = "SELECT 1"  # the same
    integer_key = "INTEGER PRIMARY KEY AUTOINCREMENT"
    real = "REAL"
    blob = "BLOB"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = str(path)
        self.vacuums = False  # whether the file can give deleted pages back: learned by the writer's connection

    def connect(self, *, writer: bool = False, read_only: bool = False) -> sqlite3.Connection:
        """A connection; the writer's first makes a new file private and able to give pages back."""
        if read_only:
            uri = f"{self.path.resolve().as_uri()}?mode=ro"
            return sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=30)
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

    def rolled_back(self, error: BaseException) -> bool:
        return False  # one writer at a time (BEGIN IMMEDIATE): a busy file waits out its timeout instead

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

    def try_lock(self, name: str) -> Claim | None:
        """An exclusive ``flock`` on ``<log file>.<name>.lock`` beside the log."""
        fd = os.open(f"{self.path}.{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return _FileLock(fd)


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
    share_lock = " FOR SHARE"
    update_lock = " FOR UPDATE"
    schema_lock = "SELECT pg_advisory_xact_lock(hashtext('recbandit:schema'), hashtext(current_schema()))"
    integer_key = "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"
    real = "DOUBLE PRECISION"
    blob = "BYTEA"

    def __init__(self, url: str) -> None:
        self.url = url
        self.name = redacted(url)

    def connect(self, *, writer: bool = False, read_only: bool = False) -> PostgresConnection:
        return PostgresConnection(functools.partial(self._open, read_only))

    def _open(self, read_only: bool = False) -> Any:
        import psycopg

        conn = psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT,
                               cursor_factory=psycopg.RawCursor)
        if read_only:
            conn.execute("SET default_transaction_read_only = on")
        return conn

    def storage_failure(self, error: BaseException) -> bool:
        import psycopg

        return isinstance(error, StorageUnavailable | psycopg.OperationalError | OSError) or (
            isinstance(error, psycopg.DatabaseError) and not isinstance(
                error, psycopg.IntegrityError | psycopg.ProgrammingError | psycopg.DataError))

    def rolled_back(self, error: BaseException) -> bool:
        return _undone_for_a_conflict(error)

    def last_assigned(self, conn: Connection, table: str, column: str) -> int:
        (sequence,) = conn.execute("SELECT pg_get_serial_sequence(?, ?)", (table, column)).fetchone()
        last, called = conn.execute(f"SELECT last_value, is_called FROM {sequence}").fetchone()
        return int(last) if called else 0

    def give_back_pages(self, conn: Connection) -> None:
        pass  # autovacuum reclaims deleted rows

    def fold_write_ahead_log(self, conn: Connection) -> bool:
        return True

    def try_lock(self, name: str) -> Claim | None:
        """A session advisory lock, keyed by ``name`` and the store's schema (stores in other schemas
        of one database do not share it), held on a connection of its own: the server releases it
        when that connection ends, a killed process's too."""
        conn = self.connect()
        (held,) = conn.execute("SELECT pg_try_advisory_lock(hashtext(?), hashtext(current_schema()))",
                               (f"recbandit:{name}",)).fetchone()
        if not held:
            conn.close()
            return None
        return _HeldConnection(conn)


class _HeldConnection:
    def __init__(self, conn: PostgresConnection) -> None:
        self._conn = conn

    def held(self) -> bool:
        return self._conn.ping()

    def release(self) -> None:
        self._conn.close()


class _FileLock:
    def __init__(self, fd: int) -> None:
        self._fd = fd

    def held(self) -> bool:
        return True  # until the descriptor is closed
    def release(self) -> None:
        os.close(self._fd)  # closing the descriptor releases its flock


class PostgresConnection:
    """A psycopg connection with the methods of ``sqlite3.Connection`` the event log uses:
    ``?`` placeholders, ``executemany`` on the connection, ``total_changes`` and ``in_transaction``.

    Its cursors are psycopg's ``RawCursor``: the ``?`` become PostgreSQL's own ``$1``, ``$2``, …,
    which the server parses. (With ``%s``, psycopg parses a statement of more than 50 parameters
    in Python on every call, five times the CPU of a 100-row insert: ``server/bench_drivers.py``.)

    A connection the server ended (a restart, ``pg_terminate_backend``, a network cut) fails the
    statement it was running, as a storage failure; the next statement outside a transaction
    connects again, so the log recovers without a restart. Never inside one: the rest of a
    transaction must not commit on its own on a new connection.
    """

    def __init__(self, open_connection: Callable[[], Any]) -> None:
        self._open = open_connection
        with _away_as_unavailable():
            self._conn = open_connection()
        self._transaction = False  # between our BEGIN and COMMIT/ROLLBACK, whatever the connection's state
        self.total_changes = 0

    def _live(self, sql: str) -> Any:
        word = sql.lstrip()[:8].upper()
        if not self._transaction and (self._conn.closed or self._conn.broken):
            self._conn.close()
            self._conn = self._open()
        if word.startswith("BEGIN"):
            self._transaction = True
        elif word.startswith(("COMMIT", "ROLLBACK")) and "ROLLBACK TO" not in sql.upper():
            self._transaction = False
        return self._conn

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> Cursor:
        import psycopg

        with _away_as_unavailable(self._transaction):
            try:
                cursor = self._live(sql).execute(_placeholders(sql), parameters or None)
            except psycopg.OperationalError:
                if self._transaction or not self._conn.broken or not sql.lstrip()[:6].upper() == "SELECT":
                    raise
                cursor = self._live(sql).execute(_placeholders(sql), parameters or None)  # a read found the connection cut: once more
        if cursor.rowcount > 0 and not sql.lstrip().upper().startswith("SELECT"):
            self.total_changes += cursor.rowcount
        return cursor  # type: ignore[no-any-return]

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> Cursor:
        with _away_as_unavailable(self._transaction):
            cursor = self._live(sql).cursor()
            cursor.executemany(_placeholders(sql), list(rows))
        self.total_changes += max(cursor.rowcount, 0)
        return cursor  # type: ignore[no-any-return]

    def ping(self) -> bool:
        """Whether this very connection still answers (never connecting again: a lock it held would be gone)."""
        try:
            self._conn.execute("SELECT 1").fetchone()
            return True
        except Exception:
            return False

    @property
    def in_transaction(self) -> bool:
        from psycopg.pq import TransactionStatus

        return self._conn.info.transaction_status != TransactionStatus.IDLE  # type: ignore[no-any-return]

    def close(self) -> None:
        self._conn.close()


@contextmanager
def _away_as_unavailable(in_transaction: bool = False) -> Iterator[None]:
    """A database that is away (a lost connection, one refused): :class:`StorageUnavailable`, which
    callers get as ``UNAVAILABLE`` and health turns on, never an internal error. A conflict that
    undid a write transaction stays itself: the writer runs the transaction again."""
    import psycopg

    try:
        yield
    except psycopg.OperationalError as error:
        if in_transaction and _undone_for_a_conflict(error):
            raise
        raise StorageUnavailable() from error


def _undone_for_a_conflict(error: BaseException) -> bool:
    """SQLSTATE class 40, transaction rollback: a deadlock (40P01) or a serialization failure (40001).
    (psycopg's ``DeadlockDetected`` is not a ``TransactionRollback``: the class is what tells.)"""
    return str(getattr(error, "sqlstate", None) or "").startswith("40")


@functools.lru_cache(maxsize=512)
def _placeholders(sql: str) -> str:
    """``sql`` with ``$1``, ``$2``, … for its ``?`` in order (the event log's SQL holds no other ``?``)."""
    numbers = iter(range(1, sql.count("?") + 1))
    return re.sub(r"\?", lambda _: f"${next(numbers)}", sql)
