"""Retrieval through the ANN index (faiss, real) against exact search on a seeded LightFM-like catalog."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from engine.ann import AnnIndex
from engine.embeddings import Embeddings, FeatureTable, Representation, write_artifact
from engine.types import Item
from server.bench_ann import catalog, user_vectors

ITEMS, K, THRESHOLD = 30_000, 32, 1_000


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    vectors, biases, leaves = catalog(ITEMS, K, seed=3)
    return vectors, biases, user_vectors(40, leaves, seed=4)


def _embeddings(data, ann_threshold: int | None) -> Embeddings:  # type: ignore[no-untyped-def]
    vectors, biases, users = data
    ids = [f"item-{i}" for i in range(ITEMS)]
    hot = 10 * users[0]  # a feature token whose items top user 0's list
    table = FeatureTable([f"id={i}" for i in ids] + ["segment=hot"], np.vstack([vectors, hot]).astype(np.float32),
                         np.append(biases, 0).astype(np.float32))
    return Embeddings(table, table, ids, biases, vectors, ann_threshold=ann_threshold)


@pytest.fixture(scope="module")
def exact(data) -> Embeddings:  # type: ignore[no-untyped-def]
    return _embeddings(data, ann_threshold=None)


@pytest.fixture
def ann(data) -> Embeddings:  # type: ignore[no-untyped-def]
    embeddings = _embeddings(data, ann_threshold=THRESHOLD)
    assert embeddings.ann_bytes > 0
    return embeddings


def _user(vector: np.ndarray) -> Representation:
    return Representation(0.25, vector)


def test_recall_at_100_against_exact_is_at_least_95_percent(data, exact, ann) -> None:  # type: ignore[no-untyped-def]
    recalls = [len({i for i, _ in ann.top_n(_user(u), 100)} & {i for i, _ in exact.top_n(_user(u), 100)}) / 100
               for u in data[2]]
    assert np.mean(recalls) >= 0.95


def test_results_are_sorted_and_scored_exactly(data, exact, ann) -> None:  # type: ignore[no-untyped-def]
    for u in data[2][:10]:
        top = ann.top_n(_user(u), 100)
        ids, scores = [i for i, _ in top], np.array([s for _, s in top])
        assert len(top) == 100 and len(set(ids)) == 100
        assert np.all(np.diff(scores) <= 0)
        np.testing.assert_allclose(scores, exact.scores(_user(u), ids), rtol=1e-6, atol=1e-6)


def test_deleted_items_never_come_back(data, ann) -> None:  # type: ignore[no-untyped-def]
    users = data[2][:10]
    deleted = {i for u in users for i, _ in ann.top_n(_user(u), 100)[::2]}
    assert set(ann.delete_items(deleted)) == deleted
    for u in users:
        top = ann.top_n(_user(u), 100)
        assert len(top) == 100 and not deleted & {i for i, _ in top}
    ann.upsert_items([Item(i, {}, active=False) for i in sorted(deleted)[:5]])
    assert not deleted & {i for u in users for i, _ in ann.top_n(_user(u), 100)}


def test_upserted_items_are_found_and_updated_ones_move(data, ann) -> None:  # type: ignore[no-untyped-def]
    user = _user(data[2][0])
    ann.upsert_items([Item("new-hot", {"segment": "hot"})])
    assert ann.top_n(user, 100)[0][0] == "new-hot"
    last = ann.top_n(user, 100)[-1][0]
    ann.upsert_items([Item(last, {"segment": "hot"})])  # an existing item gets the hot vector
    assert {i for i, _ in ann.top_n(user, 2)} == {"new-hot", last}
    ann.upsert_items([Item("new-hot", {"segment": "hot"}, active=False)])
    assert "new-hot" not in {i for i, _ in ann.top_n(user, 100)}
    ann.delete_items([last])
    ann.upsert_items([Item(last, {"segment": "hot"})])  # a deleted item can come back by an upsert
    assert ann.top_n(user, 1)[0][0] == last


def test_excluded_items_are_skipped_and_n_still_returned(data, exact, ann) -> None:  # type: ignore[no-untyped-def]
    user = _user(data[2][1])
    excluded = [i for i, _ in exact.top_n(user, 50)]
    top = ann.top_n(user, 100, exclude=excluded)
    assert len(top) == 100 and not set(excluded) & {i for i, _ in top}
    truth = {i for i, _ in exact.top_n(user, 100, exclude=excluded)}
    assert len(truth & {i for i, _ in top}) >= 90


def test_below_the_threshold_results_are_exactly_the_exact_ones(data, exact) -> None:  # type: ignore[no-untyped-def]
    below = _embeddings(data, ann_threshold=ITEMS)
    assert below.ann_bytes == 0
    for u in data[2][:5]:
        assert below.top_n(_user(u), 100, exclude=["item-1"]) == exact.top_n(_user(u), 100, exclude=["item-1"])


def test_the_index_is_built_with_a_loaded_artifact_and_a_same_catalog_sync_keeps_it(data, ann, tmp_path) -> None:  # type: ignore[no-untyped-def]
    loaded = Embeddings.load(write_artifact(tmp_path, ann), ann_threshold=THRESHOLD)
    assert loaded.ann_bytes > 0
    index = loaded._ann
    loaded.sync_catalog([Item(f"item-{i}", {}) for i in range(ITEMS - 10)])  # 10 items left the catalog
    assert loaded._ann is index  # rows with unchanged vectors are not rewritten: no rebuild
    assert len(loaded) == ITEMS - 10 and len(index) == ITEMS - 10
    assert "item-29999" not in {i for u in data[2][:5] for i, _ in loaded.top_n(_user(u), 100)}


def test_searches_during_catalog_writes_neither_fail_nor_return_what_was_deleted_before_them(data, ann) -> None:  # type: ignore[no-untyped-def]
    users, errors, stop = data[2][:8], [], threading.Event()

    def read() -> None:
        try:
            while not stop.is_set():
                for u in users:
                    assert len(ann.top_n(_user(u), 50, exclude=["item-3"])) == 50
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    readers = [threading.Thread(target=read) for _ in range(2)]
    for thread in readers:
        thread.start()
    deleted: set[str] = set()
    for batch in range(20):
        ids = [i for i, _ in ann.top_n(_user(users[batch % len(users)]), 5)]
        deleted.update(ann.delete_items(ids))
        ann.upsert_items([Item(f"new-{batch}", {"segment": "hot"})])
        assert not deleted & {i for i, _ in ann.top_n(_user(users[0]), 100)}
    stop.set()
    for thread in readers:
        thread.join()
    assert not errors


def test_ann_index_over_fetches_nothing_past_its_size_and_counts_bytes() -> None:
    rng = np.random.default_rng(0)
    index = AnnIndex(np.arange(500), rng.normal(size=(500, 4)).astype(np.float32), np.zeros(500, np.float32),
                     nlist=8, nprobe=8)
    assert len(index.search(np.ones(4, np.float32), 1000)) == 500  # every cell scanned: everything comes back
    assert index.remove(np.arange(100)) == 100 and len(index) == 400
    assert index.nbytes == 400 * (5 * 4 + 8) + index.nlist * 5 * 4
