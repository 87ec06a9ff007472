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

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from engine.embeddings import Embeddings, current_artifact, install_artifact
from engine.eventlog import EventLog
from engine.retrieval import LiveEmbeddings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TrainedEmbeddings:
    """What one training gave: the artifact it wrote (None when it scored worse than the embeddings
    in use and was not written), its holdout metrics, why it was or was not published, and the
    time of the newest interaction it learned from."""

    path: Path | None
    metrics: Mapping[str, float] = field(default_factory=dict)
    reason: str = ""
    data_until: float = 0.0


class EmbeddingsTrainer(Protocol):
    """Trains new embeddings from the store, judged against ``incumbent`` (the ones in use, or None)."""

    def train(self, incumbent: Embeddings | None) -> TrainedEmbeddings: ...


class Retraining:
    """The learner's schedule: a thread that looks every ``interval`` seconds and trains when at
    least ``min_interactions`` new positive rewards arrived (:meth:`run_once`)."""

    def __init__(self, event_log: EventLog, embeddings: LiveEmbeddings, trainer: EmbeddingsTrainer, *,
                 interval: float, min_interactions: int, stopping: threading.Event) -> None:
        self.log = event_log
        self.embeddings = embeddings
        self.trainer = trainer
        self.interval = interval
        self.min_interactions = min_interactions
        self._stopping = stopping
        self._thread = threading.Thread(target=self._run, name="embeddings-retraining", daemon=True)
        self.trainings = 0  # trainings run (published or not)
        self._tried_until = 0.0  # the data the last training learned from, published or not

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        if self._thread.is_alive():
            self._thread.join()

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
        if trained.path is None:
            log.info("embeddings: not published (%s)", trained.reason)
            return trained
        self.log.publish_embeddings(trained.path.name, trained.path.read_bytes())
        self.embeddings.reload()
        log.info("embeddings %s published (%s)", trained.path.name, trained.reason)
        return trained


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

    def follow(self) -> bool:
        """Install and swap in a newer published artifact; True when the embeddings in use changed."""
        found = self.log.newest_embeddings(self._seen)
        if found is None:
            return False
        artifact_id, name, data = found
        present = current_artifact(self.data_dir)
        if present is None or present.name != name:  # a learner beside us may have written it here already
            install_artifact(self.data_dir, name, lambda tmp: Path(tmp).write_bytes(data))
        self._seen = artifact_id
        return self.embeddings.reload()

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
