"""Group commit: many callers' writes share one SQLite transaction and one fsync.

A durable commit costs a disk flush (hundreds of microseconds). Callers hand an operation to the
single writer thread and block until the transaction holding it has committed, so every
acknowledged write is on disk, while concurrent callers share the flush. Each operation runs in
its own savepoint: one that raises is rolled back alone and its caller gets the exception.
"""

from __future__ import annotations

import queue
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")
Operation = Callable[[sqlite3.Connection], Any]


class GroupCommitWriter:
    def __init__(self, connection: sqlite3.Connection, *, max_batch: int = 512) -> None:
        self._connection = connection
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[tuple[Operation, Future[Any]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="eventlog-writer", daemon=True)
        self._closed = False
        self._thread.start()

    def submit(self, operation: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``operation`` in the next transaction; return its result once committed."""
        if self._closed:
            raise RuntimeError("event log is closed")
        future: Future[T] = Future()
        self._queue.put((operation, future))
        return future.result()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join()

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < self._max_batch:
                try:
                    entry = self._queue.get_nowait()
                except queue.Empty:
                    break
                if entry is None:
                    stop = True
                    break
                batch.append(entry)
            self._commit(batch)
            if stop:
                return

    def _commit(self, batch: list[tuple[Operation, Future[Any]]]) -> None:
        conn = self._connection
        outcomes: list[tuple[Future[Any], Any, BaseException | None]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for operation, future in batch:
                conn.execute("SAVEPOINT op")
                try:
                    result = operation(conn)
                except BaseException as error:  # handed to the caller, who re-raises it
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    outcomes.append((future, None, error))
                else:
                    conn.execute("RELEASE op")
                    outcomes.append((future, result, None))
            conn.execute("COMMIT")
        except BaseException as error:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for _, future in batch:
                future.set_exception(error)
            return
        for future, result, error in outcomes:
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)
