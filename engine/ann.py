"""Approximate top-N retrieval by LightFM score over a large catalog: an inverted-file index (faiss).

The score of item ``i`` for user ``u`` ranks items by ``q_u . p_i + b_i`` (the user's bias is the
same for every item). Folding the bias into one more dimension makes that a plain inner product,

    x_i = [p_i, b_i]        y_u = [q_u, 1]        x_i . y_u = q_u . p_i + b_i

so a maximum-inner-product index over ``x_i`` ranks exactly as :meth:`engine.embeddings.Embeddings.top_n`.

The index is faiss's ``IndexIVFFlat`` with the inner product: k-means splits the ``x_i`` into
``nlist`` cells, a query scores the ``nlist`` centroids and scans the items of the ``nprobe`` best
cells exactly (no quantisation). Recall grows with ``nprobe`` and the time with the items scanned;
``server.bench_ann`` measured the defaults below (recall@100 >= 0.95 from 100k to 10M items) and
why graph indexes (HNSW) lost on LightFM-like data.

Items are keyed by the caller's integer row. :meth:`AnnIndex.upsert` and :meth:`AnnIndex.remove`
keep the index in step with catalog writes; removal scans the lists (``O(items)``, tens of
milliseconds at 10M). Searches share the index, a write has it alone (a readers-writer lock), as
faiss does not allow a search while its lists change.

faiss is imported here only, on first use.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

#: Items per k-means cell: ``nlist = items / ITEMS_PER_LIST``, at most ``MAX_LISTS``.
ITEMS_PER_LIST, MAX_LISTS = 1024, 8192
#: Cells scanned per query: ``2 sqrt(nlist)`` within these bounds.
MIN_PROBES, MAX_PROBES = 16, 96
#: k-means: points per centroid in the training sample (faiss asks for at least 39), iterations.
TRAIN_PER_LIST, KMEANS_ITERATIONS = 40, 10


def default_nlist(n_items: int) -> int:
    """Cells for ``n_items``: one per 1024 items, between 1 and 8192 (97 for 100k, 976 for 1M, 8192 for 10M)."""
    return max(1, min(MAX_LISTS, n_items // ITEMS_PER_LIST))


def default_nprobe(nlist: int) -> int:
    """Cells scanned per query: ``2 sqrt(nlist)`` between 16 and 96 (20 of 97, 63 of 976, 96 of 8192).

    ``server.bench_ann`` measured recall@100 of 0.98 at 100k items, 0.97 at 1M and 0.96 at 10M with
    these, and a p99 under 2 ms on one core at 10M; the lower bound keeps small catalogs accurate.
    Past 10M the cells grow beyond 1024 items and the time per query with them (not measured).
    """
    return min(nlist, max(MIN_PROBES, min(MAX_PROBES, math.ceil(2 * math.sqrt(nlist)))))


class AnnIndex:
    """An inner-product IVF index over ``[vector, bias]`` rows, keyed by integer row.

    Parameters
    ----------
    rows:
        (n,) int64 keys (the caller's row numbers).
    vectors, biases:
        (n, k) and (n,) float32: the items' LightFM representations.
    nlist, nprobe:
        Cells and cells scanned per query; :func:`default_nlist` / :func:`default_nprobe` when None.
    seed:
        Seeds the k-means training sample and initialisation.
    """

    def __init__(
        self,
        rows: np.ndarray,
        vectors: np.ndarray,
        biases: np.ndarray,
        *,
        nlist: int | None = None,
        nprobe: int | None = None,
        seed: int = 0,
    ) -> None:
        import faiss  # heavy: only servers with a large catalog need it

        n, k = vectors.shape
        self.components = k
        self.nlist = nlist if nlist is not None else default_nlist(n)
        self.nprobe = nprobe if nprobe is not None else default_nprobe(self.nlist)
        self._lock = _SharedLock()
        x = _stack(vectors, biases)
        quantizer = faiss.IndexFlatIP(k + 1)
        index = faiss.IndexIVFFlat(quantizer, k + 1, self.nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed, index.cp.niter = seed, KMEANS_ITERATIONS
        sample = np.random.default_rng(seed).choice(n, min(n, TRAIN_PER_LIST * self.nlist), replace=False)
        index.train(x[np.sort(sample)])
        index.add_with_ids(x, np.asarray(rows, dtype=np.int64))
        index.nprobe = self.nprobe
        self._quantizer, self._index = quantizer, index  # the quantizer must outlive the index

    def __len__(self) -> int:
        return int(self._index.ntotal)

    @property
    def nbytes(self) -> int:
        """Bytes of the stored items (``k + 1`` float32 and an int64 key each) and the centroids."""
        d = self.components + 1
        return len(self) * (4 * d + 8) + self.nlist * 4 * d

    def search(self, vector: np.ndarray, n: int) -> np.ndarray:
        """Rows of (about) the ``n`` best items for the user vector ``vector``; fewer when fewer are indexed.

        The rows come in no guaranteed order and with approximate membership: the caller rescores.
        """
        query = np.append(np.asarray(vector, np.float32), np.float32(1.0))[None, :]
        k = min(n, len(self))
        if k < 1:
            return np.zeros(0, np.int64)
        with self._lock.shared():
            _, rows = self._index.search(query, k)
        rows = rows[0]
        return rows[rows >= 0]

    def upsert(self, rows: np.ndarray, vectors: np.ndarray, biases: np.ndarray) -> None:
        """Add items, replacing the entries of rows already indexed."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return
        x = _stack(vectors, biases)
        with self._lock.exclusive():
            self._index.remove_ids(rows)
            self._index.add_with_ids(x, rows)

    def remove(self, rows: np.ndarray) -> int:
        """Take rows out of the index; the number removed."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return 0
        with self._lock.exclusive():
            return int(self._index.remove_ids(rows))


def _stack(vectors: np.ndarray, biases: np.ndarray) -> np.ndarray:
    """``[p_i, b_i]`` rows, C-contiguous float32 as faiss wants them."""
    x = np.empty((len(biases), vectors.shape[1] + 1), dtype=np.float32)
    x[:, :-1] = vectors
    x[:, -1] = biases
    return x


class _SharedLock:
    """Many readers or one writer; a waiting writer holds off new readers so it cannot starve."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._writing or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writing or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()
