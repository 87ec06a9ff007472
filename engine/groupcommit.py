"""Group commit: many callers' writes share one SQLite transaction and one fsync.

A durable commit costs a disk flush (hundreds of microseconds). Callers hand an operation to the
single writer thread and block until the transaction holding it has committed, so every
acknowledged write is on disk, while concurrent callers share the flush.

One operation that raises must not fail the others. The writer first runs the whole batch in one
transaction with no savepoints (one statement per write, the cheap path). If any operation raises,
that transaction is rolled back and the batch runs again with each operation in its own savepoint:
the failing one is rolled back alone and its caller gets the exception. Operations only read and
write through the connection, so running one again after a rollback is safe.
"""

from __future__ import annotations

import sqlite3
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
Operation = Callable[[sqlite3.Connection], Any]


class _Pending:
    """One submitted operation; ``done`` is held until its transaction has committed or failed."""

    __slots__ = ("operation", "done", "result", "error")

    def __init__(self, operation: Operation) -> None:
        self.operation = operation
        self.done = threading.Lock()
        self.done.acquire()
        self.result: Any = None
        self.error: BaseException | None = None


class GroupCommitWriter:
    def __init__(self, connection: sqlite3.Connection, *, max_batch: int = 512) -> None:
        self._connection = connection
        self._max_batch = max_batch
        self._queue: deque[_Pending] = deque()
        self._ready = threading.Condition(threading.Lock())
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="eventlog-writer", daemon=True)
        self._thread.start()

    def submit(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``operation`` in the next transaction; return its result once committed."""
        pending = _Pending(operation)
        with self._ready:
            if self._closed:
                raise RuntimeError("event log is closed")
            self._queue.append(pending)
            if len(self._queue) == 1:
                self._ready.notify()
        pending.done.acquire()
        if pending.error is not None:
            raise pending.error
        return pending.result  # type: ignore[no-any-return]

    def close(self) -> None:
        with self._ready:
            if self._closed:
                return
            self._closed = True
            self._ready.notify()
        self._thread.join()

    def _run(self) -> None:
        queue = self._queue
        while True:
            with self._ready:
                while not queue and not self._closed:
                    self._ready.wait()
                if not queue:
                    return  # closed and drained
                batch = [queue.popleft() for _ in range(min(len(queue), self._max_batch))]
            self._commit(batch)

    def _commit(self, batch: list[_Pending]) -> None:
        conn = self._connection
        try:
            if not self._run_plain(conn, batch):
                self._run_with_savepoints(conn, batch)
            conn.execute("COMMIT")
        except BaseException as error:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for pending in batch:
                pending.result, pending.error = None, error
        for pending in batch:
            pending.done.release()

    @staticmethod
    def _run_plain(conn: sqlite3.Connection, batch: list[_Pending]) -> bool:
        """Run every operation in one transaction; False (and rolled back) if any raised."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            for pending in batch:
                pending.result = pending.operation(conn)
        except Exception:
            conn.execute("ROLLBACK")
            return False
        return True

    @staticmethod
    def _run_with_savepoints(conn: sqlite3.Connection, batch: list[_Pending]) -> None:
        conn.execute("BEGIN IMMEDIATE")
        for pending in batch:
            conn.execute("SAVEPOINT op")
            try:
                pending.result, pending.error = pending.operation(conn), None
            except Exception as error:  # handed to the caller, who re-raises it
                conn.execute("ROLLBACK TO op")
                pending.result, pending.error = None, error
            conn.execute("RELEASE op")
