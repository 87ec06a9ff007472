"""Prometheus metrics of one server, served in the text format on ``--metrics-port`` (off by default).

Every server has its own registry (several servers in one process, as in the tests, never mix).
The endpoint has no authentication, so it listens on ``--metrics-host`` (127.0.0.1 unless said
otherwise) and holds no user id, token or free text beyond the first :data:`MAX_LABELS` reward
labels.

- ``recbandit_rpc_requests_total{method,code}``, ``recbandit_rpc_duration_seconds{method}`` and
  ``recbandit_rpc_in_flight``: every call the servicers see (Health excluded).
- ``recbandit_decisions_total{model}``: decisions by the model that made them (its id, without the
  count of examples learned, so that the label set stays small).
- ``recbandit_rewards_total{label}``: new rewards by label.
- ``recbandit_examples_learned``, ``recbandit_learner_lag_examples`` (final rewards committed and
  not yet learned), ``recbandit_seconds_since_checkpoint`` and ``recbandit_event_log_writable``.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from engine.core import Engine
from server.errors import InFlight

MAX_LABELS = 32
"""Reward labels come from clients: past this many distinct ones, they are counted as ``other``."""

DURATION_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """The server's metrics; :meth:`serve` starts their HTTP endpoint."""

    def __init__(self, engine: Engine, in_flight: InFlight) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = registry = CollectorRegistry()
        self._requests = Counter("recbandit_rpc_requests", "RPCs by method and status code.",
                                 ["method", "code"], registry=registry)
        self._duration = Histogram("recbandit_rpc_duration_seconds", "Time in the servicer, by method.",
                                   ["method"], buckets=DURATION_BUCKETS, registry=registry)
        self._decisions = Counter("recbandit_decisions", "Recommend decisions by the model that made them.",
                                  ["model"], registry=registry)
        self._rewards = Counter("recbandit_rewards", "New rewards by label.", ["label"], registry=registry)
        self._labels: set[str] = set()
        self._labels_lock = threading.Lock()
        gauges = {
            "recbandit_rpc_in_flight": ("Calls being served now.", lambda: in_flight.count),
            "recbandit_examples_learned": ("Final rewards the model has learned.",
                                           lambda: engine.model_info().examples_learned),
            "recbandit_learner_lag_examples": ("Final rewards committed and not yet learned.",
                                               lambda: engine.model_info().examples_pending),
            "recbandit_seconds_since_checkpoint": ("Seconds since the model was last checkpointed (-1: never).",
                                                   lambda: _since(engine.model_info().last_checkpoint_ts)),
            "recbandit_event_log_writable": ("1 while writes to the event log succeed, else 0.",
                                             lambda: float(engine.log.storage_healthy)),
        }
        for name, (help_text, read) in gauges.items():
            Gauge(name, help_text, registry=registry).set_function(read)

    def observe(self, method: str, code: str, seconds: float) -> None:
        self._requests.labels(method, code).inc()
        self._duration.labels(method).observe(seconds)

    def decided(self, model_version: str) -> None:
        self._decisions.labels(model_version.split("@", 1)[0]).inc()

    def rewarded(self, label: str) -> None:
        if label not in self._labels:
            with self._labels_lock:
                if len(self._labels) < MAX_LABELS:
                    self._labels.add(label)
                else:
                    label = "other"
        self._rewards.labels(label or "unlabelled").inc()

    def serve(self, host: str, port: int) -> Any:
        """Serve ``/metrics`` on ``host:port`` from a daemon thread; return the HTTP server (to shut down)."""
        from prometheus_client import start_http_server

        server, _ = start_http_server(port, addr=host, registry=self.registry)
        return server


def _since(ts: float | None) -> float:
    return -1.0 if ts is None else time.time() - ts
