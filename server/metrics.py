"""Prometheus metrics of one server, served in the text format on ``--metrics-port`` (off by default).

Every server has its own registry (several servers in one process, as in the tests, never mix).
The endpoint has no authentication, so it listens on ``--metrics-host`` (127.0.0.1 unless said
otherwise) and holds no user id, token or free text beyond the first :data:`MAX_LABELS` reward
labels.

- ``recbandit_rpc_requests_total{method,code}``, ``recbandit_rpc_duration_seconds{method}`` and
  ``recbandit_rpc_in_flight``: every call the servicers see (Health excluded).
- ``recbandit_decisions_total{model}``: decisions by the model that made them (its id, without the
  count of examples learned, so that the label set stays small).
- ``recbandit_rewards_total{label}``: new rewards by label: those of ``--reward-labels`` when it
  is set (any other is ``other``), else the first :data:`MAX_LABELS` seen.
- ``recbandit_outcomes_learned_total{source}``: final outcomes learned, by where their reward came
  from: ``reward``, ``sum`` or ``default`` (the window closed without one: the default-reward count).
- ``recbandit_learned_reward_total{model,choice}`` (minus
  ``recbandit_learned_negative_reward_total``, the sizes of negative rewards: a counter only grows)
  over ``recbandit_learned_slots_total{model,choice}``: the online reward per slot of each model,
  for exploring and exploiting slots apart (``choice`` is ``explore`` when the slot's item was not
  the most probable of its pmf). In PromQL: ``(rate(recbandit_learned_reward_total[1h]) -
  rate(recbandit_learned_negative_reward_total[1h])) / rate(recbandit_learned_slots_total[1h])``.
- ``recbandit_arm_decisions_total{arm}``, ``recbandit_arm_learned_slots_total{arm}`` and
  ``recbandit_arm_rewarded_slots_total{arm}``: per campaign arm (``recbandit`` or ``control``,
  ``--control-share``), decisions committed, slots whose final outcome was learned, and those of
  them whose final reward came from rewards (not the default reward) and was above 0. Rewarded
  over learned slots is each arm's online CTR when clicks are the rewards:
  ``rate(recbandit_arm_rewarded_slots_total[1h]) / rate(recbandit_arm_learned_slots_total[1h])``.
- ``recbandit_undelivered_decisions_total``: decisions committed whose caller was gone.
- ``recbandit_events_pruned_total``: events ``--retention`` deleted.
- ``recbandit_reward_delay_seconds``: from a decision to the reward that made its slot final
  (aggregation ``earliest``).
- ``recbandit_event_log_commit_seconds``: each event-log transaction (a group of writes).
- ``recbandit_examples_learned``, ``recbandit_learner_lag_examples`` (final rewards committed and
  not yet learned), ``recbandit_learner_lag_seconds`` (how long the oldest of them has waited),
  ``recbandit_model_age_seconds`` (since the model last learned or was replaced),
  ``recbandit_seconds_since_checkpoint`` and ``recbandit_event_log_writable``.
- ``recbandit_apprentice_mode`` (1: apprentice, 0: online) and, where the learner runs,
  ``recbandit_apprentice_slots``, ``recbandit_apprentice_match_rate``,
  ``recbandit_apprentice_baseline_reward``, ``recbandit_apprentice_model_reward`` and
  ``recbandit_apprentice_identified_share`` (:mod:`engine.apprentice`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from engine.apprentice import APPRENTICE, ApprenticeStats
from engine.core import Engine
from engine.observer import LearnedSlot, Observer
from engine.records import CONTROL_ARM, RECBANDIT_ARM
from server.errors import InFlight

MAX_LABELS = 32
"""Reward labels come from clients, model ids change with every policy: past this many distinct
values of one label, the rest are counted as ``other``."""

DURATION_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
SCRAPE_TIMEOUT = 10.0
"""Seconds a scrape waits for the engine's gauges."""
DELAY_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 6 * 3600, 24 * 3600)
ARMS = (RECBANDIT_ARM, CONTROL_ARM)
"""The values of the ``arm`` label: a campaign's two arms."""


def reward_label_set(text: str) -> frozenset[str]:
    """``--reward-labels``: the comma-separated labels that get series of their own."""
    return frozenset(label.strip() for label in text.split(",") if label.strip())


class Metrics(Observer):
    """The server's metrics; :meth:`serve` starts their HTTP endpoint. The engine reports to it
    (``engine.observe(metrics)``): commits, learned outcomes, undelivered decisions."""

    def __init__(self, engine: Engine, in_flight: InFlight, reward_labels: frozenset[str] = frozenset()) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

        disable_created_metrics()  # no *_created series: a scrape is counters and gauges only
        self.registry = registry = CollectorRegistry()
        self._requests = Counter("recbandit_rpc_requests", "RPCs by method and status code.",
                                 ["method", "code"], registry=registry)
        self._duration = Histogram("recbandit_rpc_duration_seconds", "Time in the servicer, by method.",
                                   ["method"], buckets=DURATION_BUCKETS, registry=registry)
        self._decisions = Counter("recbandit_decisions", "Recommend decisions by the model that made them.",
                                  ["model"], registry=registry)
        self._rewards = Counter("recbandit_rewards", "New rewards by label.", ["label"], registry=registry)
        self._arm_decisions = Counter("recbandit_arm_decisions", "Decisions committed, by campaign arm.",
                                      ["arm"], registry=registry)
        self._arm_slots = Counter("recbandit_arm_learned_slots", "Slots whose final outcome was learned, by campaign arm.",
                                  ["arm"], registry=registry)
        self._arm_rewarded = Counter("recbandit_arm_rewarded_slots",
                                     "Slots learned with a final reward above 0 (not the default), by campaign arm.",
                                     ["arm"], registry=registry)
        for arm in ARMS:  # both arms from the first scrape: a ratio per arm needs no absent series
            for counter in (self._arm_decisions, self._arm_slots, self._arm_rewarded):
                counter.labels(arm)
        self._outcomes = Counter("recbandit_outcomes_learned", "Final outcomes learned, by source: reward, sum or default.",
                                 ["source"], registry=registry)
        self._learned_reward = Counter("recbandit_learned_reward", "Sum of the positive rewards learned, by model and choice.",
                                       ["model", "choice"], registry=registry)
        self._learned_loss = Counter("recbandit_learned_negative_reward",
                                     "Sum of the sizes of the negative rewards learned, by model and choice.",
                                     ["model", "choice"], registry=registry)
        self._learned_slots = Counter("recbandit_learned_slots", "Slots learned, by model and choice (explore or exploit).",
                                      ["model", "choice"], registry=registry)
        self._pruned = Counter("recbandit_events_pruned", "Events retention deleted (final, learned, older than it).",
                               registry=registry)
        self._undelivered = Counter("recbandit_undelivered_decisions", "Decisions committed whose caller was gone.",
                                    registry=registry)
        self._delay = Histogram("recbandit_reward_delay_seconds", "From a decision to the reward that made its slot final.",
                                buckets=DELAY_BUCKETS, registry=registry)
        self._commits = Histogram("recbandit_event_log_commit_seconds", "Each event-log transaction (a group of writes).",
                                  buckets=DURATION_BUCKETS, registry=registry)
        self._labels = reward_labels  # set: the only reward labels with series of their own
        self._seen: dict[str, set[str]] = {"label": set(), "model": set()}
        self._seen_lock = threading.Lock()
        Gauge("recbandit_rpc_in_flight", "Calls being served now.", registry=registry).set_function(
            lambda: in_flight.count)
        registry.register(EngineGauges(engine))

    def record_rpc(self, method: str, code: str, seconds: float) -> None:
        self._requests.labels(method, code).inc()
        self._duration.labels(method).observe(seconds)

    # -- what the engine reports (Observer) ------------------------------------------------------

    def decided(self, model: str, arm: str = RECBANDIT_ARM) -> None:
        self._decisions.labels(self._bounded("model", model)).inc()
        self._arm_decisions.labels(_arm(arm)).inc()

    def rewarded(self, label: str) -> None:
        if self._labels:  # the operator's list: a client cannot take the series from it
            self._rewards.labels(label if label in self._labels else "other").inc()
        else:
            self._rewards.labels(self._bounded("label", label or "unlabelled")).inc()

    def committed(self, seconds: float, operations: int) -> None:
        self._commits.observe(seconds)

    def learned(self, slot: LearnedSlot) -> None:
        self._outcomes.labels(slot.source).inc()
        labels = (self._bounded("model", slot.model), "explore" if slot.exploring else "exploit")
        self._learned_slots.labels(*labels).inc()
        if slot.reward >= 0:  # a counter only grows: negative rewards are counted apart, by size
            self._learned_reward.labels(*labels).inc(slot.reward)
        else:
            self._learned_loss.labels(*labels).inc(-slot.reward)
        if slot.reward_delay is not None:
            self._delay.observe(max(0.0, slot.reward_delay))
        arm = _arm(slot.arm)
        self._arm_slots.labels(arm).inc()
        if slot.reward > 0 and slot.source != "default":
            self._arm_rewarded.labels(arm).inc()

    def undelivered(self) -> None:
        self._undelivered.inc()

    def pruned(self, events: int) -> None:
        self._pruned.inc(events)

    def _bounded(self, label: str, value: str) -> str:
        """``value``, or ``other`` once :data:`MAX_LABELS` values of ``label`` have been seen."""
        seen = self._seen[label]
        if value not in seen:
            with self._seen_lock:
                if len(seen) < MAX_LABELS:
                    seen.add(value)
                elif value not in seen:
                    return "other"
        return value

    def serve(self, host: str, port: int) -> Any:
        """Serve ``/metrics`` on ``host:port`` from a daemon thread; return the HTTP server (to shut down)."""
        from prometheus_client import start_http_server

        server, _ = start_http_server(port, addr=host, registry=self.registry)
        return server


def _arm(arm: str) -> str:
    """A campaign arm as its label: one of :data:`ARMS` (a log holds no other; kept bounded anyway)."""
    return arm if arm in ARMS else RECBANDIT_ARM


class EngineGauges:
    """The gauges read from the engine, all of them at once per scrape, on one thread of their own.

    The endpoint serves every scrape on a new thread, and a thread that reads the event log opens
    a connection of its own for its life: reading on one lasting thread keeps it to one connection.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metrics-reader")

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        for name, help_text, value in self._reader.submit(self._read).result(timeout=SCRAPE_TIMEOUT):
            yield GaugeMetricFamily(name, help_text, value=value)

    def _read(self) -> list[tuple[str, str, float]]:
        engine = self._engine
        info = engine.model_info()
        checkpoint = info.last_checkpoint_ts
        return [
            ("recbandit_examples_learned", "Final rewards the model has learned.", info.examples_learned),
            ("recbandit_learner_lag_examples", "Final rewards committed and not yet learned.", info.examples_pending),
            ("recbandit_learner_lag_seconds", "How long the oldest final reward not yet learned has waited.",
             engine.learner_lag_seconds()),
            ("recbandit_model_age_seconds", "Seconds since the model last learned or was replaced.",
             engine.model_age_seconds()),
            ("recbandit_seconds_since_checkpoint", "Seconds since the model was last checkpointed (-1: never).",
             -1.0 if checkpoint is None else time.time() - checkpoint),
            ("recbandit_event_log_writable", "1 while writes to the event log succeed, else 0.",
             float(engine.log.storage_healthy)),
            ("recbandit_apprentice_mode", "1 while apprentice mode serves the storefront's order, 0 online.",
             float(info.serving_mode.mode == APPRENTICE)),
            *_apprentice_gauges(info.apprentice),
        ]


def _apprentice_gauges(stats: ApprenticeStats | None) -> list[tuple[str, str, float]]:
    """Apprentice mode's figures (engine.apprentice), where the learner tallies them (roles all and learn)."""
    if stats is None:
        return []
    return [
        ("recbandit_apprentice_slots", "Newest learned apprentice slots the figures are over.", float(stats.slots)),
        ("recbandit_apprentice_match_rate", "Share of apprentice slots where the model's choice is the baseline.",
         stats.match_rate),
        ("recbandit_apprentice_baseline_reward", "The baseline's reward per apprentice slot (IPS; observed at "
         "exploration 0).", stats.baseline_reward),
        ("recbandit_apprentice_model_reward", "The model's reward per apprentice slot, inverse-propensity weighted; "
         "a lower bound while the identified share is below 1.",
         stats.model_reward),
        ("recbandit_apprentice_identified_share", "Share of apprentice slots where the model's choice could be "
         "served (its IPS estimate is identified).", stats.identified_share),
    ]
