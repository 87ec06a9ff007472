"""How often each user was shown what a frequency cap counts, from the decisions themselves.

A cap counts the items of the user's decisions: every slot's item, once the decision is committed
(:meth:`FrequencyCounter.record`, fed by :class:`engine.core.Engine` as decisions commit). A cap
new to the process is first counted from the event log over its window
(:meth:`FrequencyCounter.install`), so a restart or a reload loses nothing the log holds.
Deleting old events (retention) changes no count in memory: counts only leave when their window
has passed, or with the user (ForgetUser). Each process counts the decisions it makes itself;
those of other processes sharing the store reach it only when it reads the log (at its start,
and when a cap is added or changed).

Memory is bounded by the window: per cap, user and item (or group) the newest ``max`` times at
most; a user whose newest counted show is older than the cap's window is dropped, and the items a
returning user was shown before the window leave as their count of items doubles.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from engine.records import LoggedDecision
from engine.rules import FrequencyCap, matches
from engine.types import Candidate

SEEDED_OVERLAP_SECONDS = 60.0
"""Decisions of the last minute that a log read counted are remembered for as long: one whose
commit came just before the read and whose :meth:`FrequencyCounter.record` came after it is
then not counted twice."""
FORGOTTEN_KEPT_SECONDS = 600.0
"""How long a forgotten user is kept out of log reads and decisions in flight (both take seconds)."""


@dataclass(slots=True)
class _UserShows:
    newest: float
    times: dict[str, list[float]]  # by item id (per item) or "" (the group): ascending, the newest max
    sweep_at: int = 16  # how many keys make the next sweep of the expired ones (twice those kept after a sweep)

    def sweep(self, cutoff: float) -> None:
        """Drop the keys whose newest show is at or before ``cutoff``: a user who keeps coming
        back is never dropped whole, so the items they saw long ago must leave one by one."""
        self.times = {key: times for key, times in self.times.items() if times[-1] > cutoff}
        self.sweep_at = max(16, 2 * len(self.times))


class CapCount:
    """The shows one cap counts, per user."""

    def __init__(self, cap: FrequencyCap) -> None:
        self.cap = cap
        self.users: OrderedDict[str, _UserShows] = OrderedDict()  # the least recently shown first

    def add(self, user_id: str, ts: float, shown: Iterable[Candidate]) -> None:
        cap = self.cap
        for candidate in shown:
            if not matches(cap.items, candidate.features):
                continue
            user = self.users.get(user_id)
            if user is None:
                user = self.users[user_id] = _UserShows(ts, {})
            else:
                user.newest = max(user.newest, ts)
                self.users.move_to_end(user_id)
            times = user.times.setdefault(cap.key(candidate.item_id), [])
            bisect.insort(times, ts)
            if len(times) > cap.max:
                del times[0]
            if len(user.times) > user.sweep_at:  # amortised: each sweep at least halves what is left to sweep
                user.sweep(user.newest - cap.window_seconds)

    def shown(self, user_id: str, key: str, now: float) -> int:
        """Shows of ``key`` to the user within the window, counted up to ``max``."""
        user = self.users.get(user_id)
        times = user.times.get(key) if user is not None else None
        if not times:
            return 0
        return len(times) - bisect.bisect_right(times, now - self.cap.window_seconds)

    def prune(self, now: float) -> None:
        """Drop the users whose newest show left the window (the least recently shown first)."""
        cutoff = now - self.cap.window_seconds
        while self.users:
            user_id, user = next(iter(self.users.items()))
            if user.newest > cutoff:
                return
            del self.users[user_id]


@dataclass(frozen=True, slots=True)
class CapLimits:
    """What the caps allow one decision: candidates they remove, and what groups may still show."""

    removed: dict[int, str]  # candidate index → the cap that removed it
    budgets: list[tuple[FrequencyCap, int, frozenset[int]]]  # a group cap, shows left, its candidates' indices


class FrequencyCounter:
    """Every installed cap's counts, fed by committed decisions and seeded from the log.

    ``read_since(ts)`` yields the logged decisions decided after ``ts``, in time order.
    """

    def __init__(self, read_since: Callable[[float], Iterable[LoggedDecision]]) -> None:
        self._read_since = read_since
        self._counts: dict[FrequencyCap, CapCount] = {}
        self._lock = threading.Lock()
        self._pending: list[LoggedDecision] | None = None  # recorded while a log read counts new caps
        self._seeded: dict[str, tuple[float, tuple[CapCount, ...]]] = {}  # event id → (ts, counts the read fed)
        self._forgotten: dict[str, float] = {}  # user → when ForgetUser dropped them: kept out of what was read or decided before

    def install(self, caps: Sequence[FrequencyCap], now: float | None = None) -> None:
        """Count ``caps`` from now on; those not counted yet are first counted from the log over
        their window. Blocks for the read; decisions committed meanwhile are counted once."""
        now = time.time() if now is None else now
        with self._lock:
            fresh = [CapCount(cap) for cap in dict.fromkeys(caps) if cap not in self._counts]
            if not fresh:
                return
            self._pending = []
            started = time.time()
        seen: dict[str, float] = {}  # the recent ones: what a decision recorded meanwhile may also be
        try:
            for decision in self._read_since(now - max(c.cap.window_seconds for c in fresh)):
                if decision.ts > now - SEEDED_OVERLAP_SECONDS:
                    seen[decision.event_id] = decision.ts
                for count in fresh:
                    if decision.ts > now - count.cap.window_seconds:
                        count.add(decision.user_id, decision.ts, _shown(decision))
        except BaseException:
            with self._lock:
                self._pending = None
            raise
        with self._lock:  # one hold: a decision recorded from here on finds the fresh counts installed
            pending, self._pending = self._pending or [], None
            for decision in pending:
                if decision.event_id not in seen:
                    for count in fresh:
                        count.add(decision.user_id, decision.ts, _shown(decision))
            for user_id, when in self._forgotten.items():  # forgotten while the read ran: not brought back
                if when >= started:
                    for count in fresh:
                        count.users.pop(user_id, None)
            late = tuple(fresh)
            self._seeded.update((event_id, (ts, late)) for event_id, ts in seen.items())
            self._counts.update((count.cap, count) for count in fresh)

    def retire(self, keep: Sequence[FrequencyCap]) -> None:
        """Stop counting the caps not in ``keep``."""
        with self._lock:
            for cap in [c for c in self._counts if c not in keep]:
                del self._counts[cap]

    def record(self, decision: LoggedDecision) -> None:
        """Count a decision that was just committed."""
        if not self._counts and self._pending is None:
            return
        shown = _shown(decision)
        with self._lock:
            if self._forgotten.get(decision.user_id, float("-inf")) >= decision.ts:
                return  # decided before the user was forgotten, committed after: never counted again
            if self._pending is not None:
                self._pending.append(decision)
            counted = self._seeded.pop(decision.event_id, (0.0, ()))[1]
            for count in self._counts.values():
                if count not in counted:
                    count.add(decision.user_id, decision.ts, shown)

    def limits(self, caps: Sequence[FrequencyCap], user_id: str, candidates: Sequence[Candidate],
               num_results: int, now: float) -> CapLimits:
        """What ``caps`` allow the user's decision of ``num_results`` slots over ``candidates`` now.

        Only what can bind is looked at: per item, the items the user was shown ``max`` times; per
        group, a group with fewer shows left than the decision has slots."""
        removed: dict[int, str] = {}
        budgets = []
        with self._lock:
            for cap in caps:
                count = self._counts.get(cap)
                if count is None:  # retired by a reload since this decision read its rules
                    continue
                if cap.per == "item":  # the candidates' own counts: the cost of a decision, not of the user's past
                    if user_id in count.users:
                        removed.update((i, cap.name) for i, c in enumerate(candidates)
                                       if i not in removed and count.shown(user_id, c.item_id, now) >= cap.max
                                       and matches(cap.items, c.features))
                    continue
                left = cap.max - count.shown(user_id, "", now)
                if left >= num_results:
                    continue
                members = [i for i, c in enumerate(candidates) if i not in removed and matches(cap.items, c.features)]
                if members and left <= 0:
                    removed.update((i, cap.name) for i in members)
                elif members:
                    budgets.append((cap, left, frozenset(members)))
        return CapLimits(removed, budgets)

    def forget(self, user_id: str) -> None:
        """Drop what is counted of ``user_id`` (ForgetUser), and keep out what a log read under way
        or a decision in flight would bring back."""
        with self._lock:
            self._forgotten[user_id] = time.time()
            for count in self._counts.values():
                count.users.pop(user_id, None)

    def prune(self, now: float | None = None) -> None:
        """Drop users whose window passed, and the overlap of the last log read once a minute old."""
        now = time.time() if now is None else now
        with self._lock:
            for count in self._counts.values():
                count.prune(now)
            for event_id in [e for e, (ts, _) in self._seeded.items() if ts <= now - SEEDED_OVERLAP_SECONDS]:
                del self._seeded[event_id]
            for user_id in [u for u, when in self._forgotten.items() if when <= now - FORGOTTEN_KEPT_SECONDS]:
                del self._forgotten[user_id]


def _shown(decision: LoggedDecision) -> list[Candidate]:
    """The candidates a decision showed, one per slot."""
    by_id = {c.item_id: c for c in decision.candidates}
    return [by_id[item_id] for item_id in decision.chosen_item_ids if item_id in by_id]
