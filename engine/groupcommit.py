"""Group commit: many callers' writes share one transaction and one durable commit.

A durable commit costs a disk flush (hundreds of microseconds). Callers hand an operation to the
single writer thread and block until the transaction holding it has committed, so every
acknowledged write is on disk, while concurrent callers share the flush.

Each SQLite call lets other threads take the interpreter lock, and getting it back can wait for
the busy event loop, so the writer makes few calls: consecutive operations of one kind that offer
``run_together(connection, operations) -> results`` (decisions, rewards) run as a few statements.

A write that fails for the storage's sake (disk full, I/O error, a damaged file, a lost database
connection: what the database's ``storage_failure`` says, never a constraint or a misuse) reaches its caller as
:class:`~engine.errors.StorageUnavailable`, and :attr:`GroupCommitWriter.healthy` turns False
until a transaction commits cleanly again; ``on_health_change`` hears of each turn.

A transaction the database rolls back to resolve a conflict with another process's (a PostgreSQL
deadlock or serialization failure: what the database's ``rolled_back`` says) is run again whole,
up to :data:`CONFLICT_RETRIES` times after a short random pause; its callers see only the commit.

One operation that raises must not fail the others. The writer first runs the whole batch in one
transaction with no savepoints (one statement per write, the cheap path). If any operation raises,
that transaction is rolled back and the batch runs again with each operation in its own savepoint:
the failing one is rolled back alone and its caller gets the exception. Operations only read and
write through the connection, so running one again after a rollback is safe.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from engine.errors import Contended, StorageUnavailable
from engine.storage import Connection

T = TypeVar("T")
Operation = Callable[[Connection], Any]
log = logging.getLogger(__name__)


RECOVERY_HOLD = 2.0
CONFLICT_RETRIES = 5
"""Times a transaction the database rolled back for a conflict with another one is run again."""


class Rejected:
    """What ``run_together`` returns for one operation it refuses without writing anything: the
    caller gets ``error`` raised, and the others of the batch still commit."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


class _Pending:
    """One submitted operation and how its caller learns the outcome.

    A blocking caller waits on ``done``, a lock held until the transaction has committed or
    failed; an asyncio caller awaits ``future``, resolved on its event loop.
    """

    __slots__ = ("operation", "done", "future", "result", "error")

    def __init__(self, operation: Operation, future: asyncio.Future[Any] | None = None) -> None:
        self.operation = operation
        self.future = future
        self.done: threading.Lock | None = None
        if future is None:
            self.done = threading.Lock()
            self.done.acquire()
        self.result: Any = None
        self.error: BaseException | None = None


class GroupCommitWriter:
    def __init__(self, connection: Connection, *, begin: str, storage_failure: Callable[[BaseException], bool],
                 rolled_back: Callable[[BaseException], bool] = lambda error: False, max_batch: int = 512) -> None:
        self._connection = connection
        self._begin = begin  # the statement that starts a write transaction
        self._storage_failure = storage_failure  # whether an error says the storage failed, not the operation
        self._rolled_back = rolled_back  # whether an error says the database undid the transaction for a conflict
        self._max_batch = max_batch
        self._queue: deque[_Pending] = deque()
        self._ready = threading.Condition(threading.Lock())
        self._closed = False
        self.healthy = True
        self._failed_at = -RECOVERY_HOLD
        self.on_health_change: Callable[[bool], None] | None = None
        self.on_commit: Callable[[float, int], None] | None = None  # seconds and operations of each transaction
        self._thread = threading.Thread(target=self._run, name="eventlog-writer", daemon=True)
        self._thread.start()

    def submit(self, operation: Callable[[Connection], T]) -> T:
        """Run ``operation`` in the next transaction; return its result once committed."""
        pending = _Pending(operation)
        self._enqueue(pending)
        assert pending.done is not None
        pending.done.acquire()
        if pending.error is not None:
            raise pending.error
        return pending.result  # type: ignore[no-any-return]

    async def submit_async(self, operation: Callable[[Connection], T]) -> T:
        """:meth:`submit` for a coroutine: the event loop runs on while the transaction commits."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._enqueue(_Pending(operation, future))
        return await future

    def post(self, operation: Callable[[Connection], object]) -> None:
        """Run ``operation`` in a coming transaction, after every operation submitted before it; nobody waits.

        A failure is logged; the caller has gone on.
        """
        future = asyncio.get_running_loop().create_future()
        future.add_done_callback(_log_failure)
        self._enqueue(_Pending(operation, future))

    def _enqueue(self, pending: _Pending) -> None:
        with self._ready:
            if self._closed:
                raise RuntimeError("event log is closed")
            self._queue.append(pending)
            if len(self._queue) == 1:
                self._ready.notify()

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
        changes = conn.total_changes
        began = time.perf_counter()
        try:
            for attempt in range(CONFLICT_RETRIES + 1):
                try:
                    if not self._run_plain(conn, batch):
                        self._run_with_savepoints(conn, batch)
                    conn.execute("COMMIT")
                    break
                except Exception as error:
                    if not self._rolled_back(error):
                        raise
                    if attempt == CONFLICT_RETRIES:
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                        raise Contended() from error
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    log.info("a transaction conflicted with another process's and runs again: %s", error)
                    time.sleep(random.uniform(0.001, 0.02) * (attempt + 1))
        except BaseException as error:
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except Exception:
                pass  # the transaction is gone with the storage; the error below says so
            for pending in batch:
                pending.result, pending.error = None, error
        try:
            self._note_health(batch, wrote=conn.total_changes > changes)
            if self.on_commit is not None:
                self.on_commit(time.perf_counter() - began, len(batch))
        except Exception:  # never let health tracking or metrics stop the writer: its callers wait on it
            log.exception("storage health tracking failed")
        waiting: dict[asyncio.AbstractEventLoop, list[_Pending]] = {}
        for pending in batch:
            if pending.done is not None:
                pending.done.release()
            else:
                assert pending.future is not None
                waiting.setdefault(pending.future.get_loop(), []).append(pending)
        for loop, resolved in waiting.items():  # one wake-up per event loop and batch
            try:
                loop.call_soon_threadsafe(_resolve, resolved)
            except RuntimeError:  # the loop has closed: nobody awaits these any more
                pass

    def _note_health(self, batch: list[_Pending], *, wrote: bool) -> None:
        """Turn storage failures into :class:`StorageUnavailable` for their callers, and track health:
        unhealthy at a failure, healthy again when a batch that wrote something commits
        :data:`RECOVERY_HOLD` seconds or more after the last failure (so that health does not flap
        while small writes fit and large ones do not)."""
        failure = None
        for pending in batch:
            if isinstance(pending.error, Contended):
                continue  # the store works: these writes lost to others', and their callers retry
            if pending.error is not None and self._storage_failure(pending.error):
                failure = pending.error
                pending.error = StorageUnavailable()
        now = time.monotonic()
        if failure is not None:
            self._failed_at = now
        healthy = failure is None
        if healthy == self.healthy or (healthy and not (wrote and now - self._failed_at >= RECOVERY_HOLD)):
            return
        self.healthy = healthy
        if failure is not None:
            log.error("the event log cannot be written: %s", failure)
        else:
            log.info("the event log is writable again")
        if self.on_health_change is not None:
            self.on_health_change(healthy)

    def _run_plain(self, conn: Connection, batch: list[_Pending]) -> bool:
        """Run every operation in one transaction; False (and rolled back) if any raised."""
        conn.execute(self._begin)
        try:
            i = 0
            while i < len(batch):
                together = getattr(batch[i].operation, "run_together", None)
                if together is None:
                    batch[i].result, batch[i].error = batch[i].operation(conn), None
                    i += 1
                    continue
                j = i + 1
                while j < len(batch) and getattr(batch[j].operation, "run_together", None) is together:
                    j += 1
                results = together(conn, [pending.operation for pending in batch[i:j]])
                for pending, result in zip(batch[i:j], results, strict=True):
                    if isinstance(result, Rejected):
                        pending.result, pending.error = None, result.error
                    else:
                        pending.result, pending.error = result, None
                i = j
        except Exception as error:
            if self._rolled_back(error):
                raise  # the whole transaction runs again
            if conn.in_transaction:  # SQLite may have rolled back already (a full disk does)
                conn.execute("ROLLBACK")
            return False
        return True

    def _run_with_savepoints(self, conn: Connection, batch: list[_Pending]) -> None:
        conn.execute(self._begin)
        for pending in batch:
            conn.execute("SAVEPOINT op")
            try:
                pending.result, pending.error = pending.operation(conn), None
            except Exception as error:  # handed to the caller, who re-raises it
                if self._rolled_back(error):
                    raise  # the whole transaction runs again
                conn.execute("ROLLBACK TO SAVEPOINT op")
                pending.result, pending.error = None, error
            conn.execute("RELEASE SAVEPOINT op")


def _log_failure(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("a posted event log write failed: %s", future.exception())


def _resolve(batch: list[_Pending]) -> None:
    for pending in batch:
        future = pending.future
        if future is None or future.done():  # a cancelled caller
            continue
        if pending.error is not None:
            future.set_exception(pending.error)
        else:
            future.set_result(pending.result)
