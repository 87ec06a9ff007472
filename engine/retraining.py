"""Scheduled re-training of the LightFM embeddings, and how every replica gets the new artifact.

The learner (a server of role ``all``, or ``recbandit learn``) runs :class:`Retraining`: every
``--embeddings-retrain-interval`` it counts the positive rewards reported since the data the
embeddings in use were trained on (``data_until`` in their metadata), and when there are at least
``--embeddings-retrain-min-interactions`` it asks the trainer for new embeddings. The trainer (an
:class:`EmbeddingsTrainer`: the composition root hands in LightFM's, from ``training``) fits them,
scores them and the embeddings in use on the same time-ordered holdout, tracks the run in MLflow,
and writes the artifact only if it scores no worse. A written artifact is swapped in here and
published to the store, from which every serving process and replica installs it
(:class:`EmbeddingsFollower`) under the same name, so every decision names the same artifact.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from engine.embeddings import Embeddings, artifact_bytes, artifact_name, current_artifact, install_artifact
from engine.eventlog import EventLog
from engine.retrieval import LiveEmbeddings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TrainedEmbeddings:
    """What one training gave: the embeddings to publish (None when they scored worse than the ones
    in use), their holdout metrics, why they are or are not published, and the time of the newest
    interaction they learned from."""

    embeddings: Embeddings | None
    metrics: Mapping[str, float] = field(default_factory=dict)
    reason: str = ""
    data_until: float = 0.0


class EmbeddingsTrainer(Protocol):
    """Trains new embeddings from the store, judged against ``incumbent`` (the ones in use, or None).
    It writes nothing into the data directory: :class:`Retraining` publishes what it returns."""

    def train(self, incumbent: Embeddings | None) -> TrainedEmbeddings: ...


class Retraining:
    """The learner's schedule: a thread that looks every ``interval`` seconds and trains when at
    least ``min_interactions`` new positive rewards arrived (:meth:`run_once`). Publishes go to the
    store under the learner's ``term`` (:meth:`EventLog.take_learner_term`; None for a single
    process), so a learner whose lease ended cannot publish."""

    def __init__(self, event_log: EventLog, embeddings: LiveEmbeddings, trainer: EmbeddingsTrainer, *,
                 interval: float, min_interactions: int, stopping: threading.Event, term: int | None = None) -> None:
        self.log = event_log
        self.embeddings = embeddings
        self.trainer = trainer
        self.interval = interval
        self.min_interactions = min_interactions
        self.term = term
        self._stopping = stopping
        self._thread = threading.Thread(target=self._run, name="embeddings-retraining", daemon=True)
        self.trainings = 0  # trainings run (published or not)
        self.published: list[str] = []  # the artifacts published, oldest first
        self._tried_until = 0.0  # the data the last training learned from, published or not

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stopping.wait(self.interval):
            try:
                self.run_once()
            except Exception:  # the next interval tries again; serving goes on with the embeddings in use
                log.exception("scheduled embeddings training failed")

    def run_once(self) -> TrainedEmbeddings | None:
        """Train if enough new interactions arrived; publish and swap in what scores no worse.
        Returns the training's outcome, or None when it was not due."""
        live = self.embeddings.current
        incumbent = live.embeddings if live is not None else None
        since = max(float(incumbent.metadata.get("data_until", 0.0)) if incumbent is not None else 0.0,
                    self._tried_until)  # a training that was not published is not tried again on the same data
        new = self.log.reader.positive_rewards_since(since)
        if new < self.min_interactions:
            log.debug("embeddings: %d new interactions, fewer than %d: not training", new, self.min_interactions)
            return None
        log.info("embeddings: %d new interactions; training", new)
        trained = self.trainer.train(incumbent)
        self.trainings += 1
        self._tried_until = max(self._tried_until, trained.data_until)
        if trained.embeddings is None or self._stopping.is_set():
            log.info("embeddings: not published (%s)", trained.reason if trained.embeddings is None else "stopping")
            return trained
        name, data = artifact_name(), artifact_bytes(trained.embeddings)
        self.log.publish_embeddings(name, data, term=self.term)  # the store first: replicas and the learner agree
        install(self.embeddings.data_dir, name, data, trained.metrics)
        self.embeddings.reload()
        self.published.append(name)
        log.info("embeddings %s published (%s)", name, trained.reason)
        return trained


def install(data_dir: Path, name: str, data: bytes, metrics: Mapping[str, object] | None = None) -> Path:
    """Install published artifact bytes into ``data_dir`` under ``name``, once they load: a manifest
    never names an artifact that cannot be served."""
    Embeddings.load(io.BytesIO(data), ann_threshold=None)  # type: ignore[arg-type]  # raises if it is not one
    return install_artifact(data_dir, name, lambda tmp: Path(tmp).write_bytes(data), metrics)


class EmbeddingsFollower:
    """A serving process's embeddings: the newest artifact the learner published to the store,
    installed into this data directory under its own name and swapped in."""

    def __init__(self, event_log: EventLog, embeddings: LiveEmbeddings, data_dir: Path, *,
                 poll_interval: float, stopping: threading.Event) -> None:
        self.log = event_log
        self.embeddings = embeddings
        self.data_dir = data_dir
        self.poll_interval = poll_interval
        self._stopping = stopping
        self._seen = 0
        self._thread = threading.Thread(target=self._run, name="embeddings-follower", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def follow(self) -> bool:
        """Install and swap in a newer published artifact; True when the embeddings in use changed."""
        found = self.log.newest_embeddings(self._seen)
        if found is None:
            return False
        artifact_id, name, data = found
        present = current_artifact(self.data_dir)
        if present is None or present.name != name:  # a learner beside us may have installed it here already
            install(self.data_dir, name, data)
        changed = self.embeddings.reload()
        self._seen = artifact_id  # only once it is in use: a failure is tried again at the next look
        return changed

    def _run(self) -> None:
        failed = False
        while not self._stopping.wait(self.poll_interval):
            try:
                self.follow()
                failed = False
            except Exception as error:  # the store is away or the artifact is bad: keep the embeddings in use
                if not failed:
                    log.error("cannot follow the learner's embeddings (serving the ones in use): %s", error)
                failed = True
