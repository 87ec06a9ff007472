"""The durable event log: decisions, rewards, final outcomes and the catalog.

It lives in a SQLite file (WAL, ``synchronous=FULL``) in the data directory, or in a PostgreSQL
database (``--store postgresql://…``); :mod:`engine.storage` holds what differs, and the SQL here
is written once for both. Writes go through :class:`~engine.groupcommit.GroupCommitWriter`, so a
call returns only after its transaction is durable. Reads use one connection per thread and see
every committed write.

Tables: ``decisions`` (one row per Recommend), ``rewards`` (one per distinct event, item and
label), ``outcomes`` (the final reward of each event slot, numbered by ``seq`` in commit order —
what the bandit learns, in that order, exactly once), ``items`` (the catalog) and
``item_versions`` (every catalog item's features as they have been, each content once: what
decisions name their catalog candidates by, see :mod:`engine.records`) and ``portraits`` (one per
user, :mod:`engine.portraitstore`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from engine.catalogstore import CatalogStore, version_unversioned_items
from engine.errors import LeaseLost, PreconditionFailed, RecbanditError, StartupRefused
from engine.groupcommit import GroupCommitWriter
from engine.logwrites import (
    InsertDecision,
    InsertReward,
    MarkDelivery,
    SET_META,
    chunks,
    delete_events,
    event_state,
    insert_outcome,
    join_rewards_of,
    probe,
)
from engine.logreader import DECISION_COLUMNS, LOG_SCHEMA_VERSION, LogReader, decision_from_row
from engine.portraitstore import PortraitStore, forget_portrait
from engine.records import LoggedDecision, Outcome, Reward, decision_pmfs, decision_to_json
from engine.rewards import Aggregation, RewardRules
from engine.storage import Connection, open_database
from engine.types import Status

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS decisions (
    event_id TEXT PRIMARY KEY,
    ts {real} NOT NULL,
    deadline {real} NOT NULL,
    user_id TEXT NOT NULL,
    chosen TEXT NOT NULL,
    deferred INTEGER NOT NULL,
    activated_ts {real},
    closed INTEGER NOT NULL DEFAULT 0,
    model_version TEXT NOT NULL,
    record TEXT NOT NULL,
    undelivered INTEGER NOT NULL DEFAULT 0,
    pmf {blob}
);
CREATE INDEX IF NOT EXISTS decisions_open ON decisions (deadline) WHERE closed = 0;
CREATE INDEX IF NOT EXISTS decisions_user ON decisions (user_id);
CREATE INDEX IF NOT EXISTS decisions_ts ON decisions (ts);
CREATE TABLE IF NOT EXISTS rewards (
    event_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    label TEXT NOT NULL,
    value {real} NOT NULL,
    ts {real} NOT NULL,
    joined INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (event_id, item_id, label)
);
CREATE INDEX IF NOT EXISTS rewards_unjoined ON rewards (ts) WHERE joined = 0;
CREATE TABLE IF NOT EXISTS outcomes (
    seq {integer_key},
    event_id TEXT NOT NULL,
    slot INTEGER NOT NULL,
    item_id TEXT NOT NULL,
    reward {real} NOT NULL,
    source TEXT NOT NULL,
    ts {real} NOT NULL,
    UNIQUE (event_id, slot)
);
CREATE TABLE IF NOT EXISTS items (
    item_id TEXT PRIMARY KEY,
    features TEXT NOT NULL,
    active INTEGER NOT NULL,
    version INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS item_versions (
    version {integer_key},
    digest {blob} NOT NULL UNIQUE,
    item_id TEXT NOT NULL,
    features TEXT NOT NULL,
    superseded_ts {real}
);
CREATE TABLE IF NOT EXISTS archive_forgets (
    user_id TEXT PRIMARY KEY,
    ts {real} NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshots (
    id {integer_key},
    ts {real} NOT NULL,
    learned_seq BIGINT NOT NULL,
    manifest TEXT NOT NULL,
    model {blob} NOT NULL
);
CREATE TABLE IF NOT EXISTS embeddings (
    id {integer_key},
    ts {real} NOT NULL,
    artifact TEXT NOT NULL,
    data {blob} NOT NULL
);
CREATE TABLE IF NOT EXISTS portraits (
    user_id TEXT PRIMARY KEY,
    visits TEXT NOT NULL,
    history TEXT NOT NULL,
    updated {real} NOT NULL,
    history_ts {real} NOT NULL,
    seq BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS portraits_updated ON portraits (updated);
CREATE INDEX IF NOT EXISTS portraits_history_ts ON portraits (history_ts) WHERE history <> '';
CREATE INDEX IF NOT EXISTS portraits_seq ON portraits (seq);
"""
_MIGRATIONS = {
    # 1 → 2: decisions whose caller was gone before the reply are marked, and never learned by default
    1: "ALTER TABLE decisions ADD COLUMN undelivered INTEGER NOT NULL DEFAULT 0;"
       "CREATE INDEX IF NOT EXISTS decisions_user ON decisions (user_id);",
    # 2 → 3: catalog versions (items get theirs in _version_items); decisions are read in time order
    2: "ALTER TABLE items ADD COLUMN version INTEGER NOT NULL DEFAULT 0;"
       "ALTER TABLE decisions ADD COLUMN pmf BLOB;"
       "ALTER TABLE rewards ADD COLUMN joined INTEGER NOT NULL DEFAULT 1;"
       "DROP INDEX IF EXISTS decisions_closed;",
    # 3 → 4: embeddings artifacts the learner publishes for every replica (the table is in _SCHEMA)
    3: "",
    # 4 → 5: user portraits (engine.portraitstore; the table is in _SCHEMA)
    4: "",
}
PRUNE_BATCH = 500
"""Events one retention transaction deletes at most: a few milliseconds of the writer's time."""
log = logging.getLogger(__name__)


class EventLog:
    """The event log of ``store``: a SQLite file's path, or a ``postgresql://`` URL (:mod:`engine.storage`).

    With ``join_later`` (a serving process beside a learner, :mod:`engine.roles`), a reward is only
    logged; the learner makes the slot it decides final (:meth:`join_rewards`), so that one process
    numbers the outcomes, in commit order.
    """

    def __init__(self, store: str | Path, rules: RewardRules, *, join_later: bool = False) -> None:
        self.database = open_database(store)
        self.path = self.database.name
        self.rules = rules
        self.join_later = join_later
        writer = self.database.connect(writer=True)
        try:
            self._migrate(writer)
            version_unversioned_items(writer, self.database.begin)
            self._name_new_log(writer)
        except BaseException:
            writer.close()
            raise
        self._writer = GroupCommitWriter(writer, begin=self.database.begin,
                                         storage_failure=self.database.storage_failure,
                                         rolled_back=self.database.rolled_back)
        self._writer_connection = writer
        self.reader = LogReader(self.database, read_only=False)
        """Reads the log as typed records (history, joined events), with this log's connections."""
        self._reader = self.reader.connection
        self.catalog = CatalogStore(self._writer, self._reader)
        """The catalog's items and versions, written through this log's writer."""
        self.portraits = PortraitStore(self._writer, self._reader, self.database.update_lock)
        """The users' portraits, written through this log's writer."""

    def _migrate(self, conn: Connection) -> None:
        """Create the tables, or bring an older log's up to :data:`LOG_SCHEMA_VERSION`; refuse a newer one.

        One transaction, under the store's schema lock: processes starting together on a new store
        (a learner and its replicas) create the tables once, the others wait and find them.
        """
        conn.execute(self.database.begin)
        try:
            conn.execute(self.database.schema_lock)
            conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            found = int(row[0]) if row and str(row[0]).isdigit() else row and row[0]
            if found is not None and not (isinstance(found, int) and 1 <= found <= LOG_SCHEMA_VERSION):
                newer = isinstance(found, int) and found > LOG_SCHEMA_VERSION
                raise StartupRefused(f"the event log's schema version is {found}, " + (
                    f"newer than the {LOG_SCHEMA_VERSION} this recbandit reads: upgrade recbandit" if newer
                    else "which no recbandit wrote: is it a recbandit event log?"))
            script = "".join(_MIGRATIONS[version] for version in range(found, LOG_SCHEMA_VERSION)) if found else ""
            if found != LOG_SCHEMA_VERSION:
                script += _SCHEMA.format(real=self.database.real, blob=self.database.blob,
                                         integer_key=self.database.integer_key)
            for statement in script.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(SET_META, ("schema_version", str(LOG_SCHEMA_VERSION)))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    @staticmethod
    def _name_new_log(conn: Connection) -> None:
        """Give a new log its random :meth:`log_id`; a log that has one keeps it."""
        conn.execute("INSERT INTO meta VALUES ('log_id', ?) ON CONFLICT DO NOTHING", (os.urandom(16).hex(),))

    def watch_storage(self, on_change: Callable[[bool], None]) -> None:
        """Call ``on_change(healthy)`` from the writer thread whenever writes start or stop failing."""
        self._writer.on_health_change = on_change

    def watch_commits(self, on_commit: Callable[[float, int], None]) -> None:
        """Call ``on_commit(seconds, operations)`` from the writer thread after every transaction."""
        self._writer.on_commit = on_commit

    @property
    def storage_healthy(self) -> bool:
        return self._writer.healthy

    def probe_storage(self) -> None:
        """Write one row, to learn whether writes succeed again (health turns with it)."""
        try:
            self._writer.submit(probe)
        except RecbanditError:
            pass  # still failing: the writer logged it once and health stays NOT_SERVING

    def close(self) -> None:
        self._writer.close()
        self._writer_connection.close()
        self.reader.close()

    # -- decisions ------------------------------------------------------------------------------

    def append_decision(self, decision: LoggedDecision, record: str | None = None) -> LoggedDecision:
        """Commit ``decision``; if its event id is already logged, return the logged one instead.

        ``record`` is ``decision_to_json(decision)`` when the caller has it already.
        """
        existing = self._writer.submit(self._insert_decision(decision, record))
        return existing if existing is not None else decision

    async def append_decision_async(self, decision: LoggedDecision, record: str | None = None) -> LoggedDecision:
        """:meth:`append_decision` for a coroutine."""
        existing = await self._writer.submit_async(self._insert_decision(decision, record))
        return existing if existing is not None else decision

    def _insert_decision(self, decision: LoggedDecision, record: str | None) -> InsertDecision:
        row = (
            decision.event_id,
            decision.ts,
            decision.deadline,
            decision.user_id,
            json.dumps(decision.chosen_item_ids),
            int(decision.deferred),
            decision.model_version,
            decision_to_json(decision) if record is None else record,
            decision_pmfs(decision),
        )
        return InsertDecision(row, self._select_decision)

    def get_decision(self, event_id: str) -> LoggedDecision | None:
        return self._select_decision(self._reader(), event_id)

    def _select_decision(self, conn: Connection, event_id: str) -> LoggedDecision | None:
        row = conn.execute(f"SELECT {DECISION_COLUMNS} FROM decisions WHERE event_id = ?", (event_id,)).fetchone()
        return decision_from_row(row, self.reader.versions.reader(conn)) if row else None

    # -- rewards and activation -----------------------------------------------------------------

    def append_reward(self, reward: Reward) -> Status:
        """Commit ``reward`` (``item_id`` empty means slot 0); finalise its slot under ``earliest``."""
        return self._writer.submit(self._insert_reward(reward))

    async def append_reward_async(self, reward: Reward) -> Status:
        """:meth:`append_reward` for a coroutine."""
        return await self._writer.submit_async(self._insert_reward(reward))

    def _insert_reward(self, reward: Reward) -> InsertReward:
        earliest = self.rules.aggregation is Aggregation.EARLIEST
        return InsertReward(reward, earliest and not self.join_later, earliest and self.join_later,
                             self.database.share_lock)

    def activate(self, event_id: str, ts: float) -> Status:
        def update(conn: Connection) -> Status:
            _, deferred, activated_ts, closed, deadline = event_state(conn, event_id, self.database.share_lock)
            if not deferred or activated_ts is not None:
                return Status.DUPLICATE
            if closed or ts > deadline:
                raise PreconditionFailed("event_id", "the reward window of this event closed before activation")
            conn.execute("UPDATE decisions SET activated_ts = ? WHERE event_id = ?", (ts, event_id))
            return Status.NEW

        return self._writer.submit(update)

    def close_windows(self, now: float, *, limit: int = 2000) -> int:
        """Finalise every slot of events whose window closed by ``now``; return how many slots."""

        def close(conn: Connection) -> int:
            due = conn.execute("SELECT event_id FROM decisions WHERE closed = 0 AND deadline <= ? ORDER BY deadline LIMIT ?",
                               (now, limit)).fetchall()
            finalised = 0
            for (event_id,) in due:
                row = conn.execute(  # the row as it is once closed: an Activate committed meanwhile counts
                    "UPDATE decisions SET closed = 1 WHERE event_id = ? AND closed = 0"
                    " RETURNING chosen, deferred, activated_ts, undelivered", (event_id,)).fetchone()
                if row is None:
                    continue  # closed by another pass meanwhile
                chosen, deferred, activated_ts, undelivered = row
                finalised += join_rewards_of(conn, event_id, json.loads(chosen))  # rewards a serving process logged
                if undelivered or (deferred and activated_ts is None):
                    continue  # never shown: never learned with the default reward
                sums = dict(
                    conn.execute(
                        "SELECT item_id, SUM(value) FROM rewards WHERE event_id = ? GROUP BY item_id", (event_id,)
                    ).fetchall()
                )
                for slot, item_id in enumerate(json.loads(chosen)):
                    if self.rules.aggregation is Aggregation.SUM and item_id in sums:
                        value, source = sums[item_id], "sum"
                    else:
                        value, source = self.rules.default_reward, "default"
                    finalised += insert_outcome(conn, event_id, slot, item_id, value, source, now)
            return finalised

        return self._writer.submit(close)

    def join_rewards(self, limit: int = 1000) -> int:
        """Make final the slots that rewards logged but not yet joined decide (:attr:`join_later`):
        under ``earliest``, a slot's first reward. Returns how many slots."""

        def join(conn: Connection) -> int:
            events = [e for (e,) in conn.execute(
                "SELECT DISTINCT event_id FROM (SELECT event_id FROM rewards WHERE joined = 0 ORDER BY ts LIMIT ?) r",
                (limit,))]
            finalised = 0
            for chunk in chunks(events, 500):
                marks = ",".join("?" * len(chunk))
                for event_id, chosen in conn.execute(
                        f"SELECT event_id, chosen FROM decisions WHERE event_id IN ({marks})", chunk).fetchall():
                    finalised += join_rewards_of(conn, event_id, json.loads(chosen))
            return finalised

        return self._writer.submit(join)

    async def mark_delivery_async(self, decision: LoggedDecision, delivered: bool) -> None:
        """Mark whether ``decision`` reached its caller; an undelivered one gets no default reward."""
        await self._writer.submit_async(MarkDelivery(decision, delivered))

    def post_undelivered(self, decision: LoggedDecision) -> None:
        """Mark ``decision`` undelivered from a coroutine that cannot wait (it is being cancelled): the
        mark commits after the decision's own insert, queued before it, and only if that insert
        logged this decision rather than found its event id taken."""
        self._writer.post(MarkDelivery(decision, delivered=False))

    # -- privacy ---------------------------------------------------------------------------------

    def forget_user(self, user_id: str, *, in_archive_later: bool = False) -> Forgotten:
        """Delete the user's decisions, their rewards, final outcomes and portrait in one transaction; with
        ``in_archive_later`` (a process without the archive), ask the learner, in the same
        transaction, to forget the user in the archive too (:meth:`archive_forgets`)."""

        def forget(conn: Connection) -> Forgotten:
            event_ids = [e for (e,) in conn.execute("SELECT event_id FROM decisions WHERE user_id = ?", (user_id,))]
            rewards, outcomes, _ = delete_events(conn, event_ids)
            portraits = forget_portrait(conn, user_id)
            if in_archive_later:
                conn.execute("INSERT INTO archive_forgets VALUES (?, ?) ON CONFLICT DO NOTHING", (user_id, time.time()))
            return Forgotten(tuple(event_ids), rewards, outcomes, portraits)

        forgotten = self._writer.submit(forget)
        self.portraits.forgotten(user_id)
        self._checkpoint_wal()
        return forgotten

    # -- retention -------------------------------------------------------------------------------

    def prunable(self, before: float, learned_seq: int, limit: int) -> list[tuple[str, float]]:
        """Up to ``limit`` events decided before ``before`` whose every slot is final and learned
        (window closed, no outcome after ``learned_seq``), by ``(ts, event_id)``, as ``(event_id, ts)``.
        They stay prunable: a closed window never reopens and what is learned stays learned."""
        return self._reader().execute(
            "SELECT event_id, ts FROM decisions d WHERE closed = 1 AND ts < ? AND NOT EXISTS"
            " (SELECT 1 FROM outcomes o WHERE o.event_id = d.event_id AND o.seq > ?) ORDER BY ts, event_id LIMIT ?",
            (before, learned_seq, limit)).fetchall()

    def delete_events(self, event_ids: list[str]) -> int:
        """Delete these events (keep them to :data:`PRUNE_BATCH`: one short transaction) with their
        rewards and outcomes; return how many were here. The pages they held go back to the file
        system (incremental vacuum) in the same transaction."""

        def delete(conn: Connection) -> int:
            deleted = delete_events(conn, event_ids)[2]
            self.database.give_back_pages(conn)
            return deleted

        return self._writer.submit(delete)

    def take_learner_term(self) -> int:
        """Number a new learner term: what the learner that just took the lease publishes under. It
        fences off every learner before it, which may not know yet that its lease ended
        (:meth:`publish_snapshot`)."""

        def take(conn: Connection) -> int:
            conn.execute("INSERT INTO meta VALUES ('learner_term', '0') ON CONFLICT DO NOTHING")
            (term,) = conn.execute("UPDATE meta SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT)"
                                   " WHERE key = 'learner_term' RETURNING value").fetchone()
            return int(term)

        return self._writer.submit(take)

    def publish_snapshot(self, manifest: str, learned_seq: int, model: bytes, *, term: int | None = None,
                         keep: int = 3) -> int:
        """Store a model snapshot, its manifest and the learner's position in one transaction; keep
        the newest ``keep``. Returns its id. With ``term`` (:meth:`take_learner_term`), only while
        that term is the newest: otherwise :class:`~engine.errors.LeaseLost`, and nothing is stored."""

        def publish(conn: Connection) -> int:
            self._check_term(conn, term)
            conn.execute("INSERT INTO snapshots (ts, learned_seq, manifest, model) VALUES (?, ?, ?, ?)",
                         (time.time(), learned_seq, manifest, model))
            (newest,) = conn.execute("SELECT MAX(id) FROM snapshots").fetchone()
            conn.execute("DELETE FROM snapshots WHERE id <= ?", (newest - keep,))
            return int(newest)

        return self._writer.submit(publish)

    def _check_term(self, conn: Connection, term: int | None) -> None:
        """Within a write transaction: :class:`~engine.errors.LeaseLost` unless ``term`` (None: no
        check) is still the newest learner term; the row stays locked until the transaction ends."""
        if term is None:
            return
        row = conn.execute(f"SELECT value FROM meta WHERE key = 'learner_term'{self.database.share_lock}").fetchone()
        if row is None or int(row[0]) != term:
            raise LeaseLost(f"learner term {term} has ended: another learner took the lease (term {row and row[0]})")

    def publish_embeddings(self, artifact: str, data: bytes, *, term: int | None = None, keep: int = 2) -> int:
        """Store an embeddings artifact (its file name and bytes) for every replica; keep the newest
        ``keep``. Only while ``term`` is the newest learner term (as :meth:`publish_snapshot`).

        It commits on a connection of its own, not through the group commit: an artifact can be
        hundreds of megabytes, and decisions and rewards must not wait behind it.
        """
        conn = self.database.connect(writer=True)
        try:
            conn.execute(self.database.begin)
            try:
                self._check_term(conn, term)
                conn.execute("INSERT INTO embeddings (ts, artifact, data) VALUES (?, ?, ?)", (time.time(), artifact, data))
                (newest,) = conn.execute("SELECT MAX(id) FROM embeddings").fetchone()
                conn.execute("DELETE FROM embeddings WHERE id <= ?", (newest - keep,))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return int(newest)
        finally:
            conn.close()

    def newest_embeddings(self, after: int = 0) -> tuple[int, str, bytes] | None:
        """The newest published embeddings artifact if its id is above ``after``: ``(id, file name, bytes)``."""
        return self._newest("embeddings", "artifact", "data", after)

    def newest_snapshot(self, after: int = 0) -> tuple[int, str, bytes] | None:
        """The newest snapshot if its id is above ``after``: ``(id, manifest, model)``."""
        return self._newest("snapshots", "manifest", "model", after)

    def _newest(self, table: str, name: str, blob: str, after: int) -> tuple[int, str, bytes] | None:
        """The newest row of a published table (snapshots, embeddings) if its id is above ``after``;
        the id is read first, so a reader that is up to date never reads the blob."""
        conn = self._reader()
        row = conn.execute(f"SELECT MAX(id) FROM {table}").fetchone()
        if row is None or row[0] is None or row[0] <= after:
            return None
        found_id, text, data = conn.execute(f"SELECT id, {name}, {blob} FROM {table} WHERE id = ?", (row[0],)).fetchone()
        return int(found_id), str(text), bytes(data)

    def has_unjoined_rewards(self) -> bool:
        """Whether a serving process logged rewards the learner has not joined yet (a cheap read)."""
        return self._reader().execute("SELECT 1 FROM rewards WHERE joined = 0 LIMIT 1").fetchone() is not None

    def archive_forgets(self) -> list[str]:
        """The users whose archived events a process without the archive asked to be forgotten."""
        return [u for (u,) in self._reader().execute("SELECT user_id FROM archive_forgets ORDER BY ts")]

    def archive_forgotten(self, user_id: str) -> None:
        """The archive has forgotten ``user_id``: the request is done."""
        self._writer.submit(lambda conn: conn.execute("DELETE FROM archive_forgets WHERE user_id = ?", (user_id,)))

    def set_archive_dir(self, directory: Path) -> None:
        """Record where this log's events are archived, so that every reader of the log finds them."""
        value = str(directory.resolve())
        self._writer.submit(lambda conn: conn.execute(SET_META, ("archive_dir", value)))

    def meta(self, key: str) -> str | None:
        """The store's ``meta`` value of ``key`` (None: none)."""
        row = self._reader().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str, expected: str | None) -> bool:
        """Set ``meta`` ``key`` to ``value`` if it holds ``expected`` now (None: if it has no value);
        False, and nothing written, when another process changed it first."""

        def swap(conn: Connection) -> bool:
            if expected is None:
                return conn.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT DO NOTHING RETURNING key",
                                    (key, value)).fetchone() is not None
            return conn.execute("UPDATE meta SET value = ? WHERE key = ? AND value = ? RETURNING key",
                                (value, key, expected)).fetchone() is not None

        return self._writer.submit(swap)

    def _checkpoint_wal(self) -> None:
        """Copy SQLite's WAL into the database and empty it, so that deleted rows leave the WAL file too."""
        if not self.database.fold_write_ahead_log(self._reader()):
            log.warning("the write-ahead log could not be emptied now (readers or writers busy); "
                        "the deleted rows leave it at the next checkpoint")

    # -- outcomes: what the learner reads ---------------------------------------------------------

    def final_outcomes_after(self, seq: int, limit: int = 1000) -> list[Outcome]:
        """Final outcomes with ``seq`` above the given one, in order (their decisions: :meth:`decisions`)."""
        rows = (
            self._reader()
            .execute(
                "SELECT seq, event_id, slot, item_id, reward, source, ts FROM outcomes WHERE seq > ?"
                " ORDER BY seq LIMIT ?",
                (seq, limit),
            )
            .fetchall()
        )
        return [Outcome(*row) for row in rows]

    def settled_outcomes_before(self, seq: int | None, slot: int, deadline: float, limit: int = 1000) -> list[Outcome]:
        """Final outcomes of ``slot`` with ``seq`` below the given one (None: all), newest first, of the
        decisions whose reward window ended by ``deadline``: every such slot has its outcome, rewarded
        or not, whereas within the window only rewarded slots are final (under ``earliest``)."""
        rows = (
            self._reader()
            .execute(
                "SELECT o.seq, o.event_id, o.slot, o.item_id, o.reward, o.source, o.ts"
                " FROM outcomes o JOIN decisions d ON d.event_id = o.event_id"
                " WHERE o.seq < ? AND o.slot = ? AND d.deadline <= ? ORDER BY o.seq DESC LIMIT ?",
                (1 << 62 if seq is None else seq, slot, deadline, limit),
            )
            .fetchall()
        )
        return [Outcome(*row) for row in rows]

    def decisions(self, event_ids: Iterable[str]) -> dict[str, LoggedDecision]:
        """The logged decisions of the given events, by event id (unknown ids are left out)."""
        ids = list(dict.fromkeys(event_ids))
        found: dict[str, LoggedDecision] = {}
        conn = self._reader()
        versions = self.reader.versions.reader(conn)
        for chunk in chunks(ids, 500):
            marks = ",".join("?" * len(chunk))
            for row in conn.execute(f"SELECT {DECISION_COLUMNS} FROM decisions WHERE event_id IN ({marks})", chunk):
                found[row[0]] = decision_from_row(row, versions)
        return found

    def outcome_time_after(self, seq: int) -> float | None:
        """When the first outcome after ``seq`` was committed (the oldest not yet learned), or None."""
        row = self._reader().execute("SELECT ts FROM outcomes WHERE seq > ? ORDER BY seq LIMIT 1", (seq,)).fetchone()
        return None if row is None else float(row[0])

    def last_outcome_seq(self) -> int:
        (seq,) = self._reader().execute("SELECT COALESCE(MAX(seq), 0) FROM outcomes").fetchone()
        return int(seq)

    def last_assigned_seq(self) -> int:
        """The highest outcome ``seq`` ever assigned: unlike :meth:`last_outcome_seq`, deleting outcomes
        never lowers it, so a checkpoint that learned beyond it was learned from another copy of the log."""
        return self.database.last_assigned(self._reader(), "outcomes", "seq")

@dataclass(frozen=True, slots=True)
class Forgotten:
    """What :meth:`EventLog.forget_user` deleted: the user's events, and their rewards and outcomes."""

    event_ids: tuple[str, ...]
    rewards: int
    outcomes: int
    portraits: int = 0
