"""What the engine reports while it works, for whoever watches it (the server's metrics).

The engine calls an :class:`Observer` from its own threads (the event-log writer, the learner)
and from the event loop. Each call must be quick and must not raise; the default observer
ignores everything, so the engine runs the same watched or not.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from engine.records import RECBANDIT_ARM

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LearnedSlot:
    """One final outcome as the model learned it.

    ``model`` is the id of the model that made the decision (its version without the count of
    examples learned). ``exploring`` says the slot's item was not the most probable one of its
    pmf: the policy explored rather than exploited. ``reward_delay`` is the seconds from the
    decision to the reward that made the slot final; None when no reward did (``default``) or
    rewards were summed over the window (``sum``). ``arm`` is the decision's campaign arm:
    ``recbandit`` or ``control`` (:mod:`engine.campaign`).
    """

    model: str
    reward: float
    source: str  # reward, sum or default (see engine.records.Outcome)
    exploring: bool
    reward_delay: float | None
    arm: str = RECBANDIT_ARM


class Observer:
    """Ignores everything; the server's metrics override what they count."""

    def decided(self, model: str, arm: str = RECBANDIT_ARM) -> None:
        """A new decision of the model ``model`` (an id, see :func:`model_id`) in the campaign arm
        ``arm`` was committed; a repeated event id answered from the log is not new."""

    def committed(self, seconds: float, operations: int) -> None:
        """One event-log transaction of ``operations`` writes committed (or failed) in ``seconds``."""

    def learned(self, slot: LearnedSlot) -> None:
        """The model learned one final outcome."""

    def pruned(self, events: int) -> None:
        """Retention deleted ``events`` old events, final and learned."""

    def undelivered(self) -> None:
        """A decision was committed but its caller was gone before the reply."""


def model_id(model_version: str) -> str:
    """``vw-1a2b@120+embeddings-….npz`` → ``vw-1a2b``: the model, without its count of examples learned."""
    return model_version.split("@", 1)[0]


def report(call: object, *args: object) -> None:
    """Call an observer's method, and never let it fail the engine's work: log it instead."""
    try:
        call(*args)  # type: ignore[operator]
    except Exception:
        log.exception("the observer failed; the engine goes on")
