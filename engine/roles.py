"""Roles: who decides, who learns, and how the model gets from one to the other.

- ``all`` (the default): one process serves and learns; its checkpoints are files in the data
  directory (:mod:`engine.checkpoint`).
- ``learn``: the one learner of a store. It joins rewards to decisions, closes reward windows,
  learns every final slot once, and publishes the model with its position as a snapshot in the
  store (:class:`StoreSnapshots`), the two in one transaction. It holds the store's learner lease;
  a second one waits as a standby and takes over, from the last snapshot, when the first dies.
- ``serve``: decides and logs. Its rewards wait for the learner to join them
  (:attr:`engine.eventlog.EventLog.join_later`), and its model follows the newest snapshot
  (:class:`ModelFollower`), swapped in between two decisions.

A server of role ``all`` holds the learner lease too, so it never learns beside a learner.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from engine.bandit import BanditConfig, VWBandit
from engine.checkpoint import Checkpoint, atomic_write, check_example_format
from engine.errors import CorruptCheckpoint, LeaseLost, ModelNotReady, PreconditionFailed, StartupRefused
from engine.eventlog import EventLog
from engine.learning import HoldsServedModel, ServedModel
from engine.observer import Observer
from engine.storage import Claim

log = logging.getLogger(__name__)

ROLES = ("all", "serve", "learn")
LEARNER_LEASE = "learner"
LEASE_CHECK_INTERVAL = 0.5
"""Seconds between a learner's looks at its lease: one whose lease ended (its PostgreSQL connection
was cut) exits within this, before a standby that took the lease starts (after :data:`LEASE_GRACE`)."""
LEASE_GRACE = 2.0


class LeaseWatch:
    """Looks at a learner's lease every :data:`LEASE_CHECK_INTERVAL` seconds. When it has ended (its
    PostgreSQL connection was cut), it takes it again at once if nobody else has; otherwise a
    standby has it, and ``lost`` is called: the learner must stop writing."""

    def __init__(self, event_log: EventLog, lease: Claim, stopping: threading.Event, lost: Callable[[], None]) -> None:
        self.log, self.lease, self._stopping, self._lost = event_log, lease, stopping, lost
        threading.Thread(target=self._watch, name="lease-watch", daemon=True).start()

    def _watch(self) -> None:
        while not self._stopping.wait(LEASE_CHECK_INTERVAL):
            if self.lease.held():
                continue
            again = self.log.database.try_lock(LEARNER_LEASE)
            if again is None:
                self._lost()
                return
            log.warning("the learner lease's connection to the store was cut; took the lease again")
            self.lease.release()
            self.lease = again

    def release(self) -> None:
        self.lease.release()
SNAPSHOTS_DIR = "snapshots"
"""Where a process keeps the model files of the snapshots it loaded (in its data directory)."""


def take_learner_lease(event_log: EventLog, *, wait: bool, stopping: threading.Event) -> Claim:
    """The store's learner lease: at once, or refused (``wait`` False); or, as a standby, once the
    holder lets it go or dies (its connection or file lock ends with it)."""
    announced = False
    while True:
        claim = event_log.database.try_lock(LEARNER_LEASE)
        if claim is not None:
            if announced:
                log.info("standby: took the learner lease of %s", event_log.path)
                stopping.wait(LEASE_GRACE)  # the learner that lost it stops within LEASE_CHECK_INTERVAL
            return claim
        if not wait:
            raise StartupRefused(f"another recbandit learner (or server) learns from the store {event_log.path}: "
                                 "one learner per store")
        if not announced:
            log.info("standby: another learner holds the lease of %s; waiting to take over", event_log.path)
            announced = True
        if stopping.wait(1.0):
            raise StartupRefused("stopped while waiting for the learner lease")


class StoreSnapshots:
    """The learner's checkpoints as snapshots in the store: the manifest (with the learner's
    position) and the model's bytes in one row, written in one transaction; readers load the newest.
    Model files are written to ``workdir`` to be loaded by VW.

    A learner publishes under its ``term`` (:meth:`EventLog.take_learner_term`): once a standby has
    taken the lease and a term of its own, a publish of the learner before it is refused, and
    ``lost`` is called, however late that learner hears that its lease ended.
    """

    def __init__(self, event_log: EventLog, workdir: Path, *, term: int | None = None,
                 lost: Callable[[], None] | None = None) -> None:
        self.log = event_log
        self.workdir = workdir
        self.term = term
        self._lost = lost
        workdir.mkdir(mode=0o700, parents=True, exist_ok=True)

    def read(self, after: int = 0) -> tuple[int, Checkpoint, Path] | None:
        """The newest snapshot above ``after``: its id, manifest and model file; None when there is none."""
        found = self.log.newest_snapshot(after)
        if found is None:
            return None
        snapshot_id, manifest, model = found
        try:
            checkpoint = Checkpoint(**json.loads(manifest))
        except (TypeError, ValueError) as error:
            raise CorruptCheckpoint(self.workdir, f"snapshot {snapshot_id} of the store is not a checkpoint ({error})") from None
        path = self.workdir / f"snapshot-{snapshot_id}-{os.getpid()}.vw"  # processes sharing a folder keep apart
        atomic_write(path, lambda tmp: Path(tmp).write_bytes(model))
        for old in self.workdir.glob(f"snapshot-*-{os.getpid()}.vw"):
            if old != path:
                old.unlink(missing_ok=True)
        return snapshot_id, checkpoint, path

    def write(self, save_model: Callable[[str], None], checkpoint: Checkpoint) -> Checkpoint:
        """Publish the model ``save_model`` writes, with ``checkpoint`` as its manifest."""
        path = self.workdir / f".publishing-{os.getpid()}.vw"
        try:
            save_model(str(path))
            model = path.read_bytes()
        finally:
            path.unlink(missing_ok=True)
        try:
            self.log.publish_snapshot(json.dumps(asdict(checkpoint)), checkpoint.learned_seq, model, term=self.term)
        except LeaseLost:
            if self._lost is not None:
                self._lost()
            raise
        return checkpoint


class ModelFollower(HoldsServedModel):
    """A serving process's model: the newest snapshot the learner published, polled every
    ``poll_interval`` seconds and swapped in whole (decisions in flight finish on the one they
    started with). Learning, checkpoints and policy swaps are the learner's: refused here."""

    def __init__(self, event_log: EventLog, snapshots: StoreSnapshots, bandit: BanditConfig,
                 stopping: threading.Event, poll_interval: float) -> None:
        self.log = event_log
        self.snapshots = snapshots
        self.poll_interval = poll_interval
        self.observer = Observer()
        self._stopping = stopping
        self._snapshot_id = 0
        self.served = ServedModel(VWBandit(bandit), "vw-awaiting-learner")
        self.examples_learned = self.learned_seq = 0
        self.last_checkpoint: float | None = None
        self.updated = time.time()
        self._swapped = threading.Condition()
        try:
            if not self.follow():
                log.warning("no snapshot in the store yet: serving a fresh model until the learner "
                            "(recbandit learn) publishes one")
        except Exception as error:  # served fresh until the next look
            log.error("cannot load the learner's snapshot yet (serving a fresh model): %s", error)
        self._thread = threading.Thread(target=self._poll, name="model-follower", daemon=True)

    def follow(self) -> bool:
        """Load the newest snapshot if there is a newer one; True when the model changed."""
        found = self.snapshots.read(self._snapshot_id)
        if found is None:
            return False
        snapshot_id, checkpoint, path = found
        # a snapshot of another example layout is refused: the model in hand is kept and the next look tries again
        check_example_format(checkpoint, f"the learner's snapshot {snapshot_id}", self.snapshots.workdir)
        saved = BanditConfig.from_dict(checkpoint.bandit)
        model = VWBandit(saved, model_path=str(path))
        with self._swapped:
            self.served = ServedModel(model, checkpoint.model_id)
            self.examples_learned, self.learned_seq = checkpoint.examples_learned, checkpoint.learned_seq
            self.last_checkpoint, self._snapshot_id, self.updated = checkpoint.ts, snapshot_id, time.time()
            self._swapped.notify_all()
        return True

    def _poll(self) -> None:
        failed = False
        while not self._stopping.wait(self.poll_interval):
            try:
                self.follow()
                failed = False
            except Exception as error:  # the store is away: keep serving the model in hand
                if not failed:
                    log.error("cannot follow the learner's snapshots (serving the last one): %s", error)
                failed = True

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        if self._thread.is_alive():
            self._thread.join()

    def wait_until_learned(self, timeout: float = 10.0) -> bool:
        """Block until a snapshot has learned every outcome committed so far (tests use this)."""
        target = self.log.last_outcome_seq()
        with self._swapped:
            return self._swapped.wait_for(lambda: self.learned_seq >= target, timeout)

    def lag_seconds(self) -> float:
        committed = self.log.outcome_time_after(self.learned_seq)
        return 0.0 if committed is None else max(0.0, time.time() - committed)

    @contextmanager
    def at_rest(self, timeout: float) -> Iterator[tuple[VWBandit, str]]:
        served, examples = self.served, self.examples_learned
        yield served.bandit, served.version(examples)

    def remember(self, *_: object) -> None:
        pass  # the learner reads decisions from the store

    def forget(self, event_ids: Iterable[str]) -> None:
        pass

    def learn_soon(self) -> None:
        pass

    def learn_pending(self) -> int:
        return 0

    def close_windows(self) -> int:
        return 0

    def checkpoint(self) -> Checkpoint:
        raise PreconditionFailed("checkpoint", "the learner (recbandit learn) publishes the model; "
                                               "this process serves its snapshots")

    def swap_policy(self, *_: object) -> None:
        raise ModelNotReady("a serving process follows the learner's model; give the learner the registry")
