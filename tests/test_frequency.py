"""The frequency caps' counter and ForgetUser: a forgotten user is not counted back by a log read
under way or by a decision that was in flight."""

from __future__ import annotations

import threading
import time

from engine.frequency import FrequencyCounter
from engine.records import LoggedDecision, SlotChoice
from engine.rules import FrequencyCap
from engine.types import Candidate

CAP = FrequencyCap("twice-a-day", max=2, window_seconds=86_400.0, per="group")


def decision(event_id: str, user_id: str, ts: float) -> LoggedDecision:
    return LoggedDecision(event_id, ts, user_id, {}, {}, (Candidate("sku"),), (SlotChoice("sku", 1.0, (1.0,)),),
                          "v", False, ts + 60)


def shows(counter: FrequencyCounter, user_id: str) -> int:
    limits = counter.limits([CAP], user_id, [Candidate("sku")], num_results=5, now=time.time())
    return CAP.max - next((left for _, left, _ in limits.budgets), CAP.max) if not limits.removed else CAP.max


def test_a_user_forgotten_while_the_log_is_read_is_not_counted_back() -> None:
    reading, forgotten = threading.Event(), threading.Event()

    def read_since(_: float):  # type: ignore[no-untyped-def]
        yield decision("old", "alice", time.time() - 60)
        reading.set()
        forgotten.wait(5)  # ForgetUser runs while the read is under way
        yield decision("older", "bob", time.time() - 30)

    counter = FrequencyCounter(read_since)
    installing = threading.Thread(target=counter.install, args=([CAP],))
    installing.start()
    assert reading.wait(5)
    counter.forget("alice")
    forgotten.set()
    installing.join(5)
    assert shows(counter, "alice") == 0 and shows(counter, "bob") == 1


def test_a_decision_in_flight_when_its_user_is_forgotten_is_not_counted() -> None:
    counter = FrequencyCounter(lambda _: iter(()))
    counter.install([CAP])
    counter.record(decision("e1", "alice", time.time()))
    assert shows(counter, "alice") == 1
    in_flight = decision("e2", "alice", time.time())  # prepared now, committed after the forget
    time.sleep(0.01)
    counter.forget("alice")
    counter.record(in_flight)
    assert shows(counter, "alice") == 0
    time.sleep(0.01)
    counter.record(decision("e3", "alice", time.time()))  # the user comes back: counted afresh
    assert shows(counter, "alice") == 1
