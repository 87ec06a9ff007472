"""The served VW model and how it learns online: final outcomes, reward windows, checkpoints, swaps.

:class:`Learner` owns the model the engine decides with. Its background thread closes reward
windows (default rewards, ``sum`` aggregation) and checkpoints the model, and it learns from the
log's ``outcomes`` in ``seq`` order — the same code path re-learns after a restart.

A new decision's VW lines are remembered (:class:`RecentExamples`), so that learning its reward
needs no log read or encoding; older decisions are read back from the log.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from engine.apprentice import Apprentice, ApprenticeSlot, apprentice_slots
from engine.bandit import EXAMPLE_FORMAT, BanditConfig, VWBandit, decision_lines
from engine.checkpoint import Checkpoint, check_example_format, check_fits_log, read_checkpoint, write_checkpoint
from engine.errors import CorruptCheckpoint, ModelNotReady, RecbanditError, StorageUnavailable
from engine.eventlog import EventLog
from engine.observer import LearnedSlot, Observer, model_id, report
from engine.records import LoggedDecision, Outcome
from engine.retention import PRUNE_INTERVAL, Retention

if TYPE_CHECKING:
    from engine.roles import StoreSnapshots

log = logging.getLogger(__name__)

LEARN_BATCH_DELAY = 0.005
"""Seconds the learner waits after a reward wakes it, so that it learns rewards in batches."""

RECENT_DECISIONS = 65_536
RECENT_CHARS = 96 << 20
"""How many recent decisions keep their VW lines in memory for learning, and at most how much text
(older ones are read back from the log). Lines of catalog and repeated candidates are shared, so
the text limit binds only when candidates' features differ from request to request."""


@dataclass(frozen=True, slots=True)
class RegisteredPolicy:
    """Where a served model came from in a model registry: ``recbandit-policy`` version 3 @champion."""

    model_name: str
    version: str
    alias: str


@dataclass(frozen=True, slots=True)
class ServedModel:
    """The model decisions are drawn from and where it came from: one value, replaced whole by a swap,
    so that a reader never pairs one policy's name with another's model."""

    bandit: VWBandit
    model_id: str
    registered_policy: RegisteredPolicy | None = None

    def version(self, examples_learned: int) -> str:
        """``<model id>@<examples learned online>``, e.g. ``recbandit-policy-v3@120``."""
        return f"{self.model_id}@{examples_learned}"


class HoldsServedModel:
    """What decisions read of whatever holds the served model: the learner, or a serving process's
    follower of its snapshots (:class:`engine.roles.ModelFollower`)."""

    served: ServedModel
    examples_learned: int

    @property
    def bandit(self) -> VWBandit:
        return self.served.bandit

    @property
    def model_version(self) -> str:
        return self.served.version(self.examples_learned)


class Learner(HoldsServedModel):
    """The model decisions are drawn from, learning every final outcome once, and its checkpoints.

    Parameters
    ----------
    data_dir:
        Where checkpoints are written and read.
    log:
        The event log the outcomes are learned from; a checkpoint that does not fit it is refused
        (:func:`engine.checkpoint.check_fits_log`).
    bandit:
        The policy to start when ``data_dir`` holds no checkpoint.
    stopping:
        Set when the engine closes; the background thread ends then.
    checkpoint_interval, maintenance_interval:
        Seconds between checkpoints, and between closings of reward windows.
    retention:
        What deletes events once final and learned (:mod:`engine.retention`); see :meth:`prune`.
    snapshots:
        Where checkpoints go instead of ``data_dir``: the store, for the serving processes that follow
        this learner (:mod:`engine.roles`).

    ``served``, ``examples_learned``, ``learned_seq`` and ``last_checkpoint`` describe the model
    in use; only this class changes them.
    """

    def __init__(
        self,
        data_dir: Path,
        log: EventLog,
        bandit: BanditConfig,
        stopping: threading.Event,
        *,
        checkpoint_interval: float,
        maintenance_interval: float,
        retention: Retention | None = None,
        snapshots: StoreSnapshots | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.snapshots = snapshots
        self.log = log
        self.checkpoint_interval = checkpoint_interval
        self.maintenance_interval = maintenance_interval
        self.retention = retention
        self._stopping = stopping
        self._recent = RecentExamples()
        self._learn_lock = threading.Lock()
        self.observer = Observer()
        self.apprentice: Apprentice | None = None  # set: apprentice slots learned go to its tally
        self._load_model(bandit)
        self.updated = time.time()  # when the served model last learned or was replaced
        self._checkpointed: tuple[ServedModel, int] | None = (  # what the checkpoint on disk holds
            (self.served, self.learned_seq) if self.last_checkpoint is not None else None)
        self._wake = threading.Event()
        self._prune_failed_at = -60.0
        self._learned = threading.Condition()
        self._thread = threading.Thread(target=self._background, name="engine-background", daemon=True)

    def _load_model(self, bandit: BanditConfig) -> None:
        if self.snapshots is not None:  # the store's newest snapshot, written with the position it learned to
            found = self.snapshots.read()
            checkpoint, model_path = (found[1], found[2]) if found else (None, None)
            if checkpoint is not None and checkpoint.example_format != EXAMPLE_FORMAT:  # the log is the source of truth
                log.warning("the store's newest snapshot learned from examples of format %d, and this recbandit builds "
                            "format %d: relearning the store's event log into a fresh model",
                            checkpoint.example_format, EXAMPLE_FORMAT)
                checkpoint = None
        else:
            checkpoint = read_checkpoint(self.data_dir)
            model_path = None if checkpoint is None else self.data_dir / checkpoint.model_file
            if checkpoint is not None:
                check_example_format(checkpoint, f"the model kept in {self.data_dir}", self.data_dir)
                check_fits_log(checkpoint, self.data_dir, self.log.reader.log_id(), self.log.last_assigned_seq())
        if checkpoint is None:
            self.served = ServedModel(VWBandit(bandit), "vw-" + uuid.uuid4().hex[:8])
            self.learned_seq = self.examples_learned = 0
            self.last_checkpoint: float | None = None
            return
        try:
            saved = BanditConfig.from_dict(checkpoint.bandit)
            saved.validate()
            policy = RegisteredPolicy(**checkpoint.policy) if checkpoint.policy else None
            model = VWBandit(saved, model_path=str(model_path))
        except (TypeError, ValueError, RuntimeError, RecbanditError) as error:  # VW: RuntimeError
            raise CorruptCheckpoint(self.data_dir, f"the checkpoint in {self.data_dir} does not load ({error})") from None
        if saved != bandit:
            log.warning("the checkpoint's policy %s differs from the settings %s; the checkpoint's is kept",
                        saved, bandit)
        self.served = ServedModel(model, checkpoint.model_id, policy)
        self.learned_seq = checkpoint.learned_seq
        self.examples_learned = checkpoint.examples_learned
        self.last_checkpoint = checkpoint.ts

    def start(self) -> None:
        """Re-learn what the log holds beyond the checkpoint, then start the background thread."""
        self.learn_pending()
        self._thread.start()

    def join(self) -> None:
        """Wake the background thread so that it sees ``stopping`` set, and wait until it ends."""
        self._wake.set()
        self._thread.join()

    def remember(self, decision: LoggedDecision, shared: str, actions: list[str]) -> None:
        """Keep a new decision's VW lines, so that learning its reward needs no log read or encoding."""
        self._recent.remember(decision, shared, actions)

    def forget(self, event_ids: Iterable[str]) -> None:
        """Drop the remembered examples of these events (their user was forgotten)."""
        for event_id in event_ids:
            self._recent.forget(event_id, for_good=True)

    def learn_soon(self) -> None:
        """Wake the background thread: a new reward may be final."""
        if not self._wake.is_set():
            self._wake.set()

    def learn_pending(self) -> int:
        """Learn every final outcome in the log beyond what the model has; return how many."""
        learned = 0
        with self._learn_lock:
            while batch := self.log.final_outcomes_after(self.learned_seq):
                examples = self._examples([o.event_id for o in batch])
                for outcome in batch:
                    example = examples.get(outcome.event_id)
                    if example is not None:  # None: the user was forgotten since the outcome was read
                        self._learn(outcome, example)
                        self.examples_learned += 1
                        learned += 1
                        if self.apprentice is not None and (slot := example.apprentice_slot(outcome.slot)) is not None:
                            self.apprentice.learned(slot, outcome.reward)
                    self.learned_seq = outcome.seq
                    if example is not None:  # reported once learned and counted, never before
                        delay = outcome.ts - example.decided if outcome.source == "reward" else None
                        report(self.observer.learned, LearnedSlot(example.model, outcome.reward, outcome.source,
                                                                  example.exploring[outcome.slot], delay, example.arm))
            if learned and self.apprentice is not None:  # under the lock: a learn_pending after this one sees the switch
                self.apprentice.check_switch()
        if learned:
            with self._learned:
                self._learned.notify_all()
        return learned

    def _examples(self, event_ids: list[str]) -> dict[str, _Example]:
        """The decisions (as VW lines) of ``event_ids``: remembered ones, the rest read from the log."""
        found = self._recent.find(event_ids)
        missing = [e for e in event_ids if e not in found]
        for event_id, decision in self.log.decisions(missing).items():
            shared, actions = decision_lines(decision)
            found[event_id] = _Example.of(decision, shared, actions)
        return found

    def _learn(self, outcome: Outcome, example: _Example) -> None:
        """Learn ``outcome``'s slot as the decision it was: over the candidates earlier slots left."""
        earlier = set(example.chosen[: outcome.slot])
        remaining = [i for i, item_id in enumerate(example.item_ids) if item_id not in earlier]
        chosen = next(j for j, i in enumerate(remaining) if example.item_ids[i] == outcome.item_id)
        self.bandit.learn(
            example.shared,
            [example.actions[i] for i in remaining],
            chosen,
            outcome.reward,
            example.probabilities[outcome.slot],
        )
        if outcome.slot == len(example.chosen) - 1:
            self._recent.forget(outcome.event_id)
        self.updated = time.time()

    def prune(self) -> int:
        """One retention pass (:meth:`engine.retention.Retention.run`) over what this model learned."""
        assert self.retention is not None
        pruned = self.retention.run(self.learned_seq)
        if pruned:
            log.info("retention: deleted %d events older than %.0f s, final and learned%s", pruned,
                     self.retention.seconds, ", archived first" if self.retention.archive is not None else "")
            report(self.observer.pruned, pruned)
        return pruned

    def _prune_apart(self) -> None:
        """:meth:`prune`, whose failure (an archive that cannot be written) stops neither learning
        nor checkpoints; it is logged, at most once a minute, and the next pass tries again."""
        try:
            self.prune()
        except StorageUnavailable:
            raise  # the log itself: the loop's own handling
        except Exception as error:
            now = time.monotonic()
            if now - self._prune_failed_at >= 60.0:
                log.error("retention pass failed (the events stay in the log; retrying): %s", error)
                self._prune_failed_at = now

    @contextmanager
    def at_rest(self, timeout: float) -> Iterator[tuple[VWBandit, str]]:
        """The served model and its version, with learning, swaps and checkpoints held off while
        the block runs (decisions go on); ModelNotReady when learning does not pause within ``timeout``."""
        if not self._learn_lock.acquire(timeout=timeout):
            raise ModelNotReady("the model is learning a backlog; retry shortly")
        try:
            yield self.bandit, self.model_version
        finally:
            self._learn_lock.release()

    def lag_seconds(self) -> float:
        """How long the oldest final outcome not yet learned has waited; 0 when none waits."""
        committed = self.log.outcome_time_after(self.learned_seq)
        return 0.0 if committed is None else max(0.0, time.time() - committed)

    def wait_until_learned(self, timeout: float = 10.0) -> bool:
        """Block until every outcome committed so far is learned (tests and the demo use this)."""
        target = self.log.last_outcome_seq()
        self._wake.set()
        with self._learned:
            return self._learned.wait_for(lambda: self.learned_seq >= target, timeout)

    def close_windows(self) -> int:
        finalised = self.log.close_windows(time.time())
        if finalised:
            self._wake.set()
        return finalised

    def checkpoint(self) -> Checkpoint:
        with self._learn_lock:
            served = self.served
            checkpoint = Checkpoint(
                # Every checkpoint writes a file of its own name: the manifest must never point at a file
                # replaced under it (a crash between the two renames leaves the previous checkpoint whole).
                model_file=f"model-{served.model_id}-{self.learned_seq}-{time.time_ns()}.vw",
                model_id=served.model_id,
                learned_seq=self.learned_seq,
                examples_learned=self.examples_learned,
                ts=time.time(),
                bandit=asdict(served.bandit.config),
                policy=asdict(served.registered_policy) if served.registered_policy else None,
                log_id=self.log.reader.log_id(),
                example_format=EXAMPLE_FORMAT,
            )
            try:
                if self.snapshots is not None:
                    checkpoint = self.snapshots.write(served.bandit.save, checkpoint)
                else:
                    checkpoint = write_checkpoint(self.data_dir, served.bandit.save, checkpoint)
            except (OSError, RuntimeError) as error:  # VW reports a failed write as RuntimeError
                log.error("checkpoint not written (the previous one stays): %s", error)
                raise StorageUnavailable() from error
            self.last_checkpoint = checkpoint.ts
            self._checkpointed = (served, self.learned_seq)
        return checkpoint

    def _changed_since_checkpoint(self) -> bool:
        return self._checkpointed != (self.served, self.learned_seq)

    def _background(self) -> None:
        next_checkpoint = time.monotonic() + self.checkpoint_interval
        next_close = next_prune = time.monotonic()
        while not self._stopping.is_set():
            if self._wake.wait(self.maintenance_interval) and not self._stopping.is_set():
                time.sleep(LEARN_BATCH_DELAY)  # let the rewards of the next few ms join this batch
            self._wake.clear()
            try:
                if self.snapshots is not None and self.log.has_unjoined_rewards():  # a learner beside serving processes
                    self.log.join_rewards()
                if time.monotonic() >= next_close:  # on a timer, not on every reward's wake-up
                    self.close_windows()
                    next_close = time.monotonic() + self.maintenance_interval
                self.learn_pending()
                if self.retention is not None and time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + PRUNE_INTERVAL
                    self._prune_apart()
                if time.monotonic() >= next_checkpoint:
                    if self._changed_since_checkpoint():
                        self.checkpoint()
                    next_checkpoint = time.monotonic() + self.checkpoint_interval
                if not self.log.storage_healthy:  # nothing may be writing while health says NOT_SERVING
                    self.log.probe_storage()
            except StorageUnavailable:  # logged once where it failed; health says so
                time.sleep(1.0)
            except Exception:  # keep serving; the log still holds everything to learn later
                log.exception("background learning failed; retrying")
                time.sleep(1.0)

    def swap_policy(self, bandit: BanditConfig, model_path: str, policy: RegisteredPolicy) -> None:
        """Serve the registered policy's VW model from now on, and keep learning online on it.

        The model is loaded completely first; then, under the learn lock, it replaces the live one.
        A decision in flight finishes on the model it started with (it holds its own reference;
        the old workspace is freed when the last one lets go), and no batch of learning straddles
        the two models.

        The learned watermark carries over unchanged: the outcomes up to ``learned_seq`` are the
        old model's past (the registered policy learned its own from the log it was evaluated on),
        and the new model learns every final outcome after ``learned_seq`` from the next batch on,
        exactly once. ``examples_learned`` restarts at 0, so ``model_version`` reads
        ``recbandit-policy-v3@N``: the registered version plus N online updates. A checkpoint is
        written at once, so a restart resumes the registered policy (and knows its version).
        """
        loaded = VWBandit(bandit, model_path=model_path)
        with self._learn_lock:
            self.examples_learned = 0
            self.served = ServedModel(loaded, f"{policy.model_name}-v{policy.version}", policy)
            self.updated = time.time()
        log.info("serving %s version %s (@%s) from %s", policy.model_name, policy.version, policy.alias, model_path)
        self.checkpoint()


@dataclass(frozen=True, slots=True)
class _Example:
    """What learning one decision's slots needs: its VW lines, candidate ids, choices and probabilities."""

    shared: str
    actions: tuple[str, ...]
    item_ids: tuple[str, ...]
    chosen: tuple[str, ...]
    probabilities: tuple[float, ...]
    chars: int  # the text kept in memory, which the cache of recent examples is bounded by
    model: str  # the id of the model that decided
    decided: float  # when
    exploring: tuple[bool, ...]  # per slot: its item was not the most probable one
    arm: str  # the decision's campaign arm
    apprentice: tuple[ApprenticeSlot | None, ...]  # apprentice mode: per slot, what its tally needs

    def apprentice_slot(self, slot: int) -> ApprenticeSlot | None:
        return self.apprentice[slot] if slot < len(self.apprentice) else None

    @classmethod
    def of(cls, decision: LoggedDecision, shared: str, actions: list[str]) -> _Example:
        return cls(
            shared,
            tuple(actions),
            tuple(c.item_id for c in decision.candidates),
            decision.chosen_item_ids,
            tuple(s.probability for s in decision.slots),
            len(shared) + sum(map(len, actions)),
            model_id(decision.model_version),
            decision.ts,
            tuple(s.probability < max(s.pmf) for s in decision.slots),
            decision.arm,
            apprentice_slots(decision),
        )


class RecentExamples:
    """The examples of recent decisions not yet learned to their last slot, oldest first.

    At most :data:`RECENT_DECISIONS` of them and :data:`RECENT_CHARS` of text (counted as if not
    shared); the oldest are forgotten first. One lock guards the examples and their count of text.
    """

    def __init__(self) -> None:
        self._examples: OrderedDict[str, _Example] = OrderedDict()
        self._chars = 0  # text held by the remembered examples, counted as if not shared
        self._forgotten: OrderedDict[str, None] = OrderedDict()  # users' events deleted: never remembered again
        self._lock = threading.Lock()

    def remember(self, decision: LoggedDecision, shared: str, actions: list[str]) -> None:
        example = _Example.of(decision, shared, actions)
        with self._lock:
            if decision.event_id in self._forgotten:  # its user was forgotten while it committed
                return
            self._examples[decision.event_id] = example
            self._chars += example.chars
            while len(self._examples) > RECENT_DECISIONS or self._chars > RECENT_CHARS:
                self._chars -= self._examples.popitem(last=False)[1].chars

    def find(self, event_ids: list[str]) -> dict[str, _Example]:
        """The remembered examples among ``event_ids``."""
        found: dict[str, _Example] = {}
        with self._lock:
            for event_id in event_ids:
                example = self._examples.get(event_id)
                if example is not None:
                    found[event_id] = example
        return found

    def forget(self, event_id: str, *, for_good: bool = False) -> None:
        """Drop the example of ``event_id`` (learned to its last slot); ``for_good``: its user was
        forgotten, so a decision still committing never adds it back."""
        with self._lock:
            learned = self._examples.pop(event_id, None)
            if learned is not None:
                self._chars -= learned.chars
            if for_good:
                self._forgotten[event_id] = None
                while len(self._forgotten) > RECENT_DECISIONS:
                    self._forgotten.popitem(last=False)
