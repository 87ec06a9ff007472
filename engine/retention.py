"""What deletes events from the log: retention passes, and forgetting a user.

A retention pass deletes the events decided longer ago than the retention whose every slot is
final and learned, :data:`~engine.eventlog.PRUNE_BATCH` per transaction so that serving writes take
turns with it. With an archive (:mod:`engine.archive`) it first writes them to the day's Parquet
file, durably, and records the archive's folder in the log, so that every reader of the log reads
the archive with it (:meth:`~engine.eventlog.EventLog.history`).

The archive prefers few large files to many small ones: a pass archives when at least
:data:`ARCHIVE_MIN_EVENTS` events are due, or when the oldest due event has waited for
:data:`ARCHIVE_MAX_WAIT` beyond the retention (or the retention itself, if shorter). It reads and
writes them :data:`~engine.eventlog.PRUNE_BATCH` at a time, so its memory stays small and serving
threads get the interpreter between batches.

A pass also deletes the catalog versions no decision left in the log can name
(:meth:`~engine.eventlog.EventLog.forget_superseded_versions`): the archive holds every
candidate's features whole.

Forgetting a user and a pass never run at once, in one process or several (serving processes
forget, the learner prunes; they share the store's ``retention`` lock when there is an archive): a
pass between reading a user's events and deleting them would otherwise archive what the user had
asked to be forgotten. A serving process, which has no archive (it may be on another machine),
asks the learner to forget the user there: its next pass does, within seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from engine.archive import Archive
from engine.errors import StorageUnavailable
from engine.eventlog import PRUNE_BATCH, EventLog, Forgotten

PRUNE_INTERVAL = 5.0
"""Seconds between retention passes."""

PASS_LIMIT = 10 * PRUNE_BATCH
"""The most events one pass deletes (and archives, into one file per day)."""

STORE_LOCK_TIMEOUT = 30.0
ARCHIVE_MIN_EVENTS = 1_000
ARCHIVE_MAX_WAIT = 3_600.0


@dataclass(frozen=True, slots=True)
class ForgottenEvents:
    """What forgetting a user deleted: from the log, and how many archived records."""

    log: Forgotten
    archived: int


class Retention:
    """Deletes events past ``seconds`` (None: never) from ``log``, archiving them first to ``archive``."""

    def __init__(self, log: EventLog, seconds: float | None, archive: Archive | None) -> None:
        self.log = log
        self.seconds = seconds
        self.archive = archive
        self._lock = threading.Lock()  # a pass, or forgetting a user
        self._archive_recorded = archive is not None and log.reader.archive_dir() is not None

    def run(self, learned_seq: int) -> int:
        """One pass: delete (and archive) the due events of a model that learned up to ``learned_seq``."""
        if self.seconds is None:
            return 0
        before = time.time() - self.seconds
        with self._exclusive():
            if self.archive is not None:  # what serving processes elsewhere were asked to forget
                for user_id in self.log.archive_forgets():
                    self.archive.forget_user(user_id)
                    self.log.archive_forgotten(user_id)
            self.log.portraits.prune(before, PRUNE_BATCH)  # portraits nothing renewed within the retention
            due = self.log.prunable(before, learned_seq, PASS_LIMIT)
            if not due:
                return 0
            event_ids = [event_id for event_id, _ in due]
            if self.archive is not None:
                oldest = due[0][1]
                if len(due) < ARCHIVE_MIN_EVENTS and oldest > before - min(self.seconds, ARCHIVE_MAX_WAIT):
                    return 0  # one small file now, or a fuller one later: wait while the oldest is young
                self._archive(event_ids)
            deleted = sum(self.log.delete_events(batch) for batch in _batches(event_ids))
            self.log.catalog.forget_superseded_versions()
            return deleted

    def _archive(self, event_ids: list[str]) -> None:
        assert self.archive is not None
        self.archive.write_sorted(event.to_export() for batch in _batches(event_ids) for event in self.log.reader.events(batch))
        if not self._archive_recorded:  # once it holds something: from now on every reader needs it
            self.log.set_archive_dir(self.archive.directory)
            self._archive_recorded = True

    def forget_user(self, user_id: str) -> ForgottenEvents:
        """Delete ``user_id``'s events from the archive, then from the log: if the archive cannot be
        rewritten (a damaged file), the log still holds what a retry will find."""
        with self._exclusive():
            archived = self.archive.forget_user(user_id) if self.archive is not None else 0
            later = self.archive is None and self.log.reader.archive_dir() is not None  # the learner's archive, elsewhere
            forgotten = self.log.forget_user(user_id, in_archive_later=later)
        return ForgottenEvents(forgotten, archived)

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """This process's lock, and with an archive the store's, which other processes take too."""
        with self._lock:
            if self.archive is None:
                yield
                return
            deadline = time.monotonic() + STORE_LOCK_TIMEOUT
            while (claim := self.log.database.try_lock("retention")) is None:
                if time.monotonic() > deadline:
                    raise StorageUnavailable()
                time.sleep(0.05)
            try:
                yield
            finally:
                claim.release()


def _batches(event_ids: list[str]) -> list[list[str]]:
    return [event_ids[i : i + PRUNE_BATCH] for i in range(0, len(event_ids), PRUNE_BATCH)]
