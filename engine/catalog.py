"""The storefront's catalog as the engine serves it: item writes, pages of items, and the candidates it offers.

:attr:`Catalog.items` is replaced on every write, never changed in place, so a decision reads it
once without a lock. Writes hold the catalog lock while they update the log, ``items`` and the
embeddings index; the sync of a new embeddings artifact holds the same lock
(:mod:`engine.retrieval`).
"""

from __future__ import annotations

import base64
import random
import threading
from collections.abc import Callable

from engine.embeddings import Representation
from engine.errors import InvalidRequest, PreconditionFailed
from engine.catalogstore import CatalogStore
from engine.coldstart import ColdStart
from engine.features import frozen_features, merge_features
from engine.retrieval import LiveEmbeddings, Loaded
from engine.types import Candidate, DecisionRequest, Item
from engine.validation import Limits, check_count, check_id, check_items


class Catalog:
    """The items the store holds, kept in memory with read-only features, and their writes.

    Parameters
    ----------
    store:
        The catalog in the store (:attr:`engine.eventlog.EventLog.catalog`).
    limits:
        The limits item writes are checked against, and ``max_candidates``.
    lock:
        The catalog lock, which every write holds (and so does ``embeddings`` when it syncs).
    embeddings:
        The embeddings in use, whose retrieval index follows every write.
    cold_start:
        The candidate set of a Recommend that sends none when the embeddings cannot rank for it
        (:mod:`engine.coldstart`).
    """

    def __init__(self, store: CatalogStore, limits: Limits, lock: threading.Lock, embeddings: LiveEmbeddings,
                 cold_start: ColdStart) -> None:
        self.store = store
        self.limits = limits
        self.lock = lock
        self.embeddings = embeddings
        self.cold_start = cold_start
        self._change = store.change()
        self.items: dict[str, Item] = {}
        self.active_ids: tuple[str, ...] = ()  # the active items' ids: what the cold-start sample draws from
        self.active_count = 0
        self._replace({item.item_id: _frozen_item(item, item.version) for item in store.items()})

    def _replace(self, items: dict[str, Item]) -> None:
        """The catalog is now ``items`` (replaced, never changed in place: a decision reads it once)."""
        self.active_ids = tuple(item_id for item_id, item in items.items() if item.active)
        self.active_count = len(self.active_ids)
        self.items = items
        self.cold_start.catalog_changed()

    def follow(self) -> bool:
        """Take in what other processes wrote to the store's catalog since the last look (a cheap
        read when nothing changed); True when something did. The whole catalog is read again."""
        change = self.store.change()
        if change == self._change:
            return False
        with self.lock:
            self._change = change
            stored = {item.item_id: _frozen_item(item, item.version) for item in self.store.items()}
            gone = [item_id for item_id in self.items if item_id not in stored]
            changed = [item for item_id, item in stored.items() if self.items.get(item_id) != item]
            self._replace(stored)
            if changed:
                self.embeddings.upsert_items(changed)
            if gone:
                self.embeddings.delete_items(gone)
        return True

    def upsert_items(self, items: list[Item]) -> int:
        check_items("items", items, self.limits)
        with self.lock:
            versions = self.store.upsert_items(items)
            stored = {item.item_id: _frozen_item(item, v) for item, v in zip(items, versions, strict=True)}
            self._replace({**self.items, **stored})
            self.embeddings.upsert_items(items)  # new items get a representation from their features
        return len(items)

    def delete_items(self, item_ids: list[str]) -> int:
        check_count("item_ids", len(item_ids), self.limits.max_items_per_call)
        for i, item_id in enumerate(item_ids):
            check_id(f"item_ids[{i}]", item_id, self.limits)
        with self.lock:
            deleted = self.store.delete_items(item_ids)
            catalog = dict(self.items)
            for item_id in deleted:
                catalog.pop(item_id, None)
            self._replace(catalog)
            self.embeddings.delete_items(deleted)
        return len(deleted)

    def list_items(self, page_size: int, page_token: str, active_only: bool) -> tuple[list[Item], str]:
        if not 0 <= page_size <= 1000:
            raise InvalidRequest("page_size", f"must be within [0, 1000] (0 means 100), got {page_size}")
        after = _decode_token(page_token)
        size = page_size or 100
        items = self.store.items(after=after, limit=size + 1, active_only=active_only)
        if len(items) <= size:
            return items, ""
        return items[:size], _encode_token(items[size - 1].item_id)

    # -- the candidates a decision is offered ------------------------------------------------------

    def candidates(
        self, request: DecisionRequest, live: Loaded | None, user: Representation | None, retrieval_top_n: int,
        draw_seed: str,
    ) -> list[Candidate]:
        """The request's candidates merged with the catalog; else LightFM's top N for a user the
        embeddings know something of; else every active item, or the cold-start set
        (:mod:`engine.coldstart`) of a catalog larger than ``max_candidates``.

        Excluded and inactive items are left out. ``draw_seed`` seeds the cold-start sample (the
        server's seed and the event id, so that a decision's set can be drawn again).
        """
        excluded = set(request.exclude_item_ids)
        catalog = self.items
        if request.candidates and not catalog and not excluded:
            return list(request.candidates)  # nothing to merge or leave out
        if request.candidates:
            candidates = []
            for c in request.candidates:
                item = catalog.get(c.item_id)
                if c.item_id in excluded or (item is not None and not item.active):
                    continue
                if item is None:
                    candidates.append(c)
                else:
                    candidates.append(Candidate(c.item_id, merge_features(item.features, c.features), item))
        elif live is not None and user is not None and _known(user):
            candidates = self._retrieve(live, user, excluded, retrieval_top_n)
        elif self.active_count > self.limits.max_candidates:
            ids = self.cold_start.candidate_ids(catalog, self.active_ids, excluded, random.Random(draw_seed))
            candidates = [Candidate(i, catalog[i].features, catalog[i]) for i in ids]
        else:
            candidates = [Candidate(i.item_id, i.features, i) for i in catalog.values() if i.active]
            candidates = [c for c in candidates if c.item_id not in excluded]
            if not candidates:
                raise PreconditionFailed("candidates", "empty, and the catalog has no active item to offer")
        if not candidates:
            raise InvalidRequest("exclude_item_ids", "leaves no candidate (excluded or inactive in the catalog)")
        return candidates

    def pinnable(self, request: DecisionRequest) -> Callable[[str], Candidate | None]:
        """The candidate of a pinned item (:mod:`engine.liverules`) for a request that sent none:
        the catalog's item when it is active and the request does not exclude it."""
        catalog = self.items

        def candidate(item_id: str) -> Candidate | None:
            item = catalog.get(item_id)
            if item is None or not item.active or item_id in request.exclude_item_ids:
                return None
            return Candidate(item_id, item.features, item)

        return candidate

    def _retrieve(self, live: Loaded, user: Representation, excluded: set[str], retrieval_top_n: int) -> list[Candidate]:
        """The ``retrieval_top_n`` active catalog items with the best LightFM score for ``user``, minus ``excluded``."""
        if len(live.embeddings) == 0:
            raise PreconditionFailed("candidates", "empty, and the catalog has no active item to offer")
        catalog = self.items
        n = min(retrieval_top_n, self.limits.max_candidates)
        candidates = []
        for item_id, _ in live.embeddings.top_n(user, n, exclude=excluded):
            item = catalog.get(item_id)
            if item is not None and item.active:  # the index follows the catalog; this covers a write in progress
                candidates.append(Candidate(item_id, item.features, item))
        return candidates


def _known(user: Representation) -> bool:
    """Whether the embeddings know anything of the user (a trained identity, a known feature)."""
    return bool(user.bias) or bool(user.vector.any())


def _frozen_item(item: Item, version: int) -> Item:
    return Item(item.item_id, frozen_features(item.features), item.active, version)


_MAX_TOKEN_LENGTH = 2048  # base64 of the longest item id, with room to spare


def _encode_token(item_id: str) -> str:
    return base64.urlsafe_b64encode(item_id.encode()).decode()


def _decode_token(token: str) -> str:
    if not token:
        return ""
    if len(token) > _MAX_TOKEN_LENGTH:
        raise InvalidRequest("page_token", "is not a next_page_token from ListItems")
    try:
        return base64.b64decode(token.encode(), altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        raise InvalidRequest("page_token", "is not a next_page_token from ListItems") from None
