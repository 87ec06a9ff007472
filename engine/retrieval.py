"""The LightFM embeddings a server decides with: loaded at start, kept in step with the catalog, hot-swapped.

:class:`LiveEmbeddings` holds one reference to the artifact in use (a :class:`Loaded`). A decision
takes that reference once and uses it throughout, so a swap never changes the embeddings under a
request. A swap builds the new artifact completely — loaded, and its retrieval index synced with
the catalog's active items — and only then replaces the reference.

Catalog writes and the sync of a new artifact hold the same lock (``catalog_lock``, the engine's),
so an item upserted or deleted while a new artifact loads is in the new index too: the sync reads
the catalog after every earlier write, and later writes wait for the swap and then go to the new
index.

A watch thread polls the manifest (``<data_dir>/embeddings/embeddings.json``) every
``poll_interval`` seconds and swaps when it names another artifact; a failed load is logged and the
old embeddings keep serving.
"""

from __future__ import annotations

import logging
import threading
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from engine.embeddings import MANIFEST, Embeddings, current_artifact
from engine.errors import PreconditionFailed, StartupRefused
from engine.types import Item

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EmbeddingsInfo:
    """What GetModelInfo says about the embeddings in use."""

    artifact: str
    trained_ts: float | None
    items_indexed: int
    components: int


@dataclass(frozen=True, slots=True)
class Loaded:
    """One artifact ready to serve: the embeddings and the name decisions are logged with."""

    embeddings: Embeddings
    artifact: str  # file name in <data_dir>/embeddings

    @property
    def version(self) -> str:
        """The artifact's name without ``.npz``: what a decision's ``model_version`` carries after ``+``."""
        return self.artifact.removesuffix(".npz")

    def info(self) -> EmbeddingsInfo:
        trained = self.embeddings.metadata.get("trained_ts")
        return EmbeddingsInfo(self.artifact, float(trained) if isinstance(trained, int | float) else None,
                              len(self.embeddings), self.embeddings.components)


class LiveEmbeddings:
    """The embeddings in use (or none), their catalog sync, reloads and the manifest watch.

    Parameters
    ----------
    data_dir:
        The server's data directory; artifacts are under ``data_dir/embeddings``.
    catalog:
        Returns the catalog's items now (called with ``catalog_lock`` held).
    catalog_lock:
        The lock every catalog write holds while it updates the catalog and this index.
    """

    def __init__(self, data_dir: str | Path, catalog: Callable[[], Iterable[Item]], catalog_lock: threading.Lock) -> None:
        self.data_dir = Path(data_dir)
        self._catalog = catalog
        self._catalog_lock = catalog_lock
        self._reload_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.current: Loaded | None = None

    def reload(self) -> bool:
        """Swap in the artifact the manifest names if it is not the one in use; return whether it changed.

        Raises :class:`PreconditionFailed` when no embeddings were trained into the data directory.
        """
        with self._reload_lock:
            path = current_artifact(self.data_dir)
            if path is None:
                raise PreconditionFailed("embeddings", "no artifact in the data directory; run recbandit train-embeddings")
            current = self.current
            if current is not None and current.artifact == path.name:
                return False
            embeddings = Embeddings.load(path)  # outside the catalog lock: catalog writes go on meanwhile
            with self._catalog_lock:
                embeddings.sync_catalog(self._catalog())
                self.current = Loaded(embeddings, path.name)
            log.info("embeddings %s in use: %d items indexed, %d components",
                     path.name, len(embeddings), embeddings.components)
            return True

    def load_if_present(self) -> None:
        """Load the manifest's artifact when there is one and it is not the one in use (at start:
        one that does not load refuses the start, rather than serve without the embeddings it names)."""
        try:
            path = current_artifact(self.data_dir)
            if path is not None:
                self.reload()
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
            raise StartupRefused(
                f"the embeddings named by {self.data_dir / 'embeddings' / MANIFEST} cannot be loaded ({error}); "
                "train them again (recbandit train-embeddings) or remove the manifest to serve without them"
            ) from None

    # -- catalog writes (called with the catalog lock held) -----------------------------------------

    def upsert_items(self, items: list[Item]) -> None:
        if self.current is not None:
            self.current.embeddings.upsert_items(items)

    def delete_items(self, item_ids: list[str]) -> None:
        if self.current is not None:
            self.current.embeddings.delete_items(item_ids)

    def forget_user(self, user_id: str) -> bool:
        """Remove the user's identity from the embeddings in use; whether they held one."""
        current = self.current
        return current is not None and current.embeddings.forget_user(user_id)

    # -- the manifest watch -------------------------------------------------------------------------

    def watch(self, poll_interval: float) -> None:
        """Poll the manifest every ``poll_interval`` seconds in a thread (0 or less: no watch)."""
        if poll_interval <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._watch, args=(poll_interval,), name="embeddings-watch", daemon=True)
        self._thread.start()

    def _watch(self, poll_interval: float) -> None:
        while not self._stop.wait(poll_interval):
            try:
                self.load_if_present()
            except Exception:  # keep serving the embeddings in use; try again at the next poll
                log.exception("loading the new embeddings failed; the previous ones keep serving")

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
