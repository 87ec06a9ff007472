"""User portraits in the store (table ``portraits``), and the cache serving reads them from.

A row per user: ``visits`` (the dynamic state, written as decisions commit) and ``history``
(interests and RFM, written as rewards arrive), each a small JSON array (:mod:`engine.portraits`),
``updated``, when either was last written, and ``history_ts``, the time of the latest reward in
``history``. ``visits`` and ``history`` are written apart, so a decision's write never undoes a reward's:

- a committed decision upserts its user's ``visits``, computed from the portrait it was decided
  with (a blind write: two processes deciding for one user at once keep the later's);
- a new reward reads the user's row under the row's lock (a new user's row is inserted blank
  first, so that it has a lock to wait on), applies :func:`engine.portraits.rewarded`
  and writes ``history`` back, before Feedback returns.

Every write takes the next number of the store's counter of portrait writes (``seq``, in ``meta``)
in its transaction; the counter's row stays locked until the transaction ends, so the numbers
commit in order. A write is skipped when its decision is gone (ForgetUser deleted it meanwhile).

Decisions read the portrait from a :class:`~engine.cache.BoundedCache` that every write of this
process feeds; a miss reads the row (or its absence) from the store once. Processes that share the
store with others (role serve) take in the rows numbered after the last they saw when they look for
catalog changes, every 0.5 s (:meth:`PortraitStore.follow`, :meth:`engine.core.Engine._follow_catalog`).
Rows that leave the store (ForgetUser, retention) leave the cache at once here, and at the next look
in the other processes.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable

from engine.cache import BoundedCache
from engine.groupcommit import GroupCommitWriter
from engine.logwrites import SET_META
from engine.portraits import (NO_PORTRAIT, Portrait, PortraitConfig, history_from_json, history_to_json,
                              rewarded, visited, visits_from_json, visits_to_json)
from engine.records import Reward
from engine.storage import Connection
from engine.types import Features

_CACHED = (1 << 17, 64 << 20)
"""Portraits kept in memory (entries, bytes): the cache starts over when either is reached."""
_NEXT_SEQ = ("INSERT INTO meta (key, value) VALUES ('portraits_seq', '1') ON CONFLICT (key)"
             " DO UPDATE SET value = CAST(CAST(meta.value AS BIGINT) + 1 AS TEXT) RETURNING value")
_UPSERT = ("INSERT INTO portraits (user_id, visits, history, updated, history_ts, seq) VALUES (?, ?, ?, ?, ?, ?)"
           " ON CONFLICT (user_id) DO UPDATE SET {columns}, updated = excluded.updated, seq = excluded.seq")
_VISITS, _HISTORY = "visits = excluded.visits", "history = excluded.history, history_ts = excluded.history_ts"


class PortraitStore:
    """The portraits of one store, through its log's writer (``writer``) and reader connections (``reader``)."""

    def __init__(self, writer: GroupCommitWriter, reader: Callable[[], Connection], update_lock: str,
                 config: PortraitConfig = PortraitConfig()) -> None:
        self._writer = writer
        self._reader = reader
        self._lock = update_lock
        self.config = config
        self._cache: BoundedCache[str, Portrait] = BoundedCache(*_CACHED)
        self._cache_lock = threading.Lock()  # a write to the cache that depends on what it held
        self._generation = 0  # counts the times portraits left the store: a read from before is stale
        self._forgets: str | None = None  # the ForgetUser mark follow() saw last
        self._followed = int(reader().execute("SELECT COALESCE(MAX(seq), 0) FROM portraits").fetchone()[0])
        """The newest ``seq`` follow() took in; older rows are read on a miss."""

    def get(self, user_id: str) -> Portrait:
        """The user's portrait: from the cache, else the store (an absent row: :data:`NO_PORTRAIT`)."""
        found = self._cache.get(user_id)
        if found is None:
            generation = self._generation
            row = self._reader().execute("SELECT visits, history FROM portraits WHERE user_id = ?",
                                         (user_id,)).fetchone()
            found = _portrait(*row) if row else NO_PORTRAIT
            self._remember(user_id, found, generation)
        return found

    def visit(self, user_id: str, portrait: Portrait, ts: float, context: Features,
              event_id: str | None = None) -> None:
        """Record a committed decision (``event_id``) of ``user_id`` at ``ts``, decided with ``portrait``.
        If the cache holds another portrait of the user by now (a reward, a ForgetUser, another
        process's write came in since it was read), the visit builds on that one. The write is
        skipped if the decision is gone by then. In a coroutine the write is queued and nobody
        waits for it; elsewhere it commits before this returns."""
        with self._cache_lock:
            current = self._cache.get(user_id)
            base = portrait if current is None else current
            now = Portrait(visited(base.visits, ts, context, self.config), base.history)
            if current is not None:  # else it left the cache meanwhile: the next read takes the store's
                self._put(user_id, now)
        write = self._written(event_id, user_id, (visits_to_json(now.visits), "", time.time(), 0.0), _VISITS)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            self._writer.submit(write)
            return
        self._writer.post(write)

    def reward(self, user_id: str, reward: Reward, item_features: Features) -> None:
        """Write a new reward of the item of ``item_features`` to ``user_id``'s history; it serves
        from when this returns. Nothing is written if the reward's decision is gone."""
        generation = self._generation
        self._remember(user_id, self._writer.submit(self._rewarded(user_id, reward, item_features)), generation)

    async def reward_async(self, user_id: str, reward: Reward, item_features: Features) -> None:
        """:meth:`reward` for a coroutine."""
        generation = self._generation
        written = await self._writer.submit_async(self._rewarded(user_id, reward, item_features))
        self._remember(user_id, written, generation)

    def _rewarded(self, user_id: str, reward: Reward,
                  item_features: Features) -> Callable[[Connection], Portrait | None]:
        """The read-modify-write of the user's history, under the row's lock: the portrait as
        written (None: the decision is gone)."""

        def write(conn: Connection) -> Portrait | None:
            if not self._decided(conn, reward.event_id):
                return None
            seq = _next_seq(conn)  # before any portrait's lock, in every transaction: no deadlock
            conn.execute("INSERT INTO portraits (user_id, visits, history, updated, history_ts, seq)"
                         " VALUES (?, '', '', ?, 0, ?) ON CONFLICT DO NOTHING", (user_id, time.time(), seq))
            row = conn.execute(f"SELECT visits, history FROM portraits WHERE user_id = ?{self._lock}",
                               (user_id,)).fetchone()
            before = _portrait(*row)
            history = rewarded(before.history, reward.ts, reward.label, reward.value, item_features, self.config)
            if history is before.history:
                return before
            conn.execute(_UPSERT.format(columns=_HISTORY),
                         (user_id, "", history_to_json(history), time.time(), history.ts, seq))
            return Portrait(before.visits, history)

        return write

    def _written(self, event_id: str | None, user_id: str, values: tuple[object, ...],
                 columns: str) -> Callable[[Connection], None]:
        """Write ``columns`` (visits or history) of a user's row, creating the row if needed; if the
        decision ``event_id`` is gone, nothing, and the user leaves the cache."""
        sql = _UPSERT.format(columns=columns)

        def write(conn: Connection) -> None:
            if event_id is None or self._decided(conn, event_id):
                conn.execute(sql, (user_id, *values, _next_seq(conn)))
            else:  # what the cache took from the decision goes with it
                self._drop([user_id])

        return write

    def _decided(self, conn: Connection, event_id: str) -> bool:
        """Whether the decision is still logged; it stays so until the transaction ends (a ForgetUser waits)."""
        found = conn.execute(f"SELECT 1 FROM decisions WHERE event_id = ?{self._lock}", (event_id,)).fetchone()
        return found is not None

    def follow(self) -> int:
        """Take in the portraits written since the last look, by any process; returns how many. A
        ForgetUser or retention pass that deleted portraits, of any process, since the last look
        empties the cache (deletes are rare)."""
        conn = self._reader()
        forgets = conn.execute("SELECT value FROM meta WHERE key = 'portraits_forgotten'").fetchone()
        if forgets is not None and forgets[0] != self._forgets:
            self._forgets = forgets[0]
            with self._cache_lock:
                self._generation += 1
                self._cache.clear()
        generation = self._generation
        rows = conn.execute("SELECT user_id, visits, history, seq FROM portraits WHERE seq > ? ORDER BY seq",
                            (self._followed,)).fetchall()
        for user_id, visits, history, seq in rows:
            self._remember(user_id, _portrait(visits, history), generation)
            self._followed = max(self._followed, int(seq))
        return len(rows)

    def prune(self, before: float, limit: int) -> int:
        """Retention: delete up to ``limit`` portraits last written before ``before``, and empty the
        history of up to ``limit`` others whose last reward came before it; returns how many were deleted."""

        def delete(conn: Connection) -> tuple[list[str], list[str]]:
            seq = _next_seq(conn)
            gone = [u for (u,) in conn.execute(
                "DELETE FROM portraits WHERE user_id IN (SELECT user_id FROM portraits WHERE updated < ? LIMIT ?)"
                " RETURNING user_id", (before, limit)).fetchall()]
            if gone:
                conn.execute(SET_META, ("portraits_forgotten", os.urandom(8).hex()))
            faded = [u for (u,) in conn.execute(
                "UPDATE portraits SET history = '', history_ts = 0, seq = ? WHERE user_id IN"
                " (SELECT user_id FROM portraits WHERE history_ts < ? AND history <> '' LIMIT ?) RETURNING user_id",
                (seq, before, limit)).fetchall()]
            return gone, faded

        gone, faded = self._writer.submit(delete)
        self._drop(gone + faded)
        return len(gone)

    def forgotten(self, user_id: str) -> None:
        """The user's row left the store (:meth:`engine.eventlog.EventLog.forget_user`): forget it here too."""
        with self._cache_lock:
            self._generation += 1
            self._put(user_id, NO_PORTRAIT)

    def _drop(self, user_ids: list[str]) -> None:
        if user_ids:
            with self._cache_lock:
                self._generation += 1
                for user_id in user_ids:
                    self._cache.pop(user_id)

    def _remember(self, user_id: str, portrait: Portrait | None, generation: int) -> None:
        """Cache ``portrait``, read or written since ``generation``, unless portraits left the store meanwhile."""
        if portrait is None:
            return
        with self._cache_lock:
            if generation == self._generation:
                self._put(user_id, portrait)

    def _put(self, user_id: str, portrait: Portrait) -> None:
        interests = portrait.history.interests
        self._cache.put(user_id, portrait, 200 + len(user_id) + len(portrait.visits.channel)
                        + sum(48 + len(key) for key, _ in interests))


def _portrait(visits: str, history: str) -> Portrait:
    return Portrait(visits_from_json(visits), history_from_json(history))


def _next_seq(conn: Connection) -> int:
    """The next number of the portrait writes' counter; its row stays locked until the transaction ends."""
    return int(conn.execute(_NEXT_SEQ).fetchone()[0])


def forget_portrait(conn: Connection, user_id: str) -> int:
    """Within ForgetUser's transaction: delete the user's portrait and, if there was one, mark the
    forget for the other processes' :meth:`PortraitStore.follow`; returns 1 if there was a portrait."""
    deleted = int(conn.execute("DELETE FROM portraits WHERE user_id = ?", (user_id,)).rowcount)
    if deleted:
        conn.execute(SET_META, ("portraits_forgotten", os.urandom(8).hex()))
    return deleted
