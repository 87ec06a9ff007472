r"""Apprentice mode: serve the storefront's own order while the model learns, and switch when it agrees.

In apprentice mode (``--mode apprentice``) each slot of a recbandit-arm decision is drawn from

.. math::

    μ(a) = (1 − F) · 1[a = b] + F / m

over the ``m`` candidates the slot may hold (after exclusions, rules, pins and the earlier slots),
``b`` being the first of them in the storefront's order (the baseline, as the control arm serves)
and ``F`` the share explored (``--apprentice-exploration``, 0 by default). A slot under a
promotion share has ``μ`` reshaped like the bandit's pmf (:func:`engine.rules.promotion_shaped`),
so the share holds. The draw is the event's seeded draw and the logged probability is ``μ`` of
the item drawn: the learner learns every slot with it, as it learns the bandit's.

For every such slot the decision's record keeps ``[b, g]``: the baseline and the model's choice
``g``, its most probable candidate among those the slot may hold (under the same promotion
shaping), ties broken by a seeded draw of its own, independent of the serving draw (a fresh model
gives every candidate the same probability: its choice is then uniform, not the first).

:class:`ApprenticeTally` keeps the newest ``window`` such slots whose final reward was learned.
With ``a`` the item served, ``p = μ(a)`` and ``r`` its reward, it reports

- the **match rate**: the share of slots where ``g = b``;
- the **baseline's reward** per slot, ``mean(r · 1[a = b] / p)``: at ``F = 0`` (no promotion share)
  ``a = b`` and ``p = 1``, and it is the observed reward;
- the **model's reward** per slot by inverse propensity weighting, ``mean(r · 1[a = g] / p)``,
  unbiased where ``μ(g) > 0``; the **identified share** is the share of slots where it is. With
  ``F > 0`` every candidate has ``μ ≥ F / m``: all slots are identified. With ``F = 0`` only the
  slots where ``g = b`` are: the estimate counts the others as 0 (a lower bound when rewards are
  not negative) and says nothing of what the model's other choices would earn.

The mode in force is the store's (``meta`` key ``serving_mode``), so that a restarted server and
every serving process follow one mode; :class:`Apprentice` reads it, writes a switch, and follows
the store's (roles serve and learn look every half second).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine.errors import ConfigurationError, InvalidRequest, shown
from engine.exploration import uniform_draw
from engine.records import LoggedDecision

if TYPE_CHECKING:
    from engine.eventlog import EventLog

log = logging.getLogger(__name__)

ONLINE, APPRENTICE = "online", "apprentice"
MODES = (ONLINE, APPRENTICE)
MODE_KEY = "serving_mode"
"""The ``meta`` key of the mode in force: JSON ``{"mode", "since", "reason"}``."""
MAX_WINDOW = 100_000
SEED_SCAN = 200_000
"""Outcomes a starting learner reads back at most to find the newest apprentice slots."""


@dataclass(frozen=True, slots=True)
class ApprenticeConfig:
    """``mode`` at start (the store's record wins once there is one), the share ``exploration``
    explored, the match rate ``until`` that switches to online (None: only an Admin call does),
    and the ``window`` of newest learned slots the figures are over (the switch waits until it is full)."""

    mode: str = ONLINE
    exploration: float = 0.0
    until: float | None = None
    window: int = 1000

    def validate(self) -> None:
        if self.mode not in MODES:
            raise ConfigurationError("mode", f"must be online or apprentice, got {self.mode!r}")
        if not (math.isfinite(self.exploration) and 0.0 <= self.exploration < 1.0):
            raise ConfigurationError("apprentice_exploration", f"must be at least 0 and below 1, got {self.exploration:g}")
        if self.until is not None and not (math.isfinite(self.until) and 0.0 < self.until <= 1.0):
            raise ConfigurationError("apprentice_until", f"must be a match rate above 0 and at most 1, got {self.until:g}")
        if not 10 <= self.window <= MAX_WINDOW:
            raise ConfigurationError("apprentice_window", f"must be within [10, {MAX_WINDOW}] slots, got {self.window}")


@dataclass(frozen=True, slots=True)
class ServingMode:
    """The mode in force, since when, and why (a switch's reason)."""

    mode: str = ONLINE
    since: float = 0.0
    reason: str = ""

    def to_json(self) -> str:
        return json.dumps({"mode": self.mode, "since": self.since, "reason": self.reason}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> ServingMode:
        data = json.loads(text)
        return cls(str(data["mode"]), float(data["since"]), str(data.get("reason", "")))


def apprentice_pmf(m: int, exploration: float) -> list[float]:
    """``μ`` over ``m`` candidates in the storefront's order: ``1 − F`` on the first, plus ``F / m`` on each."""
    pmf = [exploration / m] * m
    pmf[0] += 1.0 - exploration
    return pmf


def model_choice(pmf: Sequence[float], seed: int, event_id: str, slot: int) -> int:
    """The index of ``pmf``'s most probable entry; ties broken by a seeded draw that is not the serving draw."""
    top = max(pmf)
    tied = [i for i, p in enumerate(pmf) if p == top]
    if len(tied) == 1:
        return tied[0]
    return tied[min(len(tied) - 1, int(uniform_draw(seed, f"{event_id}:apprentice", slot) * len(tied)))]


@dataclass(frozen=True, slots=True)
class ApprenticeSlot:
    """What one apprentice slot adds to the tally once its reward is final."""

    decided: float
    match: bool  # the model's choice is the baseline
    served_baseline: bool
    served_model: bool
    probability: float  # of the item served
    identified: bool  # the model's choice had a probability above 0


def apprentice_slots(decision: LoggedDecision) -> tuple[ApprenticeSlot | None, ...]:
    """Per slot of ``decision``, what the tally needs (None: not an apprentice slot, or pinned)."""
    if not decision.apprentice:
        return ()
    index = {c.item_id: i for i, c in enumerate(decision.candidates)}
    out: list[ApprenticeSlot | None] = []
    for slot, choice in zip(decision.slots, decision.apprentice, strict=True):
        if choice is None:
            out.append(None)
            continue
        baseline, model = choice
        out.append(ApprenticeSlot(decision.ts, baseline == model, slot.item_id == baseline, slot.item_id == model,
                                  slot.probability, slot.pmf[index[model]] > 0))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class ApprenticeStats:
    """The figures over the newest learned apprentice slots (NaN without any)."""

    slots: int
    match_rate: float
    baseline_reward: float
    model_reward: float
    identified_share: float


class ApprenticeTally:
    """The newest ``window`` apprentice slots whose reward was learned (see the module's formulas)."""

    def __init__(self, window: int) -> None:
        self._rows: deque[tuple[float, bool, float, float, bool]] = deque(maxlen=window)
        self._lock = threading.Lock()

    def add(self, slot: ApprenticeSlot, reward: float) -> None:
        row = (slot.decided, slot.match, reward * slot.served_baseline / slot.probability,
               reward * slot.served_model / slot.probability, slot.identified)
        with self._lock:
            self._rows.append(row)

    def drop_before(self, ts: float) -> None:
        """Forget the slots decided before ``ts`` (an apprentice period that began then)."""
        with self._lock:
            kept = [r for r in self._rows if r[0] >= ts]
            self._rows.clear()
            self._rows.extend(kept)

    @property
    def full(self) -> bool:
        return len(self._rows) == self._rows.maxlen

    def stats(self) -> ApprenticeStats:
        with self._lock:
            rows = list(self._rows)
        n = len(rows)
        if not n:
            return ApprenticeStats(0, math.nan, math.nan, math.nan, math.nan)
        return ApprenticeStats(n, sum(r[1] for r in rows) / n, math.fsum(r[2] for r in rows) / n,
                               math.fsum(r[3] for r in rows) / n, sum(r[4] for r in rows) / n)


class Apprentice:
    """The mode in force (the store's), its switches, and the tally of the learner's apprentice slots.

    ``read_meta(key)`` and ``write_meta(key, value, expected)`` reach the store's ``meta`` table
    (:meth:`engine.eventlog.EventLog.meta`, :meth:`~engine.eventlog.EventLog.set_meta`).
    """

    def __init__(self, config: ApprenticeConfig, read_meta: Callable[[str], str | None],
                 write_meta: Callable[[str, str, str | None], bool]) -> None:
        config.validate()
        self.config = config
        self.tally = ApprenticeTally(config.window)
        self._read, self._write = read_meta, write_meta
        self._switching = threading.Lock()
        recorded = self._recorded()
        if recorded is None and config.mode == APPRENTICE:
            recorded = ServingMode(APPRENTICE, time.time(), "started with --mode apprentice")
            if not self._write(MODE_KEY, recorded.to_json(), None):  # another process recorded one first
                recorded = self._recorded()
        elif recorded is not None and recorded.mode != config.mode:
            log.warning("serving mode: the store's is %s since %s (%s); --mode %s is ignored: switch with "
                        "Admin/SetServingMode", recorded.mode, time.strftime("%Y-%m-%dT%H:%M:%SZ",
                        time.gmtime(recorded.since)), recorded.reason, config.mode)
        self.mode = recorded or ServingMode()

    @property
    def serving(self) -> bool:
        """Whether decisions of the recbandit arm serve the baseline now."""
        return self.mode.mode == APPRENTICE

    def _recorded(self) -> ServingMode | None:
        text = self._read(MODE_KEY)
        return None if text is None else ServingMode.from_json(text)

    def follow(self) -> None:
        """Take the store's mode (another process switched it)."""
        recorded = self._recorded()
        if recorded is not None and recorded != self.mode:
            self._changed(recorded)

    def switch(self, mode: str, reason: str, *, only_from: ServingMode | None = None) -> bool:
        """Record ``mode`` in the store and serve it; False when it is in force already (or, with
        ``only_from``, when the store's mode is no longer that one)."""
        if mode not in MODES:
            raise InvalidRequest("mode", f"must be online or apprentice, got {shown(mode)}")
        with self._switching:
            expected = self._read(MODE_KEY)  # the record as stored: the write below happens only if it still is
            current = ServingMode() if expected is None else ServingMode.from_json(expected)
            if current.mode == mode or (only_from is not None and current != only_from):
                if current != self.mode:
                    self._changed(current)
                return False
            new = ServingMode(mode, time.time(), reason)
            if not self._write(MODE_KEY, new.to_json(), expected):
                self.follow()  # another process switched meanwhile
                return False
            log.warning("serving mode: %s → %s (%s)", current.mode, mode, reason)
            self._changed(new)
            return True

    def _changed(self, new: ServingMode) -> None:
        if new.mode == APPRENTICE:
            self.tally.drop_before(new.since)
        self.mode = new

    def seed(self, rows: Sequence[tuple[ApprenticeSlot, float]]) -> None:
        """The tally's slots learned before this start, oldest first."""
        for slot, reward in rows:
            if slot.decided >= self._period_start():
                self.tally.add(slot, reward)

    def learned(self, slot: ApprenticeSlot, reward: float) -> None:
        if slot.decided >= self._period_start():
            self.tally.add(slot, reward)

    def _period_start(self) -> float:
        """When the apprentice period in force (or the last one) began: older slots are not counted."""
        return self.mode.since if self.mode.mode == APPRENTICE else 0.0

    def check_switch(self) -> bool:
        """Switch to online when ``until`` is set, the window is full and its match rate reaches ``until``."""
        until, mode = self.config.until, self.mode
        if until is None or mode.mode != APPRENTICE or not self.tally.full:
            return False
        stats = self.tally.stats()
        if stats.match_rate < until:
            return False
        return self.switch(ONLINE, f"match rate {stats.match_rate:.3f} reached --apprentice-until {until:g} over the "
                                   f"newest {stats.slots} slots", only_from=mode)


def learned_apprentice_slots(log: EventLog, learned_seq: int, window: int) -> list[tuple[ApprenticeSlot, float]]:
    """The newest ``window`` apprentice slots learned up to outcome ``learned_seq``, with their
    rewards, oldest first: the tally of a restarted learner, read back from the log (among the
    newest :data:`SEED_SCAN` outcomes)."""
    rows = log.reader.connection().execute(
        "SELECT o.seq, o.event_id, o.slot, o.reward FROM outcomes o JOIN decisions d ON d.event_id = o.event_id"
        " WHERE o.seq <= ? AND o.seq > ? AND d.record LIKE ? ORDER BY o.seq DESC LIMIT ?",
        (learned_seq, learned_seq - SEED_SCAN, '%"apprentice":[%', window)).fetchall()
    decisions = log.decisions(event_id for _, event_id, _, _ in rows)
    found = []
    for _, event_id, slot, reward in rows:
        decision = decisions.get(event_id)
        slots = apprentice_slots(decision) if decision is not None else ()
        if slot < len(slots) and (entry := slots[slot]) is not None:
            found.append((entry, float(reward)))
    return found[::-1]
