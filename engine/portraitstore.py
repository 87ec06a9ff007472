"""User portraits in the store (table ``portraits``), and the cache serving reads them from.

A row per user: ``visits`` (the dynamic state, written as decisions commit) and ``history``
(interests and RFM, written as rewards arrive), each a small JSON array (:mod:`engine.portraits`),
and ``updated``, when either was last written. The two columns are written apart, so a decision's
write never undoes a reward's:

- a committed decision upserts its user's ``visits``, computed from the portrait it was decided
  with (a blind write: two processes deciding for one user at once keep the later's);
- a new reward reads the user's row under the row's lock, applies :func:`engine.portraits.rewarded`
  and writes ``history`` back, before Feedback returns.

Decisions read the portrait from a :class:`~engine.cache.BoundedCache` that every write of this
process feeds; a miss reads the row (or its absence) from the store once. Processes that share the
store with others (role serve) take in the rows the others wrote when they look for catalog changes,
every 0.5 s (:meth:`PortraitStore.follow`, :meth:`engine.core.Engine._follow_catalog`).
"""

from __future__ import annotations

import asyncio
import os
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

FOLLOW_OVERLAP = 2.0
"""Seconds each look reaches back before the newest write it saw: a write whose transaction took that
long to commit (or a writer's clock that far behind) is still taken in."""
_CACHED = (1 << 17, 64 << 20)
"""Portraits kept in memory (entries, bytes): the cache starts over when either is reached."""
_UPSERT = ("INSERT INTO portraits (user_id, visits, history, updated) VALUES (?, ?, ?, ?) ON CONFLICT (user_id)"
           " DO UPDATE SET {column} = excluded.{column}, updated = excluded.updated")


class PortraitStore:
    """The portraits of one store, through its log's writer (``writer``) and reader connections (``reader``)."""

    def __init__(self, writer: GroupCommitWriter, reader: Callable[[], Connection], update_lock: str,
                 config: PortraitConfig = PortraitConfig()) -> None:
        self._writer = writer
        self._reader = reader
        self._lock = update_lock
        self.config = config
        self._cache: BoundedCache[str, Portrait] = BoundedCache(*_CACHED)
        self._forgets: str | None = None  # the ForgetUser mark follow() saw last
        self._followed = time.time()  # the newest ``updated`` follow() saw; older rows are read on a miss

    def get(self, user_id: str) -> Portrait:
        """The user's portrait: from the cache, else the store (an absent row: :data:`NO_PORTRAIT`)."""
        found = self._cache.get(user_id)
        if found is None:
            row = self._reader().execute("SELECT visits, history FROM portraits WHERE user_id = ?",
                                         (user_id,)).fetchone()
            found = _portrait(*row) if row else NO_PORTRAIT
            self._remember(user_id, found)
        return found

    def visit(self, user_id: str, portrait: Portrait, ts: float, context: Features) -> None:
        """Record a committed decision of ``user_id`` at ``ts``, decided with ``portrait``. In a
        coroutine the write is queued and nobody waits for it; elsewhere it commits before this returns."""
        now = Portrait(visited(portrait.visits, ts, context, self.config), portrait.history)
        self._remember(user_id, now)
        row = (user_id, visits_to_json(now.visits), "", time.time())
        write = _upsert(row, "visits")
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            self._writer.submit(write)
            return
        self._writer.post(write)

    def reward(self, user_id: str, reward: Reward, item_features: Features) -> None:
        """Write a new reward of the item of ``item_features`` to ``user_id``'s history; it serves
        from when this returns."""
        self._remember(user_id, self._writer.submit(self._rewarded(user_id, reward, item_features)))

    async def reward_async(self, user_id: str, reward: Reward, item_features: Features) -> None:
        """:meth:`reward` for a coroutine."""
        self._remember(user_id, await self._writer.submit_async(self._rewarded(user_id, reward, item_features)))

    def _rewarded(self, user_id: str, reward: Reward, item_features: Features) -> Callable[[Connection], Portrait]:
        """The read-modify-write of the user's history, under the row's lock: the portrait as written."""

        def write(conn: Connection) -> Portrait:
            row = conn.execute(f"SELECT visits, history FROM portraits WHERE user_id = ?{self._lock}",
                               (user_id,)).fetchone()
            before = _portrait(*row) if row else NO_PORTRAIT
            history = rewarded(before.history, reward.ts, reward.label, reward.value, item_features, self.config)
            if history is before.history:
                return before
            _upsert((user_id, visits_to_json(before.visits), history_to_json(history), time.time()), "history")(conn)
            return Portrait(before.visits, history)

        return write

    def follow(self) -> int:
        """Take in the portraits written since the last look, by any process; returns how many. A
        ForgetUser of any process since the last look empties the cache (forgets are rare)."""
        conn = self._reader()
        forgets = conn.execute("SELECT value FROM meta WHERE key = 'portraits_forgotten'").fetchone()
        if forgets is not None and forgets[0] != self._forgets:
            self._forgets = forgets[0]
            self._cache.clear()
        rows = conn.execute("SELECT user_id, visits, history, updated FROM portraits WHERE updated > ?",
                            (self._followed - FOLLOW_OVERLAP,)).fetchall()
        for user_id, visits, history, updated in rows:
            self._remember(user_id, _portrait(visits, history))
            self._followed = max(self._followed, float(updated))
        return len(rows)

    def prune(self, before: float, limit: int) -> int:
        """Delete up to ``limit`` portraits last written before ``before`` (retention); returns how many."""

        def delete(conn: Connection) -> int:
            return int(conn.execute("DELETE FROM portraits WHERE user_id IN"
                                    " (SELECT user_id FROM portraits WHERE updated < ? LIMIT ?)", (before, limit)).rowcount)

        return self._writer.submit(delete)

    def forgotten(self, user_id: str) -> None:
        """The user's row left the store (:meth:`engine.eventlog.EventLog.forget_user`): forget it here too."""
        self._remember(user_id, NO_PORTRAIT)

    def _remember(self, user_id: str, portrait: Portrait) -> None:
        interests = portrait.history.interests
        self._cache.put(user_id, portrait, 200 + len(user_id) + len(portrait.visits.channel)
                        + sum(48 + len(key) for key, _ in interests))


def _portrait(visits: str, history: str) -> Portrait:
    return Portrait(visits_from_json(visits), history_from_json(history))


def _upsert(row: tuple[object, ...], column: str) -> Callable[[Connection], None]:
    """Write ``column`` (visits or history) of a user's row, creating the row if needed."""
    sql = _UPSERT.format(column=column)

    def write(conn: Connection) -> None:
        conn.execute(sql, row)

    return write


def forget_portrait(conn: Connection, user_id: str) -> int:
    """Within ForgetUser's transaction: delete the user's portrait, and mark the forget for the
    other processes' :meth:`PortraitStore.follow`; returns 1 if there was a portrait."""
    conn.execute(SET_META, ("portraits_forgotten", os.urandom(8).hex()))
    return int(conn.execute("DELETE FROM portraits WHERE user_id = ?", (user_id,)).rowcount)

