"""The business rules in force: loaded from their file, reloaded when it changes, applied to decisions.

:class:`LiveRules` reads the rules file at start (a file that does not load stops the start) and
then looks at its modification time and size every ``poll_interval`` seconds. An edit that loads
replaces the rules at once (caps new to the process are first counted from the log,
:mod:`engine.frequency`); one that does not is logged in one line, naming the file and the line or
rule, and the rules in force stay.

A decision reads :attr:`LiveRules.rules` once. :meth:`LiveRules.offer` removes the candidates that
eligibility and the frequency caps rule out, before anything is drawn or logged, and
:meth:`Offer.plan` says how the slots are filled: pinned slots, promotion shares, and what group
caps let the later slots still show (:class:`SlotPlan`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import ConfigurationError, PreconditionFailed
from engine.exploration import normalised
from engine.frequency import FrequencyCounter
from engine.records import LoggedDecision, SlotChoice
from engine.rules import PromotionShare, RuleSet, load_rules, matches, promotion_shaped
from engine.types import Candidate, Features

log = logging.getLogger(__name__)

PRUNE_INTERVAL = 10.0
"""Seconds between drops of the users whose frequency windows passed."""


@dataclass(frozen=True, slots=True)
class RulesInfo:
    """What ``Admin/GetRules`` reports: the rules in force, where from, and the last failed load."""

    file: str
    rules: RuleSet
    loaded_ts: float | None
    last_error: str = ""
    last_error_ts: float | None = None


class LiveRules:
    """The rules of ``path`` (None: none), their frequency counts, and their reloading.

    ``read_since(ts)`` yields the logged decisions after ``ts`` in time order (the counts' seed);
    a frequency cap whose window is longer than ``retention_seconds`` is refused, since the log
    would not hold what it counts after a restart.
    """

    def __init__(self, path: Path | None, read_since: Callable[[float], Iterable[LoggedDecision]],
                 retention_seconds: float | None = None, poll_interval: float = 1.0) -> None:
        self.path = path
        self.rules = RuleSet()
        self.counter = FrequencyCounter(read_since)
        self._retention = retention_seconds
        self._poll_interval = poll_interval
        self._stamp: tuple[int, int, int] | None = None
        self._loaded_ts: float | None = None
        self._error: tuple[str, float | None] = ("", None)  # the last failed load's message, and when
        self._thread: threading.Thread | None = None

    def start(self, stopping: threading.Event) -> None:
        """Load the file (:class:`ConfigurationError` when it does not load), then watch it until ``stopping``."""
        if self.path is None:
            return
        stamp = _stamp(self.path)
        self._install(self._load(), stamp)
        self._thread = threading.Thread(target=self._watch, args=(stopping,), name="rules-file", daemon=True)
        self._thread.start()

    def join(self) -> None:
        """Wait for the file watch to stop (after ``stopping`` is set): before the log it reads closes."""
        if self._thread is not None and self._thread.is_alive():
            self._thread.join()

    def poll(self) -> bool:
        """Reload the file if it changed since the last look; True when new rules are in force."""
        assert self.path is not None
        stamp = _stamp(self.path)
        if stamp == self._stamp:
            return False
        try:
            rules = self._load()
        except ConfigurationError as error:  # wait for the next edit
            self._stamp = stamp
            self._failed(str(error))
            return False
        except Exception as error:  # the log could not be read: try again at the next look
            if self._error[0] != (message := f"rules: {self.path}: cannot count the frequency caps from the event "
                                             f"log now ({type(error).__name__})"):
                self._failed(message)
            return False
        self._install(rules, stamp)
        return True

    def _load(self) -> RuleSet:
        assert self.path is not None
        rules = load_rules(self.path)
        for cap in rules.frequency_caps:
            if self._retention is not None and cap.window_seconds > self._retention:
                raise ConfigurationError("rules", f'{self.path}: frequency_cap rule "{cap.name}": its window is '
                                                  f"longer than --retention ({self._retention:g} s), so after a "
                                                  "restart the log would not hold what it counts")
        self.counter.install(rules.frequency_caps)
        return rules

    def _install(self, rules: RuleSet, stamp: tuple[int, int, int] | None) -> None:
        self.rules = rules
        self.counter.retire(rules.frequency_caps)
        self._stamp, self._loaded_ts, self._error = stamp, time.time(), ("", None)
        log.info("rules: %d in force from %s", len(rules.rules), self.path)

    def _failed(self, message: str) -> None:
        self._error = (message, time.time())
        log.error("%s; the rules in force stay", message)

    def _watch(self, stopping: threading.Event) -> None:
        pruned = time.monotonic()
        while not stopping.wait(self._poll_interval):
            try:
                self.poll()
                if time.monotonic() - pruned > PRUNE_INTERVAL:
                    self.counter.prune()
                    pruned = time.monotonic()
            except Exception:  # never let the watcher die: the rules in force keep serving
                log.exception("rules: the watch of %s failed once", self.path)

    def info(self) -> RulesInfo:
        return RulesInfo(str(self.path or ""), self.rules, self._loaded_ts, *self._error)

    def record(self, decision: LoggedDecision) -> None:
        """Count a decision just committed towards the frequency caps."""
        self.counter.record(decision)

    def forget(self, user_id: str) -> None:
        self.counter.forget(user_id)

    # -- one decision ----------------------------------------------------------------------------

    def offer(self, rules: RuleSet, user_id: str, user_features: Features, context: Features,
              candidates: list[Candidate], num_results: int, now: float,
              pinnable: Callable[[str], Candidate | None] | None = None) -> Offer:
        """The candidates ``rules`` leave to the user's decision, in their order.

        ``pinnable(item_id)`` is the catalog's candidate for an item pinned to a slot below
        ``num_results`` that ``candidates`` lacks (a request that sent none); it joins them, and is
        then ruled like the others. Raises :class:`PreconditionFailed` naming the rules when none is left.
        """
        if pinnable is not None and rules.pins:
            present = {c.item_id for c in candidates}
            for item_id in rules.pinned_item_ids(user_features, context, num_results).values():
                if item_id not in present and (candidate := pinnable(item_id)) is not None:
                    candidates = [*candidates, candidate]
        removed: dict[str, None] = {}  # rule names, in order
        candidates = _eligible(rules, user_features, context, candidates, removed)
        limits = self.counter.limits(rules.frequency_caps, user_id, candidates, num_results, now)
        removed.update(dict.fromkeys(limits.removed.values()))
        index: dict[int, int] = {}  # position before the caps → position after
        left: list[Candidate] = []
        for i, candidate in enumerate(candidates):
            if i not in limits.removed:
                index[i] = len(left)
                left.append(candidate)
        if not left:
            raise PreconditionFailed("candidates", f"every candidate is ineligible under {_named(removed)}")
        budgets = [[cap, n, frozenset(index[i] for i in members if i in index)] for cap, n, members in limits.budgets]
        return Offer(rules, user_features, context, left, tuple(removed), budgets)


@dataclass(slots=True)
class Offer:
    """The candidates of one decision under the rules, and the rules that removed others."""

    rules: RuleSet
    user_features: Features
    context: Features
    candidates: list[Candidate]
    removed_by: tuple[str, ...]
    budgets: list[list]  # type: ignore[type-arg]  # [group cap, shows left, candidate indices]

    def plan(self, num_results: int) -> SlotPlan | None:
        """How the slots are filled; None when no rule shapes them (every slot a plain draw).
        :class:`PreconditionFailed` when the rules leave fewer candidates than slots."""
        rules, candidates = self.rules, self.candidates
        if num_results > len(candidates):
            raise PreconditionFailed("num_results", f"{num_results} slots asked, but {len(candidates)} candidates "
                                                    f"are left under {_named(self.removed_by)}")
        position = {c.item_id: i for i, c in enumerate(candidates)}
        plan = SlotPlan(budgets=[b for b in self.budgets if b[2]])
        for slot, item_id in sorted(rules.pinned_item_ids(self.user_features, self.context, num_results).items()):
            i = position.get(item_id)
            if i is not None and all(left > 0 for _, left, members in plan.budgets if i in members):
                plan.pinned[slot] = i
                plan.spend(i, [])
        for slot in range(num_results):
            share = rules.share_of(slot, self.user_features, self.context)
            if share is not None and slot not in plan.pinned:
                plan.shares[slot] = (share, frozenset(i for i, c in enumerate(candidates)
                                                      if matches(share.items, c.features)))
        return plan if plan.pinned or plan.shares or plan.budgets else None


@dataclass(slots=True)
class SlotPlan:
    """How one decision's slots are filled under the rules.

    A pinned slot holds its item with probability 1; the bandit never draws pinned items for the
    other slots. A slot under a promotion share is drawn from :func:`engine.rules.promotion_shaped`.
    A group cap with shows left lets the decision show that many of its items: once they are
    shown, its other items leave the candidates of the later slots. Each slot's pmf is therefore
    over the candidates it could really draw, given the earlier slots.
    """

    pinned: dict[int, int] = field(default_factory=dict)  # slot → candidate index
    shares: dict[int, tuple[PromotionShare, frozenset[int]]] = field(default_factory=dict)
    budgets: list[list] = field(default_factory=list)  # type: ignore[type-arg]  # [cap, shows left, indices]

    def open(self, n: int) -> list[int]:
        """The candidates the bandit may draw for the first unpinned slot."""
        closed = set(self.pinned.values())
        for _, left, members in self.budgets:
            if left <= 0:
                closed |= members
        return [i for i in range(n) if i not in closed]

    def pmf(self, slot: int, scores: Sequence[float], remaining: Sequence[int]) -> tuple[list[float], bool]:
        """The pmf slot ``slot`` is drawn from over ``remaining``, and whether it is ``normalised(scores)``."""
        share = self.shares.get(slot)
        if share is None:
            return normalised(scores), True
        rule, promoted = share
        return promotion_shaped(scores, [i in promoted for i in remaining], rule.share), False

    def spend(self, chosen: int, remaining: list[int]) -> None:
        """``chosen`` is shown: its group caps have one show less; an exhausted group leaves ``remaining``."""
        for budget in self.budgets:
            _, left, members = budget
            if chosen in members and left > 0:
                budget[1] = left - 1
                if budget[1] == 0:
                    remaining[:] = [i for i in remaining if i not in members]


def _eligible(rules: RuleSet, user_features: Features, context: Features, candidates: list[Candidate],
              removed: dict[str, None]) -> list[Candidate]:
    """The candidates that no eligibility rule applying here removes; the names of the rules that
    remove some go to ``removed``."""
    applying = [r for r in rules.eligibility if r.applies(user_features, context)]
    if not applying:
        return candidates
    kept = []
    for candidate in candidates:
        rule = next((r for r in applying if matches(r.items, candidate.features)), None)
        if rule is None:
            kept.append(candidate)
        else:
            removed[rule.name] = None
    return kept


def pinned_choice(candidates: Sequence[Candidate], index: int) -> SlotChoice:
    """A pinned slot: its item with probability 1, the pmf 1 on it and 0 elsewhere (its scores alike)."""
    one_hot = tuple(1.0 if i == index else 0.0 for i in range(len(candidates)))
    return SlotChoice(candidates[index].item_id, 1.0, one_hot, one_hot)


def _named(names: Iterable[str]) -> str:
    names = list(names)
    if not names:
        return "the rules"
    if len(names) == 1:
        return f'rule "{names[0]}"'
    return "rules " + ", ".join(f'"{n}"' for n in names)


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """What tells an edit of the file: its modification time, size and inode (None: no file)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino
