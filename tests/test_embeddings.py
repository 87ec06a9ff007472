"""LightFM embeddings on a world with planted preferences: segment ``s`` likes category ``s``."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from engine.embeddings import Embeddings, Representation, current_artifact, load_current, write_artifact
from engine.errors import InvalidRequest
from engine.eventlog import EventLog
from engine.export import export_jsonl
from engine.logreader import LogReader
from engine.records import JoinedEvent, LoggedDecision, Reward, SlotChoice
from engine.rewards import RewardRules
from engine.types import Candidate, Item
from server.cli import main as cli
from training.embeddings import (
    EmbeddingConfig,
    Interaction,
    TrainingData,
    interactions_from_log,
    load_training_data,
    planted_world,
    read_interactions_csv,
    train_embeddings,
)

CONFIG = EmbeddingConfig(components=16, epochs=10, threads=1, seed=0)


@pytest.fixture(scope="module")
def world() -> TrainingData:
    return planted_world(n_users=300, n_items=120, n_categories=6, per_user=8, seed=0)


@pytest.fixture(scope="module")
def trained(world: TrainingData) -> tuple[Embeddings, dict[str, float], list[tuple[int, dict[str, float]]]]:
    calls: list[tuple[int, dict[str, float]]] = []
    result = train_embeddings(world, CONFIG, on_epoch=lambda epoch, m: calls.append((epoch, m)), progress=False)
    return result.embeddings, result.metrics, calls


@pytest.fixture
def embeddings(trained) -> Embeddings:  # type: ignore[no-untyped-def]
    """A private copy, so tests that upsert or delete items do not disturb each other."""
    original = trained[0]
    return Embeddings(original.users, original.items, *_index(original), metadata=original.metadata)


def _index(e: Embeddings) -> tuple[list[str], np.ndarray, np.ndarray]:
    arrays = e.arrays()
    return arrays["index_item_ids"].tolist(), arrays["index_biases"], arrays["index_vectors"]


def _category(world: TrainingData) -> dict[str, str]:
    return {item.item_id: str(item.features["category"]) for item in world.items}


def test_recall_at_10_beats_popularity_on_the_time_ordered_holdout(trained) -> None:  # type: ignore[no-untyped-def]
    _, metrics, calls = trained
    assert metrics["train_interactions"] == 1920 and metrics["test_interactions"] == 480
    assert metrics["recall_at_10"] > metrics["popularity_recall_at_10"] + 0.25
    assert metrics["precision_at_10"] > 2 * metrics["popularity_precision_at_10"]
    assert metrics["auc"] > 0.8 and 0.4 < metrics["popularity_auc"] < 0.65
    assert [epoch for epoch, _ in calls] == list(range(1, CONFIG.epochs + 1))
    assert "recall_at_10" in calls[-1][1] and "recall_at_10" not in calls[0][1]
    assert calls[-1][1]["recall_at_10"] == metrics["recall_at_10"]


def test_serving_representations_equal_lightfm_item_representations(embeddings: Embeddings, world) -> None:  # type: ignore[no-untyped-def]
    ids, biases, vectors = _index(embeddings)
    for item in world.items[:20]:
        bias, vector = embeddings.item_representation(item.item_id, item.features)
        row = ids.index(item.item_id)
        assert bias == pytest.approx(float(biases[row]), abs=1e-5)
        np.testing.assert_allclose(vector, vectors[row], atol=1e-5)
    known = embeddings.user_representation("user-3", {"segment": "seg-3"})
    stranger = embeddings.user_representation("someone-new", {"segment": "seg-3"})
    assert embeddings.is_known_user("user-3") and not embeddings.is_known_user("someone-new")
    assert not np.allclose(known.vector, stranger.vector)  # the identity feature takes part


def test_a_new_item_in_a_liked_category_ranks_above_unrelated_items_without_retraining(embeddings, world) -> None:  # type: ignore[no-untyped-def]
    category = _category(world)
    embeddings.upsert_items([Item("new-2", {"category": "cat-2", "brand": "brand-0"}),
                             Item("new-3", {"category": "cat-3", "brand": "brand-0"})])
    unrelated = [i for i, c in category.items() if c != "cat-2"]
    for u in range(2, 300, 6):  # every user of segment 2
        user = embeddings.user_representation(f"user-{u}", {"segment": "seg-2"})
        new2, new3, *others = embeddings.scores(user, ["new-2", "new-3", *unrelated])
        assert new2 > max(others) + 0.5
        assert new2 > new3 + 0.5
    user = embeddings.user_representation("user-2", {"segment": "seg-2"})
    top = [i for i, _ in embeddings.top_n(user, 25)]
    assert "new-2" in top and "new-3" not in top


def test_retrieval_honours_exclusions_and_deleted_items(embeddings: Embeddings, world) -> None:  # type: ignore[no-untyped-def]
    user = embeddings.user_representation("user-5", {"segment": "seg-5"})
    everything = embeddings.top_n(user, 1000)
    assert len(everything) == len(embeddings) == 120
    ranked = [i for i, _ in everything]
    scores = [s for _, s in everything]
    assert scores == sorted(scores, reverse=True)
    assert scores == pytest.approx(list(embeddings.scores(user, ranked)), abs=1e-4)

    excluded, deleted = set(ranked[:3]), ranked[3:5]
    assert embeddings.delete_items(deleted + ["never-there"]) == deleted
    assert embeddings.delete_items(deleted) == []
    top = embeddings.top_n(user, 10, exclude=excluded)
    assert [i for i, _ in top] == ranked[5:15]
    assert len(embeddings) == 118 and deleted[0] not in embeddings
    assert len(embeddings.top_n(user, 1000, exclude=excluded)) == 115

    catalog = {item.item_id: item for item in world.items}
    embeddings.upsert_items([catalog[deleted[0]]])
    assert [i for i, _ in embeddings.top_n(user, 2, exclude=excluded)] == [deleted[0], ranked[5]]
    embeddings.upsert_items([Item(ranked[5], {}, active=False)])
    assert ranked[5] not in [i for i, _ in embeddings.top_n(user, 10)]


def test_sync_catalog_makes_the_index_the_active_catalog(embeddings: Embeddings, world) -> None:  # type: ignore[no-untyped-def]
    catalog = [*world.items[:50], Item("item-50", world.items[50].features, active=False), Item("late", {"category": "cat-0"})]
    embeddings.sync_catalog(catalog)
    user = (0.0, embeddings.user_representation("user-0", {"segment": "seg-0"}).vector)
    live = {i for i, _ in embeddings.top_n(user, 1000)}
    assert live == {f"item-{i}" for i in range(50)} | {"late"} and len(embeddings) == 51


def test_an_unknown_user_gets_the_items_of_the_category_their_segment_likes(embeddings, world) -> None:  # type: ignore[no-untyped-def]
    category = _category(world)
    for segment in range(6):
        user = embeddings.user_representation("first-visit", {"segment": f"seg-{segment}", "region": "nowhere"})
        top = [category[i] for i, _ in embeddings.top_n(user, 10)]
        assert top.count(f"cat-{segment}") >= 9, top
    nobody = embeddings.user_representation("first-visit", {"region": "nowhere"})
    assert nobody.bias == 0 and not nobody.vector.any()
    ids, biases, _ = _index(embeddings)
    assert [i for i, _ in embeddings.top_n(nobody, 5)] == [ids[j] for j in np.argsort(-biases, kind="stable")[:5]]


def test_affinity_features_rank_liked_items_and_are_standardised_over_the_catalog(embeddings, world) -> None:  # type: ignore[no-untyped-def]
    category = _category(world)
    embeddings.delete_items(["item-7", "item-8"])
    embeddings.upsert_items([Item("new-1", {"category": "cat-1"})])
    user = embeddings.user_representation("user-1", {"segment": "seg-1"})
    live = [i for i, _ in embeddings.top_n(user, 1000)]
    features = embeddings.affinity_features(user, live)
    z = np.array([f["lightfm_affinity"] for f in features])
    assert abs(z.mean()) < 2e-3 and abs(z.std() - 1) < 2e-3
    assert features[0]["lightfm_rank"] == 1.0 and features[1]["lightfm_rank"] == 0.5
    liked = [f["lightfm_affinity"] for i, f in zip(live, features) if category.get(i, "cat-1") == "cat-1"]
    other = [f["lightfm_affinity"] for i, f in zip(live, features) if category.get(i, "cat-1") != "cat-1"]
    assert np.mean(liked) > np.mean(other) + 1.0
    assert np.mean([f["lightfm_cosine"] for f in features[:10]]) > 0.5
    offered = embeddings.affinity_features(user, ["unknown", live[-1], "fresh"], {"fresh": {"category": "cat-1"}})
    assert offered[0] == {}
    assert offered[1]["lightfm_rank"] == 0.5 and offered[2]["lightfm_rank"] == 1.0


def test_the_artifact_round_trips_through_the_data_directory(embeddings: Embeddings, tmp_path: Path) -> None:
    assert current_artifact(tmp_path) is None and load_current(tmp_path) is None
    embeddings.upsert_items([Item("new-4", {"category": "cat-4"})])
    embeddings.delete_items(["item-4"])
    path = write_artifact(tmp_path, embeddings)
    assert current_artifact(tmp_path) == path and path.parent == tmp_path / "embeddings"
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []
    manifest = json.loads((tmp_path / "embeddings" / "embeddings.json").read_text())
    assert manifest["artifact"] == path.name and manifest["metrics"]["recall_at_10"] > 0
    loaded = load_current(tmp_path)
    assert loaded is not None and len(loaded) == len(embeddings) == 120
    assert loaded.metadata["config"]["components"] == 16
    for user_id, features in (("user-4", {"segment": "seg-4"}), ("stranger", {"segment": "seg-0"})):
        a, b = embeddings.user_representation(user_id, features), loaded.user_representation(user_id, features)
        before, after = embeddings.top_n(a, 20), loaded.top_n(b, 20)
        assert [i for i, _ in before] == [i for i, _ in after]
        assert [s for _, s in before] == pytest.approx([s for _, s in after], abs=1e-5)
        ids = [i for i, _ in embeddings.top_n(a, 30)]
        for x, y in zip(embeddings.affinity_features(a, ids), loaded.affinity_features(b, ids), strict=True):
            assert x.keys() == y.keys() and list(x.values()) == pytest.approx(list(y.values()), abs=2e-4)
    assert "item-4" not in loaded and "new-4" in loaded
    time.sleep(0.002)
    for _ in range(4):
        write_artifact(tmp_path, loaded)
    assert len(list(path.parent.glob("embeddings-*.npz"))) == 3 and not path.exists()


def test_readers_see_a_consistent_index_while_items_are_upserted(embeddings: Embeddings) -> None:
    user = embeddings.user_representation("user-0", {"segment": "seg-0"})
    errors: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        try:
            while not stop.is_set():
                top = embeddings.top_n(user, 50)
                assert len(top) == 50 and all(np.isfinite(s) for _, s in top)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    reader = threading.Thread(target=read)
    reader.start()
    for batch in range(20):
        embeddings.upsert_items(Item(f"bulk-{batch}-{i}", {"category": f"cat-{i % 6}"}) for i in range(200))
    stop.set()
    reader.join()
    assert errors == [] and len(embeddings) == 120 + 4000


def _joined(data_dir: Path) -> list[JoinedEvent]:
    with LogReader.open(data_dir) as reader:
        return list(reader.joined())


def _log_with_rewards(data_dir: Path, world: TrainingData) -> None:
    """An event log of the planted world: one decision per interaction, rewarded click or purchase."""
    log = EventLog(data_dir / "events.db", RewardRules())
    try:
        log.catalog.upsert_items(world.items)
        now = time.time()
        for n, x in enumerate(world.interactions[:1200]):
            ts = now - 3600 + x.ts * 3000
            decision = LoggedDecision(f"e{n}", ts, x.user_id, world.user_features[x.user_id], {},
                                      (Candidate(x.item_id),), (SlotChoice(x.item_id, 1.0, (1.0,)),), "v0", False, ts + 600)
            log.append_decision(decision)
            label, value = ("purchase", 30.0) if n % 5 == 0 else ("click", 1.0)
            log.append_reward(Reward(f"e{n}", x.item_id, label, value, ts + 1))
    finally:
        log.close()


def test_train_embeddings_command_reads_the_log_and_a_csv_and_writes_the_artifact(world, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    _log_with_rewards(tmp_path, world)
    csv_path = tmp_path / "imported.csv"
    csv_path.write_text("user_id,item_id,weight,timestamp\nuser-0,item-0,2.5,1\noutsider,item-999,1,\n")
    code = cli(["train-embeddings", "--data-dir", str(tmp_path), "--interactions", str(csv_path), "--epochs", "5",
                "--components", "8", "--label-weight", "purchase=4", "--label-weight", "click=1", "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    assert "1202 interactions" in out and "popularity" in out
    loaded = load_current(tmp_path)
    assert loaded is not None and loaded.components == 8 and len(loaded) == 120  # the catalog's items, not item-999
    assert loaded.metadata["config"]["label_weights"] == [["purchase", 4.0], ["click", 1.0]]
    assert loaded.is_known_user("outsider") and "item-999" not in loaded

    from training.embeddings import EMBEDDINGS_EXPERIMENT
    from training.tracking import default_tracking_uri, tracking_client

    client = tracking_client(default_tracking_uri(tmp_path))
    (run,) = client.search_runs([client.get_experiment_by_name(EMBEDDINGS_EXPERIMENT).experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["components"] == "8" and run.data.params["loss"] == "warp"
    assert 0 < run.data.metrics["recall_at_10"] <= 1 and "popularity_recall_at_10" in run.data.metrics
    epochs = client.get_metric_history(run.info.run_id, "recall_at_10")
    assert max(m.step for m in epochs) == 5  # the last epoch's holdout evaluation, logged at its step
    assert [a.path for a in client.list_artifacts(run.info.run_id, "embeddings")]
    figure = {f.path: f.file_size for f in client.list_artifacts(run.info.run_id)}
    assert figure["training.png"] > 10_000
    assert Path(client.download_artifacts(run.info.run_id, "training.png", str(tmp_path))).read_bytes()[:4] == b"\x89PNG"
    inputs = {i.dataset.name: (json.loads(i.dataset.profile), i.dataset) for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"events.db", "imported.csv"}
    profile, dataset = inputs["events.db"]
    log_ts = [x.ts for x in interactions_from_log(_joined(tmp_path), CONFIG)[0]]
    assert profile["rows"] == 1200 and profile["undated"] == 0 and len(dataset.digest) == 16
    assert (profile["first_ts"], profile["last_ts"]) == (min(log_ts), max(log_ts))
    assert json.loads(dataset.source)["uri"] == str((tmp_path / "events.db").resolve())
    profile, _ = inputs["imported.csv"]
    assert (profile["rows"], profile["undated"], profile["first_ts"], profile["last_ts"]) == (2, 1, 1.0, 1.0)

    interactions, users = interactions_from_log(_joined(tmp_path), EmbeddingConfig(label_weights=(("purchase", 4.0),), default_weight=0.0))
    assert len(interactions) == 240 and {x.weight for x in interactions} == {4.0}
    assert users["user-0"] == {"segment": "seg-0"}


def test_interactions_from_log_weights_labels_and_skips_non_positive_rewards() -> None:
    def event(ts: float, user_features: dict[str, object], *rewards: tuple[str, str, float, float]) -> JoinedEvent:
        decision = LoggedDecision(f"e{ts}", ts, "u1", user_features, {}, (), (), "v0", False, ts + 600)  # type: ignore[arg-type]
        return JoinedEvent(decision, (), tuple(Reward(decision.event_id, *r) for r in rewards))

    events = [
        event(1.0, {"segment": "a", "tags": ("x", "y")},
              ("i1", "click", 1.0, 2.0), ("i1", "purchase", 20.0, 3.0), ("i2", "click", 0.0, 4.0), ("i3", "", 1.0, 5.0)),
        event(0.5, {"segment": "old"}),
    ]
    interactions, users = interactions_from_log(events, EmbeddingConfig(default_weight=0.5))
    assert interactions == [Interaction("u1", "i1", 1.0, 2.0), Interaction("u1", "i1", 5.0, 3.0), Interaction("u1", "i3", 0.5, 5.0)]
    assert users == {"u1": {"segment": "a", "tags": ("x", "y")}}


@pytest.mark.parametrize(
    ("config", "field"),
    [
        (EmbeddingConfig(loss="hinge"), "loss"),
        (EmbeddingConfig(components=0), "components"),
        (EmbeddingConfig(epochs=2.5), "epochs"),  # type: ignore[arg-type]
        (EmbeddingConfig(learning_rate=-0.1), "learning_rate"),
        (EmbeddingConfig(item_alpha=float("nan")), "item_alpha"),
        (EmbeddingConfig(test_fraction=1.0), "test_fraction"),
        (EmbeddingConfig(label_weights=(("click", -1.0),)), "label_weights"),
    ],
)
def test_bad_training_config_names_the_field(config: EmbeddingConfig, field: str, world) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidRequest, match=f"^{field}: "):
        train_embeddings(world, config, progress=False)


def test_bad_training_inputs_name_the_argument(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="^interactions: no positive interaction"):
        train_embeddings(TrainingData([]), CONFIG, progress=False)
    bad = tmp_path / "bad.csv"
    bad.write_text("user,item_id,weight\nu,i,1\n")
    with pytest.raises(InvalidRequest, match="^interactions_csv: .*missing column\\(s\\) user_id"):
        read_interactions_csv(bad)
    bad.write_text("user_id,item_id,weight\nu,i,1\nu,j,-2\n")
    with pytest.raises(InvalidRequest, match="^interactions_csv line 3 weight: must be a finite number > 0"):
        read_interactions_csv(bad)
    bad.write_text("user_id,item_id,weight,timestamp\nu,i,1,yesterday\n")
    with pytest.raises(InvalidRequest, match="^interactions_csv line 2: weight and timestamp must be numbers"):
        read_interactions_csv(bad)
    assert cli(["train-embeddings", "--data-dir", str(tmp_path), "--epochs", "0", "--no-progress"]) == 2


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda e, u: e.top_n(u, 0), "n"),
        (lambda e, u: e.top_n(u, "10"), "n"),
        (lambda e, u: e.top_n(u, True), "n"),
        (lambda e, u: e.top_n(u, 5, exclude="item-1"), "exclude"),
        (lambda e, u: e.top_n(Representation(0.0, np.zeros(3, np.float32)), 5), "user_repr"),
        (lambda e, u: e.top_n(Representation(float("nan"), u.vector), 5), "user_repr"),
        (lambda e, u: e.affinity_features((1.0,), ["item-1"]), "user_repr"),
        (lambda e, u: e.user_representation("u", "segment=a"), "user_features"),
        (lambda e, u: e.item_representation("i", None), "item_features"),
        (lambda e, u: e.upsert_items([("item-1", {})]), r"items\[0\]"),
        (lambda e, u: e.upsert_items([Item("item-1", [])]), r"items\[0\]\.features"),
        (lambda e, u: e.delete_items("item-1"), "item_ids"),
    ],
)
def test_bad_serving_inputs_name_the_argument(embeddings: Embeddings, call, field: str) -> None:  # type: ignore[no-untyped-def]
    user = embeddings.user_representation("user-0", {"segment": "seg-0"})
    with pytest.raises(InvalidRequest, match=f"^{field}: "):
        call(embeddings, user)


def test_training_data_from_a_jsonl_export_matches_the_log_and_parquet_is_refused(world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _log_with_rewards(tmp_path, world)
    with LogReader.open(tmp_path) as reader:
        export_jsonl(reader, tmp_path / "events.jsonl")
    config = EmbeddingConfig()
    from_log = load_training_data(tmp_path, config)
    from_jsonl = load_training_data(tmp_path, config, events=tmp_path / "events.jsonl")
    assert from_jsonl.interactions == from_log.interactions and from_jsonl.user_features == from_log.user_features
    with pytest.raises(InvalidRequest, match="^events: .*Parquet export has no reward labels"):
        load_training_data(tmp_path, config, events=tmp_path / "events.parquet")
