"""The catalog in the store: the items, and every catalog version decisions name them by.

``items`` holds each item as it is now; ``item_versions`` every item's features as they have been,
each content once, addressed by a digest of item id and features. A logged decision names its
catalog candidates by version (:mod:`engine.records`), so it reads back what it was decided with
however the catalog changes later. A version the catalog moves away from is marked superseded;
retention deletes it once no decision left in the log can name it.

Every write also changes the ``catalog_change`` token in ``meta``, which other processes and
replicas poll to notice it (:meth:`engine.catalog.Catalog.follow`).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterable

from engine.cache import BoundedCache
from engine.features import frozen_features
from engine.groupcommit import GroupCommitWriter
from engine.logwrites import SET_META, chunks
from engine.records import CatalogVersions, features_from_json, features_to_json
from engine.storage import Connection
from engine.types import Features, Item

_VERSIONS_CACHED = (1 << 16, 64 << 20)
"""Catalog versions kept decoded (entries, bytes of their JSON): those recent decisions name are read
from the table once, until the cache is full and starts over."""


class VersionCache:
    """Catalog versions decoded once, read-only, and shared by every candidate that names them."""

    def __init__(self) -> None:
        self._versions: BoundedCache[int, tuple[str, Features]] = BoundedCache(*_VERSIONS_CACHED)

    def reader(self, conn: Connection) -> CatalogVersions:
        """The reader of catalog versions for records read on ``conn``."""

        def item(version: int) -> tuple[str, Features]:
            found = self._versions.get(version)
            if found is None:
                row = conn.execute("SELECT item_id, features FROM item_versions WHERE version = ?", (version,)).fetchone()
                if row is None:
                    raise ValueError(f"a record names catalog version {version}, which this log does not hold")
                found = (row[0], frozen_features(features_from_json(row[1])))
                self._versions.put(version, found, len(row[0]) + len(row[1]))
            return found

        return item


def read_items(conn: Connection, *, after: str = "", limit: int | None = None, active_only: bool = False) -> list[Item]:
    """The catalog's items by id, from the first after ``after``; ``limit`` of them at most."""
    query = "SELECT item_id, features, active, version FROM items WHERE item_id > ?"
    if active_only:
        query += " AND active = 1"
    query += " ORDER BY item_id" + (f" LIMIT {int(limit)}" if limit is not None else "")
    return [Item(i, features_from_json(f), bool(a), v) for i, f, a, v in conn.execute(query, (after,))]


def read_catalog_change(conn: Connection) -> str:
    row = conn.execute("SELECT value FROM meta WHERE key = 'catalog_change'").fetchone()
    return "" if row is None else str(row[0])


def store_versions(conn: Connection, items: list[tuple[str, str]]) -> list[int]:
    """The catalog versions of ``(item_id, features_json)`` pairs, stored if new.

    A version is addressed by its content: the digest of the item id and the features' JSON (whose
    order it keeps), so the same features of the same item are stored once however often they are
    written, and a decision's reference always reads back what it was decided with.
    """
    digests = [hashlib.blake2b(f"{item_id}\x00{features}".encode(), digest_size=16).digest() for item_id, features in items]
    conn.executemany("INSERT INTO item_versions (digest, item_id, features) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                     [(d, item_id, features) for d, (item_id, features) in zip(digests, items, strict=True)])
    return [conn.execute("SELECT version FROM item_versions WHERE digest = ?", (d,)).fetchone()[0] for d in digests]


def version_unversioned_items(conn: Connection, begin: str) -> None:
    """Give every item without a catalog version (those of a log older than versions) its version."""
    rows = conn.execute("SELECT item_id, features FROM items WHERE version = 0").fetchall()
    if rows:
        conn.execute(begin)
        versions = store_versions(conn, rows)
        conn.executemany("UPDATE items SET version = ? WHERE item_id = ?",
                         [(v, item_id) for v, (item_id, _) in zip(versions, rows, strict=True)])
        conn.execute("COMMIT")


def _note_change(conn: Connection) -> None:
    conn.execute(SET_META, ("catalog_change", os.urandom(8).hex()))


def _supersede(conn: Connection, item_ids: list[str]) -> None:
    """Mark the current catalog versions of ``item_ids`` superseded now (the one an item keeps is unmarked after)."""
    now = time.time()
    for chunk in chunks(item_ids, 500):
        marks = ",".join("?" * len(chunk))
        conn.execute(f"UPDATE item_versions SET superseded_ts = ? WHERE version IN"
                     f" (SELECT version FROM items WHERE item_id IN ({marks}))", (now, *chunk))


class CatalogStore:
    """The catalog's writes, through the event log's writer (each one durable when it returns), and
    its reads, on the calling thread's connection."""

    def __init__(self, writer: GroupCommitWriter, connection: Callable[[], Connection]) -> None:
        self._writer = writer
        self._connection = connection

    def upsert_items(self, items: Iterable[Item]) -> list[int]:
        """Store the items, and each one's features as a catalog version; return their versions in order."""
        items = list(items)
        features = [(i.item_id, features_to_json(i.features)) for i in items]

        def upsert(conn: Connection) -> list[int]:
            _note_change(conn)
            versions = store_versions(conn, features)
            _supersede(conn, [i.item_id for i in items])
            conn.executemany("UPDATE item_versions SET superseded_ts = NULL WHERE version = ?", [(v,) for v in versions])
            conn.executemany(
                "INSERT INTO items (item_id, features, active, version) VALUES (?, ?, ?, ?) ON CONFLICT (item_id)"
                " DO UPDATE SET features = excluded.features, active = excluded.active, version = excluded.version",
                [(i.item_id, f, int(i.active), v) for i, (_, f), v in zip(items, features, versions, strict=True)],
            )
            return versions

        return self._writer.submit(upsert)

    def delete_items(self, item_ids: Iterable[str]) -> list[str]:
        """Delete the given items; return the ids that existed."""
        ids = list(item_ids)

        def delete(conn: Connection) -> list[str]:
            _note_change(conn)
            _supersede(conn, ids)
            return [i for i in ids if conn.execute("DELETE FROM items WHERE item_id = ?", (i,)).rowcount]

        return self._writer.submit(delete)

    def items(self, *, after: str = "", limit: int | None = None, active_only: bool = False) -> list[Item]:
        return read_items(self._connection(), after=after, limit=limit, active_only=active_only)

    def change(self) -> str:
        """A token that changes with every catalog write, by any process: how others notice one."""
        return read_catalog_change(self._connection())

    def forget_superseded_versions(self, margin: float = 3600.0) -> int:
        """Delete the catalog versions no decision in the log can name: those superseded (the item
        changed or was deleted) ``margin`` seconds or more before the oldest decision the log holds.
        A decision names only versions current when it was made. Returns how many went."""

        def forget(conn: Connection) -> int:
            (oldest,) = conn.execute("SELECT MIN(ts) FROM decisions").fetchone()
            before = (time.time() if oldest is None else oldest) - margin
            return conn.execute("DELETE FROM item_versions WHERE superseded_ts < ?", (before,)).rowcount

        return self._writer.submit(forget)
