"""What the event log writes: the group-commit operations (:mod:`engine.groupcommit`) and the
rules that make a slot final, written once for every store (:mod:`engine.storage`).

A slot becomes final once: by its first reward under ``earliest`` (:class:`InsertReward` at once,
or :func:`join_rewards_of` when a serving process logged the reward for the learner to join), or
when its window closes (:meth:`engine.eventlog.EventLog.close_windows`: the rewards' sum, or the
default reward). ``ON CONFLICT DO NOTHING`` on ``(event_id, slot)`` keeps the first.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from engine.errors import InvalidRequest, PreconditionFailed, RecbanditError, UnknownEvent, shown
from engine.groupcommit import Rejected
from engine.records import LoggedDecision, Reward
from engine.storage import Connection
from engine.types import Status

T = TypeVar("T")
SET_META = "INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value"


def event_state(conn: Connection, event_id: str, lock: str = "") -> tuple[list[str], bool, float | None, bool, float]:
    """The event's chosen items, deferral, activation, closing and deadline; ``lock`` keeps another
    process from closing its window until this transaction ends (:attr:`Database.share_lock`)."""
    row = conn.execute(
        f"SELECT chosen, deferred, activated_ts, closed, deadline FROM decisions WHERE event_id = ?{lock}",
        (event_id,),
    ).fetchone()
    if row is None:
        raise UnknownEvent(event_id)
    return json.loads(row[0]), bool(row[1]), row[2], bool(row[3]), row[4]


class InsertDecision:
    """The group-commit operation of one decision: None when inserted, else the logged decision."""

    __slots__ = ("row", "logged")
    _SQL = "INSERT INTO decisions (event_id, ts, deadline, user_id, chosen, deferred, model_version, record, pmf)"
    _IGNORE = " ON CONFLICT DO NOTHING"
    _VALUES = "(?, ?, ?, ?, ?, ?, ?, ?, ?)"
    _ROWS_PER_STATEMENT = 100  # 900 parameters: within every SQLite build's limit

    def __init__(self, row: tuple[object, ...],
                 logged: Callable[[Connection, str], LoggedDecision | None]) -> None:
        self.row = row
        self.logged = logged  # reads the decision that holds the event id

    def __call__(self, conn: Connection) -> LoggedDecision | None:
        if conn.execute(f"{self._SQL} VALUES {self._VALUES}{self._IGNORE}", self.row).rowcount:
            return None
        return self.logged(conn, str(self.row[0]))

    @staticmethod
    def run_together(conn: Connection, inserts: list[InsertDecision]) -> list[None]:
        """Insert every decision with one statement per hundred.

        If any event id was taken (a retried Recommend) the count falls short: raise, so the
        writer rolls back and runs the inserts one by one, which tells each caller what it got.
        """
        for chunk in chunks(inserts, InsertDecision._ROWS_PER_STATEMENT):
            values = ", ".join([InsertDecision._VALUES] * len(chunk))
            cursor = conn.execute(f"{InsertDecision._SQL} VALUES {values}{InsertDecision._IGNORE}",
                                  [v for i in chunk for v in i.row])
            if cursor.rowcount != len(chunk):
                raise _EventIdTaken()
        return [None] * len(inserts)


def probe(conn: Connection) -> None:
    conn.execute(SET_META, ("storage_probe", str(time.time())))


class MarkDelivery:
    """Set a decision's ``undelivered`` flag; the decision is named by its event id and time, so
    that a mark never lands on another request's decision of the same event id."""

    __slots__ = ("event_id", "ts", "undelivered")

    def __init__(self, decision: LoggedDecision, delivered: bool) -> None:
        self.event_id, self.ts, self.undelivered = decision.event_id, decision.ts, int(not delivered)

    def __call__(self, conn: Connection) -> None:
        conn.execute("UPDATE decisions SET undelivered = ? WHERE event_id = ? AND ts = ?",
                     (self.undelivered, self.event_id, self.ts))


class InsertReward:
    """The group-commit operation of one reward: NEW or DUPLICATE, or the reason it is refused."""

    __slots__ = ("reward", "earliest", "unjoined", "lock")
    _SQL = "INSERT INTO rewards (event_id, item_id, label, value, ts, joined) VALUES "

    def __init__(self, reward: Reward, earliest: bool, unjoined: bool, lock: str) -> None:
        self.reward = reward
        self.earliest = earliest  # the first reward of a slot makes it final, now
        self.unjoined = unjoined  # ... later, when the learner joins it
        self.lock = lock  # the decision row's lock, against a window closed meanwhile by another process

    def __call__(self, conn: Connection) -> Status:
        reward = self.reward
        item_id, slot = reward_target(reward, event_state(conn, reward.event_id, self.lock))
        cursor = conn.execute(
            f"{self._SQL}(?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (reward.event_id, item_id, reward.label, reward.value, reward.ts, int(not self.unjoined)),
        )
        if not cursor.rowcount:
            return Status.DUPLICATE
        if self.earliest:
            insert_outcome(conn, reward.event_id, slot, item_id, reward.value, "reward", reward.ts)
        return Status.NEW

    @staticmethod
    def run_together(conn: Connection, inserts: list[InsertReward]) -> list[Status | Rejected]:
        """Commit many rewards with four statements: read their events and the rewards they already
        have, insert the new rewards, and (``earliest``) the outcomes they make final.

        Each reward gets what it would get alone, in order: refusals, DUPLICATE for one already
        logged or earlier in the batch, NEW otherwise; of several NEW rewards for one slot the
        first makes it final (``ON CONFLICT DO NOTHING`` in batch order).
        """
        event_ids = list(dict.fromkeys(i.reward.event_id for i in inserts))
        states: dict[str, tuple[list[str], bool, float | None, bool, float]] = {}
        existing: set[tuple[str, str, str]] = set()
        for chunk in chunks(event_ids, 400):
            marks = ",".join("?" * len(chunk))
            for event_id, chosen, deferred, activated_ts, closed, deadline in conn.execute(
                "SELECT event_id, chosen, deferred, activated_ts, closed, deadline FROM decisions"
                f" WHERE event_id IN ({marks}){inserts[0].lock}",
                chunk,
            ):
                states[event_id] = (json.loads(chosen), bool(deferred), activated_ts, bool(closed), deadline)
            existing.update(
                conn.execute(f"SELECT event_id, item_id, label FROM rewards WHERE event_id IN ({marks})", chunk)
            )
        results: list[Status | Rejected] = []
        rewards: list[tuple[object, ...]] = []
        outcomes: list[tuple[object, ...]] = []
        for insert in inserts:
            reward = insert.reward
            try:
                state = states.get(reward.event_id)
                if state is None:
                    raise UnknownEvent(reward.event_id)
                item_id, slot = reward_target(reward, state)
            except RecbanditError as error:
                results.append(Rejected(error))
                continue
            key = (reward.event_id, item_id, reward.label)
            if key in existing:
                results.append(Status.DUPLICATE)
                continue
            existing.add(key)
            results.append(Status.NEW)
            rewards.append((*key, reward.value, reward.ts, int(not insert.unjoined)))
            if insert.earliest:
                outcomes.append((reward.event_id, slot, item_id, reward.value, "reward", reward.ts))
        for chunk in chunks(rewards, 150):
            conn.execute(InsertReward._SQL + ", ".join(["(?, ?, ?, ?, ?, ?)"] * len(chunk)),
                         [v for row in chunk for v in row])
        for chunk in chunks(outcomes, 150):
            conn.execute(
                "INSERT INTO outcomes (event_id, slot, item_id, reward, source, ts) VALUES "
                + ", ".join(["(?, ?, ?, ?, ?, ?)"] * len(chunk)) + " ON CONFLICT DO NOTHING",
                [v for row in chunk for v in row],
            )
        return results


def reward_target(
    reward: Reward, state: tuple[list[str], bool, float | None, bool, float]
) -> tuple[str, int]:
    """The item a reward is for (``item_id`` empty means slot 0) and its slot; refuse one that does
    not fit its event."""
    chosen, deferred, activated_ts, closed, deadline = state
    item_id = reward.item_id or chosen[0]
    if item_id not in chosen:
        raise InvalidRequest("item_id", f"{shown(item_id)} was not recommended in event {shown(reward.event_id)}")
    if closed or reward.ts > deadline:
        raise PreconditionFailed("event_id", "the reward window of this event has closed")
    if deferred and activated_ts is None:
        raise PreconditionFailed("event_id", "the event is deferred and not activated; call Activate first")
    return item_id, chosen.index(item_id)


def delete_events(conn: Connection, event_ids: list[str]) -> tuple[int, int, int]:
    """Delete these events' rewards, outcomes and decisions; return how many of each."""
    rewards = outcomes = decisions = 0
    for chunk in chunks(event_ids, 500):
        marks = ",".join("?" * len(chunk))
        rewards += conn.execute(f"DELETE FROM rewards WHERE event_id IN ({marks})", chunk).rowcount
        outcomes += conn.execute(f"DELETE FROM outcomes WHERE event_id IN ({marks})", chunk).rowcount
        decisions += conn.execute(f"DELETE FROM decisions WHERE event_id IN ({marks})", chunk).rowcount
    return rewards, outcomes, decisions


def chunks(values: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


class _EventIdTaken(Exception):
    """A decision's event id is in the log already (handled by running the batch's writes one by one)."""


def join_rewards_of(conn: Connection, event_id: str, chosen: list[str]) -> int:
    """Make final the slots of ``event_id`` that its unjoined rewards decide (the first reward of
    each slot, by time); mark the rewards joined. Returns how many slots.

    The rewards marked are the ones read, in one statement (``RETURNING``): a reward another process
    commits meanwhile stays unjoined for the next pass, rather than marked without its outcome.
    """
    rewards = conn.execute("UPDATE rewards SET joined = 1 WHERE event_id = ? AND joined = 0 RETURNING item_id, value, ts",
                           (event_id,)).fetchall()
    return sum(insert_outcome(conn, event_id, chosen.index(item_id), item_id, value, "reward", ts)
               for item_id, value, ts in sorted(rewards, key=lambda r: r[2]) if item_id in chosen)


def insert_outcome(
    conn: Connection, event_id: str, slot: int, item_id: str, reward: float, source: str, ts: float
) -> int:
    cursor = conn.execute(
        "INSERT INTO outcomes (event_id, slot, item_id, reward, source, ts) VALUES (?, ?, ?, ?, ?, ?)"
        " ON CONFLICT DO NOTHING",
        (event_id, slot, item_id, reward, source, ts),
    )
    return cursor.rowcount
