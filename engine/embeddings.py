"""LightFM embeddings at serving time: representations, top-N retrieval and affinity features.

LightFM represents a user (or an item) as the weighted sum of the embeddings of its features,

    q_u = sum_j w_uj e_j        b_u = sum_j w_uj beta_j

where the features are the identity token ``id=<user_id>`` (only for users seen in training) and
one token per categorical feature value (``segment=sporty``; a tag list gives one token per tag;
a bool gives ``name=true``/``name=false``). Numbers are not LightFM features: they stay with the
bandit. With ``normalize`` (the default, as in ``lightfm.data.Dataset``) the weights of a row are
``1/len(tokens)``. Tokens the model never saw are ignored, so an unknown user or an item added
after training is represented by its known features alone, and one with no known feature by
zeros (its items are then ranked by the item biases, LightFM's popularity term).

The score of item ``i`` for user ``u`` is LightFM's prediction ``b_u + b_i + q_u . p_i``. Item
representations are precomputed into one ``float32`` matrix, so :meth:`Embeddings.top_n` is one
matrix-vector product and an ``argpartition``. Above ``ann_threshold`` live items it asks an
approximate inner-product index (:mod:`engine.ann`, faiss) for candidates instead and rescores them
exactly. Only numpy is needed below the threshold; LightFM is never imported.

Concurrency: any number of threads may call the read methods while one writer (serialised by a
lock) upserts or deletes items. Writers append rows to buffers with spare capacity and publish a
new immutable :class:`_View`; a reader uses the view it took at the start of its call. The ANN
index is built with the embeddings (so a hot swap installs a ready index) and the writers keep it in
step; its rows are rescored against the reader's view, so a deleted item never comes back.
"""

from __future__ import annotations

import io
import json
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from engine.ann import AnnIndex
from engine.checkpoint import atomic_write
from engine.errors import InvalidRequest
from engine.types import Features, Item

ARTIFACT_VERSION = 1
MANIFEST = "embeddings.json"
IDENTITY = "id="
AFFINITY_FEATURES = ("lightfm_affinity", "lightfm_cosine", "lightfm_item_bias", "lightfm_rank")
#: Live items above which :meth:`Embeddings.top_n` uses the ANN index. At 100k, exact top-100 on one
#: core took p50 2.1 ms, p99 2.9 ms (``server.bench_ann``): about the 2 ms budget, and exact; the
#: index would save 1-2 ms for a second copy of the vectors and recall 0.98. Exact grows linearly
#: past it (15 ms at 1M) while the index stays near 1 ms.
ANN_THRESHOLD = 100_000


class Representation(NamedTuple):
    """A LightFM representation: the bias and the latent vector (``float32``, ``components`` long)."""

    bias: float
    vector: np.ndarray


def feature_tokens(features: Features) -> list[str]:
    """LightFM feature tokens of a feature map: ``name=value`` per string, tag or bool; numbers skipped."""
    tokens = []
    for name, value in features.items():
        if isinstance(value, bool):
            tokens.append(f"{name}={'true' if value else 'false'}")
        elif isinstance(value, str):
            tokens.append(f"{name}={value}")
        elif isinstance(value, tuple | list):
            tokens.extend(f"{name}={v}" for v in value)
    return tokens


def identity_token(entity_id: str) -> str:
    return IDENTITY + entity_id


@dataclass(frozen=True)
class FeatureTable:
    """One side (users or items) of a trained model: a token's row in ``embeddings`` and ``biases``."""

    tokens: Sequence[str]
    embeddings: np.ndarray  # (n_tokens, components) float32
    biases: np.ndarray  # (n_tokens,) float32
    index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", {t: i for i, t in enumerate(self.tokens)})

    def rows(self, entity_id: str | None, features: Features) -> list[int]:
        """Rows of the known tokens: the identity (when ``entity_id`` was trained) and the features."""
        index = self.index
        tokens = feature_tokens(features)
        if entity_id is not None:
            tokens.insert(0, identity_token(entity_id))
        return [index[t] for t in dict.fromkeys(tokens) if t in index]

    def combine(self, rows_per_entity: Sequence[Sequence[int]], normalize: bool) -> tuple[np.ndarray, np.ndarray]:
        """Biases (n,) and vectors (n, components) of entities given their token rows, in one pass."""
        n, k = len(rows_per_entity), self.embeddings.shape[1]
        counts = np.fromiter((len(r) for r in rows_per_entity), dtype=np.int64, count=n)
        vectors = np.zeros((n, k), dtype=np.float32)
        biases = np.zeros(n, dtype=np.float32)
        has = counts > 0
        if not has.any():
            return biases, vectors
        flat = np.fromiter((j for r in rows_per_entity for j in r), dtype=np.int64, count=int(counts.sum()))
        weights = np.repeat(1.0 / counts[has] if normalize else np.ones(int(has.sum())), counts[has]).astype(np.float32)
        starts = np.concatenate(([0], np.cumsum(counts[has])[:-1]))
        vectors[has] = np.add.reduceat(self.embeddings[flat] * weights[:, None], starts, axis=0)
        biases[has] = np.add.reduceat(self.biases[flat] * weights, starts)
        return biases, vectors


@dataclass(frozen=True, slots=True)
class _View:
    """What one reader sees: the first ``size`` rows of the buffers and the live-item statistics."""

    size: int
    vectors: np.ndarray  # (capacity, k) float32
    biases: np.ndarray  # (capacity,) float32, the item's LightFM bias
    rank_biases: np.ndarray  # (capacity,) float32, the bias, or -inf for a deleted item
    live: int
    sum1: np.ndarray  # (k+1,) float64: sum over live items of [p_i, b_i]
    sum2: np.ndarray  # (k+1, k+1) float64: sum over live items of [p_i, b_i][p_i, b_i]^T


class Embeddings:
    """A trained LightFM model ready to serve: representations, retrieval index, affinity features.

    Parameters
    ----------
    users, items:
        The trained feature tables (identity tokens ``id=<id>`` included).
    item_ids, item_biases, item_vectors:
        The retrieval index at load time: the catalog's active items and their precomputed
        representations (as ``lightfm.LightFM.get_item_representations`` would give them).
    normalize:
        Whether a representation is the mean (True) or the sum of its feature embeddings.
    metadata:
        Training config, metrics and provenance, kept verbatim in the artifact.
    ann_threshold:
        Above this many live items, retrieval uses an approximate index (:mod:`engine.ann`), built
        here and kept in step by catalog writes; None: always exact.
    """

    def __init__(
        self,
        users: FeatureTable,
        items: FeatureTable,
        item_ids: Sequence[str],
        item_biases: np.ndarray,
        item_vectors: np.ndarray,
        *,
        normalize: bool = True,
        metadata: Mapping[str, object] | None = None,
        ann_threshold: int | None = ANN_THRESHOLD,
    ) -> None:
        k = items.embeddings.shape[1]
        if users.embeddings.shape[1] != k:
            raise InvalidRequest("users", f"components {users.embeddings.shape[1]} differ from the items' {k}")
        if item_vectors.shape != (len(item_ids), k) or item_biases.shape != (len(item_ids),):
            raise InvalidRequest("item_vectors", f"shapes {item_vectors.shape}, {item_biases.shape} for {len(item_ids)} items")
        self.users, self.items = users, items
        self.normalize = normalize
        self.metadata = dict(metadata or {})
        self.components = k
        self.ann_threshold = ann_threshold
        self._ann: AnnIndex | None = None
        self._lock = threading.Lock()
        self._row: dict[str, int] = {}
        self._row_ids: list[str] = []
        empty = np.zeros((0, k), dtype=np.float32)
        self._view = _View(0, empty, np.zeros(0, np.float32), np.zeros(0, np.float32), 0,
                           np.zeros(k + 1), np.zeros((k + 1, k + 1)))
        self._set_rows(list(item_ids), np.asarray(item_biases, np.float32), np.asarray(item_vectors, np.float32))

    # -- representations ---------------------------------------------------------------------------

    def user_representation(self, user_id: str, user_features: Features) -> Representation:
        """The user's representation: identity (when trained) plus the known user features."""
        _check_features("user_features", user_features)
        rows = self.users.rows(user_id, user_features)
        biases, vectors = self.users.combine([rows], self.normalize)
        return Representation(float(biases[0]), vectors[0])

    def item_representation(self, item_id: str, item_features: Features) -> Representation:
        """The item's representation: identity (when trained) plus the known catalog features."""
        _check_features("item_features", item_features)
        biases, vectors = self.items.combine([self.items.rows(item_id, item_features)], self.normalize)
        return Representation(float(biases[0]), vectors[0])

    def forget_user(self, user_id: str) -> bool:
        """Drop the user's identity token and zero its row (in memory; the artifact file is not rewritten)."""
        row = self.users.index.pop(identity_token(user_id), None)
        if row is None:
            return False
        self.users.embeddings[row] = 0.0
        self.users.biases[row] = 0.0
        return True

    def is_known_user(self, user_id: str) -> bool:
        return identity_token(user_id) in self.users.index

    # -- the retrieval index -----------------------------------------------------------------------

    def __len__(self) -> int:
        """The number of live (retrievable) items."""
        return self._view.live

    def __contains__(self, item_id: object) -> bool:
        view, row = self._view, self._row.get(item_id)  # type: ignore[arg-type]
        return row is not None and row < view.size and np.isfinite(view.rank_biases[row])

    def upsert_items(self, items: Iterable[Item]) -> int:
        """Add or refresh catalog items from their features; inactive items leave the index."""
        items = list(items)
        for i, item in enumerate(items):
            if not isinstance(item, Item):
                raise InvalidRequest(f"items[{i}]", f"must be an Item, got {type(item).__name__}")
            _check_features(f"items[{i}].features", item.features)
        rows = [self.items.rows(item.item_id, item.features) for item in items]
        biases, vectors = self.items.combine(rows, self.normalize)
        with self._lock:
            self._set_rows([i.item_id for i in items], biases, vectors)
            self._delete([i.item_id for i in items if not i.active])
        return len(items)

    def delete_items(self, item_ids: Iterable[str]) -> list[str]:
        """Take items out of retrieval (their representation is kept); return those that were live."""
        if isinstance(item_ids, str):
            raise InvalidRequest("item_ids", "must be a collection of item ids, not one string")
        ids = list(item_ids)
        with self._lock:
            return self._delete(ids)

    def sync_catalog(self, items: Iterable[Item]) -> None:
        """Make the index exactly the catalog's active items (after loading a new artifact)."""
        items = list(items)
        wanted = {i.item_id for i in items if i.active}
        self.upsert_items(items)
        self.delete_items([i for i in self._row_ids if i not in wanted])

    def _set_rows(self, ids: list[str], biases: np.ndarray, vectors: np.ndarray) -> None:
        view = self._view
        size, vec, bias, rank = view.size, view.vectors, view.biases, view.rank_biases
        sum1, sum2, live = view.sum1, view.sum2, view.live
        new = [i for i in dict.fromkeys(ids) if i not in self._row]
        if size + len(new) > len(bias):
            capacity = max(size + len(new), int(len(bias) * 1.5), 1024)
            vec, bias, rank = _grow(vec, size, capacity), _grow(bias, size, capacity), _grow(rank, size, capacity)
        for item_id in new:
            self._row[item_id] = len(self._row_ids)
            self._row_ids.append(item_id)
        rows = np.fromiter((self._row[i] for i in ids), dtype=np.int64, count=len(ids))
        old = rows[rows < size]
        was_live = np.unique(old[np.isfinite(rank[old])])
        changed = _changed_rows(rows, size, vec, rank, vectors, biases)
        sum1, sum2 = _stats_update(sum1, sum2, vec[was_live], bias[was_live], -1.0)
        vec[rows], bias[rows], rank[rows] = vectors, biases, biases
        kept = np.unique(rows)
        sum1, sum2 = _stats_update(sum1, sum2, vec[kept], bias[kept], +1.0)
        live += len(kept) - len(was_live)
        self._view = _View(size + len(new), vec, bias, rank, live, sum1, sum2)
        self._index_rows(changed)

    def _delete(self, ids: list[str]) -> list[str]:
        view = self._view
        rows = [(i, self._row[i]) for i in dict.fromkeys(ids) if i in self._row]
        gone = [(i, r) for i, r in rows if np.isfinite(view.rank_biases[r])]
        if not gone:
            return []
        r = np.array([r for _, r in gone], dtype=np.int64)
        sum1, sum2 = _stats_update(view.sum1, view.sum2, view.vectors[r], view.biases[r], -1.0)
        view.rank_biases[r] = -np.inf
        self._view = _View(view.size, view.vectors, view.biases, view.rank_biases, view.live - len(gone), sum1, sum2)
        if self._ann is not None:
            self._ann.remove(r)
        return [i for i, _ in gone]

    def _index_rows(self, changed: np.ndarray) -> None:
        """Bring the ANN index up to date with the view after rows ``changed`` were set.

        The index is built once live items exceed ``ann_threshold``, and again when a write changes
        over a quarter of them (a catalog sync after training: one build beats item-wise updates).
        Otherwise the changed rows are replaced in it. Once built it is kept, so a catalog that
        shrinks and grows around the threshold is not rebuilt each time.
        """
        view = self._view
        if self._ann is None and (self.ann_threshold is None or view.live <= self.ann_threshold):
            return
        if self._ann is None or len(changed) > view.live // 4:
            live = np.flatnonzero(np.isfinite(view.rank_biases[: view.size]))
            self._ann = AnnIndex(live, view.vectors[live], view.biases[live])
        elif len(changed):
            self._ann.upsert(changed, view.vectors[changed], view.biases[changed])

    @property
    def ann_bytes(self) -> int:
        """Bytes held by the ANN index (0 without one)."""
        return self._ann.nbytes if self._ann is not None else 0

    # -- scoring -----------------------------------------------------------------------------------

    def top_n(self, user_repr: Representation, n: int, exclude: Iterable[str] = frozenset()) -> list[tuple[str, float]]:
        """The ``n`` live items with the highest LightFM score for ``user_repr``, best first.

        One ``(size, k) @ (k,)`` product plus the item biases, exclusions set to ``-inf``, then
        ``argpartition`` for the top ``n`` and a sort of those ``n``. Above ``ann_threshold`` live
        items, the ANN index proposes ``n`` plus the number of excluded items as candidates (so
        the exclusions cannot leave fewer than ``n``) and those are scored exactly in the same way:
        the scores are exact, the membership approximate. Fewer than ``n`` come back when fewer
        items are live and not excluded.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise InvalidRequest("n", f"must be a whole number >= 1, got {n!r}")
        vector = self._check_repr(user_repr)
        if isinstance(exclude, str):
            raise InvalidRequest("exclude", "must be a collection of item ids, not one string")
        view, ann = self._view, self._ann
        excluded = [r for r in (self._row.get(i) for i in exclude) if r is not None and r < view.size]
        if ann is not None and self.ann_threshold is not None and view.live > self.ann_threshold:
            top, scores = self._ann_candidates(ann, view, vector, n, excluded)
        else:
            top, scores = self._exact_candidates(view, vector, n, excluded)
        order = np.argsort(-scores, kind="stable")
        order = order[np.isfinite(scores[order])][:n]
        ids, user_bias = self._row_ids, float(user_repr[0])
        return [(ids[r], float(s) + user_bias) for r, s in zip(top[order], scores[order])]

    @staticmethod
    def _exact_candidates(view: _View, vector: np.ndarray, n: int, excluded: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Rows of the ``n`` best scores over the whole view, and their scores (unordered)."""
        scores = view.vectors[: view.size] @ vector
        scores += view.rank_biases[: view.size]
        scores[excluded] = -np.inf
        n = min(n, view.size)
        top = np.argpartition(scores, -n)[-n:] if n < view.size else np.arange(view.size)
        return top, scores[top]

    @staticmethod
    def _ann_candidates(ann: AnnIndex, view: _View, vector: np.ndarray, n: int, excluded: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """The index's candidates (over-fetched by the exclusions) scored exactly against ``view``.

        While a write is under way the index can hold rows this view does not count as live (just
        added, or deleted but not yet removed); when that leaves fewer than ``n``, ask for twice as many.
        """
        fetch = n + len(excluded)
        while True:
            top = ann.search(vector, fetch)
            top = top[top < view.size]
            scores = view.vectors[top] @ vector
            scores += view.rank_biases[top]
            scores[np.isin(top, excluded)] = -np.inf
            if np.isfinite(scores).sum() >= n or fetch >= len(ann):
                return top, scores
            fetch *= 2

    def scores(self, user_repr: Representation, item_ids: Sequence[str]) -> np.ndarray:
        """LightFM scores of the given items (NaN for items without a representation)."""
        vector = self._check_repr(user_repr)
        view = self._view
        rows = np.array([self._row.get(i, -1) for i in item_ids], dtype=np.int64)
        ok = (rows >= 0) & (rows < view.size)
        out = np.full(len(rows), np.nan)
        out[ok] = view.vectors[rows[ok]] @ vector + view.biases[rows[ok]] + float(user_repr[0])
        return out

    def affinity_features(
        self,
        user_repr: Representation,
        item_ids: Sequence[str],
        item_features: Mapping[str, Features] | None = None,
    ) -> list[dict[str, float]]:
        """Per item, numeric features for the bandit's item namespace (``{}`` for an unknown item).

        - ``lightfm_affinity``: the item's score as a z-score over the live catalog for this user,
          ``(s_i - mean) / std``, clipped to [-6, 6]. Mean and variance over the catalog are exact,
          from running sums: with ``x = [q_u, 1]`` and ``y_i = [p_i, b_i]``, ``mean = x.S1/N`` and
          ``var = x^T (S2/N) x - mean^2``.
        - ``lightfm_cosine``: cosine of the user and item vectors (0 when either is zero).
        - ``lightfm_item_bias``: the item's bias (LightFM's popularity term).
        - ``lightfm_rank``: ``1 / (1 + rank)`` of the item's score among ``item_ids`` (best = 1).
        """
        vector = self._check_repr(user_repr)
        view = self._view
        item_features = item_features or {}
        biases, vectors = np.zeros(len(item_ids), np.float32), np.zeros((len(item_ids), self.components), np.float32)
        known = np.zeros(len(item_ids), dtype=bool)
        for j, item_id in enumerate(item_ids):
            row = self._row.get(item_id)
            if row is not None and row < view.size:
                biases[j], vectors[j], known[j] = view.biases[row], view.vectors[row], True
            elif item_id in item_features:
                biases[j], vectors[j] = self.item_representation(item_id, item_features[item_id])
                known[j] = True
        raw = vectors.astype(np.float64) @ vector + biases
        mean, std = self._catalog_moments(view, vector)
        z = np.clip((raw - mean) / std, -6.0, 6.0) if std > 0 else np.zeros_like(raw)
        norms = np.linalg.norm(vectors, axis=1) * float(np.linalg.norm(vector))
        cosine = np.divide(vectors @ vector, norms, out=np.zeros(len(raw), np.float32), where=norms > 0)
        order = np.argsort(-np.where(known, raw, -np.inf), kind="stable")
        rank = np.empty(len(raw), dtype=np.int64)
        rank[order] = np.arange(len(raw))
        return [
            {
                "lightfm_affinity": round(float(z[j]), 4),
                "lightfm_cosine": round(float(cosine[j]), 4),
                "lightfm_item_bias": round(float(biases[j]), 4),
                "lightfm_rank": round(1.0 / (1.0 + float(rank[j])), 4),
            }
            if known[j]
            else {}
            for j in range(len(item_ids))
        ]

    @staticmethod
    def _catalog_moments(view: _View, vector: np.ndarray) -> tuple[float, float]:
        if view.live == 0:
            return 0.0, 0.0
        x = np.append(vector.astype(np.float64), 1.0)
        mean = float(x @ view.sum1) / view.live
        var = float(x @ view.sum2 @ x) / view.live - mean * mean
        return mean, math.sqrt(max(var, 0.0))

    def _check_repr(self, user_repr: object) -> np.ndarray:
        if not isinstance(user_repr, tuple) or len(user_repr) != 2:
            raise InvalidRequest("user_repr", "must be a Representation (bias, vector)")
        vector = np.asarray(user_repr[1], dtype=np.float32)
        if vector.shape != (self.components,):
            raise InvalidRequest("user_repr", f"vector must have shape ({self.components},), got {vector.shape}")
        if not (np.isfinite(vector).all() and math.isfinite(user_repr[0])):
            raise InvalidRequest("user_repr", "must be finite")
        return vector

    # -- the artifact --------------------------------------------------------------------------------

    def arrays(self) -> dict[str, np.ndarray]:
        """Everything the artifact holds, as named arrays (strings as unicode arrays, no pickles)."""
        view = self._view
        live = np.flatnonzero(np.isfinite(view.rank_biases[: view.size]))
        meta = {"artifact_version": ARTIFACT_VERSION, "normalize": self.normalize, **self.metadata}
        return {
            "user_tokens": np.array(list(self.users.tokens), dtype=str),
            "user_embeddings": self.users.embeddings,
            "user_biases": self.users.biases,
            "item_tokens": np.array(list(self.items.tokens), dtype=str),
            "item_embeddings": self.items.embeddings,
            "item_biases": self.items.biases,
            "index_item_ids": np.array([self._row_ids[r] for r in live], dtype=str),
            "index_biases": view.biases[live],
            "index_vectors": view.vectors[live],
            "metadata": np.array(json.dumps(meta, sort_keys=True)),
        }

    @classmethod
    def load(cls, path: str | Path, *, ann_threshold: int | None = ANN_THRESHOLD) -> Embeddings:
        """The artifact at ``path``, its ANN index built when it holds over ``ann_threshold`` items."""
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["metadata"]))
            if meta.get("artifact_version") != ARTIFACT_VERSION:
                raise ValueError(f"{path}: artifact_version {meta.get('artifact_version')}, expected {ARTIFACT_VERSION}")
            users = FeatureTable(data["user_tokens"].tolist(), data["user_embeddings"], data["user_biases"])
            items = FeatureTable(data["item_tokens"].tolist(), data["item_embeddings"], data["item_biases"])
            normalize = bool(meta.pop("normalize"))
            meta.pop("artifact_version")
            return cls(users, items, data["index_item_ids"].tolist(), data["index_biases"], data["index_vectors"],
                       normalize=normalize, metadata=meta, ann_threshold=ann_threshold)


def write_artifact(data_dir: str | Path, embeddings: Embeddings, *, keep: int = 3) -> Path:
    """Write ``<data_dir>/embeddings/embeddings-<ts>.npz`` atomically, then point the manifest at it.

    The artifact is fsynced and renamed before the manifest, so a reader following the manifest
    never sees a partial file. The ``keep`` newest artifacts stay; older ones are removed.
    """
    arrays = embeddings.arrays()

    def write_npz(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)  # type: ignore[arg-type]

    return install_artifact(data_dir, artifact_name(), write_npz, embeddings.metadata.get("metrics", {}), keep=keep)


def artifact_name(ts: float | None = None) -> str:
    """``embeddings-<UTC time>-<microseconds>.npz``: artifacts sort by name as they were made."""
    ts = time.time() if ts is None else ts
    return f"embeddings-{time.strftime('%Y%m%dT%H%M%S', time.gmtime(ts))}-{int(ts * 1e6) % 1_000_000:06d}.npz"


def artifact_bytes(embeddings: Embeddings) -> bytes:
    """The artifact file's bytes (what :meth:`Embeddings.load` reads): to publish it to the store."""
    out = io.BytesIO()
    np.savez(out, **embeddings.arrays())  # type: ignore[arg-type]
    return out.getvalue()


def install_artifact(data_dir: str | Path, name: str, write: Callable[[str], None],
                     metrics: Mapping[str, object] | None = None, *, keep: int = 3) -> Path:
    """Write the artifact ``name`` (``write(tmp_path)`` writes its bytes) into ``<data_dir>/embeddings``
    atomically, then point the manifest at it; the ``keep`` newest artifacts stay. A replica installs
    the learner's artifacts under their own names, so every decision names the same one."""
    directory = Path(data_dir) / "embeddings"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write(directory / name, write)
    manifest = {"artifact": name, "created_ts": time.time(), "metrics": dict(metrics or {})}
    atomic_write(directory / MANIFEST, lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=2)))
    for old in sorted(directory.glob("embeddings-*.npz"))[:-keep]:
        if old.name != name:
            old.unlink(missing_ok=True)
    return directory / name


def current_artifact(data_dir: str | Path) -> Path | None:
    """The artifact the manifest points at, or None when no embeddings were trained."""
    manifest = Path(data_dir) / "embeddings" / MANIFEST
    if not manifest.exists():
        return None
    return manifest.parent / json.loads(manifest.read_text())["artifact"]


def load_current(data_dir: str | Path) -> Embeddings | None:
    path = current_artifact(data_dir)
    return Embeddings.load(path) if path is not None else None


def _check_features(field: str, features: object) -> None:
    if not isinstance(features, Mapping):
        raise InvalidRequest(field, f"must be a mapping of feature name to value, got {type(features).__name__}")


def _changed_rows(rows: np.ndarray, size: int, vec: np.ndarray, rank: np.ndarray,
                  vectors: np.ndarray, biases: np.ndarray) -> np.ndarray:
    """The distinct rows among ``rows`` that are new, were deleted, or get another vector or bias.

    Equal within float32 rounding (``rtol`` 1e-5) counts as the same: LightFM's item representations
    in an artifact and the ones recomputed from the catalog's features at a sync differ by that
    much, and the ANN index only proposes candidates that are then scored from the view.
    """
    old = rows < size
    same = np.zeros(len(rows), dtype=bool)
    r = rows[old]
    same[old] = (np.isclose(rank[r], biases[old], rtol=1e-5, atol=1e-6)
                 & np.isclose(vec[r], vectors[old], rtol=1e-5, atol=1e-6).all(axis=1))
    return np.unique(rows[~same])


def _grow(array: np.ndarray, used: int, capacity: int) -> np.ndarray:
    grown = np.zeros((capacity, *array.shape[1:]), dtype=array.dtype)
    grown[:used] = array[:used]
    return grown


def _stats_update(sum1: np.ndarray, sum2: np.ndarray, vectors: np.ndarray, biases: np.ndarray, sign: float) -> tuple[np.ndarray, np.ndarray]:
    sum1, sum2 = sum1.copy(), sum2.copy()
    for start in range(0, len(biases), 65536):
        y = np.hstack([vectors[start : start + 65536].astype(np.float64),
                       biases[start : start + 65536].astype(np.float64)[:, None]])
        sum1 += sign * y.sum(axis=0)
        sum2 += sign * (y.T @ y)
    return sum1, sum2
