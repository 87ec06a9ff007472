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


def test_a_returning_user_keeps_only_the_items_of_the_window_and_the_caps_still_bind() -> None:
    """A user who comes back every hour for a month is never dropped whole: the items they saw
    before the window must leave one by one, or their counts grow for as long as they return."""
    cap = FrequencyCap("once-a-day-per-item", max=1, window_seconds=86_400.0, per="item")
    counter = FrequencyCounter(lambda _: ())
    counter.install([cap], now=0.0)
    start = time.time() - 30 * 86_400
    for hour in range(30 * 24):  # a new item every hour
        ts = start + hour * 3600
        sku = f"sku-{hour}"
        counter.record(LoggedDecision(f"e{hour}", ts, "regular", {}, {}, (Candidate(sku),),
                                      (SlotChoice(sku, 1.0, (1.0,)),), "v", False, ts + 60))
    (count,) = counter._counts.values()
    assert len(count.users["regular"].times) <= 2 * 25 + 16  # about a day's items, not a month's 720
    now = start + (30 * 24 - 1) * 3600
    recent, old = [Candidate(f"sku-{30 * 24 - 1 - h}") for h in range(23)], [Candidate("sku-0"), Candidate("sku-100")]
    limits = counter.limits([cap], "regular", recent + old, num_results=1, now=now)
    assert set(limits.removed) == set(range(23))  # the day's items are capped, the month-old ones are not
